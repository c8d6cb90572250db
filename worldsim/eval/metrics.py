"""Metrics on known definitions.

- PSNR on uint8 RGB frames (peak 255), capped at 100 dB for identical frames.
- SSIM on the luma channel (Y = 0.299 R + 0.587 G + 0.114 B), Gaussian window 11, sigma 1.5,
  K1 = 0.01, K2 = 0.03 (Wang et al. 2004), valid-region mean.
- Frechet distance between two feature sets (Gaussian fit), as FID computes it; here on
  features of *our own codec's encoder*, so it is "FD on codec latents", not FID.
"""

from __future__ import annotations

import numpy as np

PSNR_CAP = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 pairs -> PSNR per frame (dB), shape (...)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10 * np.log10(255.0**2 / mse)
    return np.minimum(out, PSNR_CAP)


def _luma(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _gauss_filter(x: np.ndarray, size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Separable Gaussian filter over the last two axes, 'valid' region."""
    r = np.arange(size) - size // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    g /= g.sum()
    h = np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), -1, x)
    return np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), -2, h)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 pairs -> SSIM per frame on luma, shape (...)."""
    x, y = _luma(a), _luma(b)
    lead = x.shape[:-2]
    x, y = x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gauss_filter(x), _gauss_filter(y)
    sxx = _gauss_filter(x * x) - mx**2
    syy = _gauss_filter(y * y) - my**2
    sxy = _gauss_filter(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(axis=(-2, -1)).reshape(lead)


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between feature sets (N, D)."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    s1, s2 = np.atleast_2d(s1), np.atleast_2d(s2)
    # sqrt(S1 S2) via the symmetric form sqrt(sqrt(S1) S2 sqrt(S1)): same trace, numerically safe.
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


def sign_agreement(pred: np.ndarray, real: np.ndarray, eps: float = 1e-6) -> float:
    """Share of samples where predicted and real changes have the same sign (ignoring ~0 real changes)."""
    m = np.abs(real) > eps
    return float((np.sign(pred[m]) == np.sign(real[m])).mean()) if m.any() else float("nan")


def correlation(pred: np.ndarray, real: np.ndarray) -> float:
    ok = np.isfinite(pred) & np.isfinite(real)
    if ok.sum() < 3 or np.std(pred[ok]) == 0 or np.std(real[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(pred[ok], real[ok])[0, 1])


def end_precision_recall(
    pred_term: np.ndarray, real_end: np.ndarray, valid: np.ndarray, tol: int = 2
) -> tuple[float, float]:
    """Predicted episode ends vs real ones, per rollout row; a prediction within ``tol`` frames of
    a real end is a hit. pred_term / real_end / valid: (E, H) bool."""
    tp = fp = fn = 0
    for p, r, v in zip(pred_term, real_end, valid):
        pi, ri = np.flatnonzero(p & v), np.flatnonzero(r & v)
        hit_r = {j for j in ri if np.any(np.abs(pi - j) <= tol)}
        tp += len(hit_r)
        fn += len(ri) - len(hit_r)
        fp += int(sum(1 for i in pi if not np.any(np.abs(ri - i) <= tol)))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return precision, recall
