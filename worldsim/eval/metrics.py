"""Metrics with fixed, stated definitions (numpy only; scipy used when installed).

- **PSNR** on uint8 RGB frames: MSE over all pixels *and* the three channels, peak 255,
  ``10 log10(255^2 / MSE)`` per frame. Identical frames give ``+inf``, capped at
  :data:`PSNR_CAP` = 100 dB so that means over episodes stay finite.
- **SSIM** (Wang et al. 2004): Gaussian window 11 x 11, sigma 1.5, K1 = 0.01, K2 = 0.03,
  L = 255, mean over the *valid* region (no padding: 54 x 54 positions on a 64 x 64 frame).
  Computed on **luma** ``Y = 0.299 R + 0.587 G + 0.114 B`` by default (``channels="luma"``);
  ``channels="rgb"`` computes it per channel and averages the three.
- **Fréchet distance** between two feature sets, each fitted by a Gaussian:
  ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)``, as FID computes it. The trace of the matrix
  square root uses ``scipy.linalg.sqrtm`` when scipy is installed (with the usual eps offset
  when the product is near-singular) and otherwise an eigen-decomposition of the symmetric
  ``S1^1/2 S2 S1^1/2`` (same eigenvalues as ``S1 S2``; exact and always real).
  worldsim feeds it features of a checkpoint's *own codec encoder*, so it is "FD on our
  codec's latents", not FID (no Inception network is involved).
- **Control**: sign agreement and Pearson correlation of state changes.
- **Episode ends**: precision / recall of predicted terminal frames against real ends, with a
  tolerance in frames.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from worldsim.fidelity import PSNR_CAP, psnr  # noqa: F401  (re-exported: eval metrics in one namespace)

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
LUMA = np.array([0.299, 0.587, 0.114])


# ---------------------------------------------------------------------------- fidelity
@functools.lru_cache(maxsize=8)
def _gauss_matrix(n: int, size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """(n - size + 1, n) matrix M with (M x)[i] = sum_k g[k] x[i + k]: a 'valid' 1-D Gaussian filter."""
    r = np.arange(size) - size // 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    g /= g.sum()
    m = np.zeros((n - size + 1, n))
    for i in range(n - size + 1):
        m[i, i : i + size] = g
    return m


def _filter(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter over the last two axes of (N, H, W), valid region."""
    mh, mw = _gauss_matrix(x.shape[-2]), _gauss_matrix(x.shape[-1])
    return np.einsum("ih,nhw,jw->nij", mh, x, mw, optimize=True)


def _ssim_planes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, H, W) float planes in [0, 255] -> (N,) mean SSIM."""
    c1, c2 = (SSIM_K1 * 255) ** 2, (SSIM_K2 * 255) ** 2
    mx, my = _filter(x), _filter(y)
    sxx = _filter(x * x) - mx**2
    syy = _filter(y * y) - my**2
    sxy = _filter(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(axis=(-2, -1))


def ssim(a: np.ndarray, b: np.ndarray, channels: str = "luma", chunk: int = 512) -> np.ndarray:
    """(..., H, W, 3) uint8 pairs -> SSIM per frame, shape (...). ``channels``: "luma" or "rgb"."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if channels not in ("luma", "rgb"):
        raise ValueError(f"channels must be 'luma' or 'rgb', got {channels!r}")
    lead, (h, w) = a.shape[:-3], a.shape[-3:-1]
    a2, b2 = a.reshape(-1, h, w, 3), b.reshape(-1, h, w, 3)
    out = np.empty(len(a2))
    for i in range(0, len(a2), chunk):
        x, y = a2[i : i + chunk].astype(np.float64), b2[i : i + chunk].astype(np.float64)
        if channels == "luma":
            out[i : i + chunk] = _ssim_planes(x @ LUMA, y @ LUMA)
        else:
            n = len(x)
            xs = np.moveaxis(x, -1, 1).reshape(n * 3, h, w)
            ys = np.moveaxis(y, -1, 1).reshape(n * 3, h, w)
            out[i : i + chunk] = _ssim_planes(xs, ys).reshape(n, 3).mean(1)
    return out.reshape(lead)


# ---------------------------------------------------------------------------- distributions
def _trace_sqrt_product_eig(s1: np.ndarray, s2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) via the symmetric S1^1/2 S2 S1^1/2 (PSD: real, non-negative eigenvalues)."""
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = r1 @ s2 @ r1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def _trace_sqrt_product_scipy(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # near-singular product: offset the diagonals (as pytorch-fid does)
            off = np.eye(len(s1)) * eps
            covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3 * max(1.0, np.abs(covmean).max())):
            return _trace_sqrt_product_eig(s1, s2)  # scipy went astray: the eigen route is exact
        covmean = covmean.real
    return float(np.trace(covmean))


def _have_scipy() -> bool:
    try:
        import scipy.linalg  # noqa: F401
    except ImportError:
        return False
    return True


def frechet_distance(f1: np.ndarray, f2: np.ndarray, method: str = "auto") -> float:
    """Fréchet distance between feature sets (N1, D) and (N2, D), each fitted by a Gaussian.

    ``method``: "scipy" (``scipy.linalg.sqrtm``), "eig" (eigen-decomposition) or "auto"
    (scipy when installed). Clamped at 0 (rounding can make it a hair negative).
    """
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"expected (N, D) feature sets with the same D, got {f1.shape} and {f2.shape}")
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("need at least 2 samples per set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1 = np.atleast_2d(np.cov(f1, rowvar=False))
    s2 = np.atleast_2d(np.cov(f2, rowvar=False))
    if method == "auto":
        method = "scipy" if _have_scipy() else "eig"
    if method == "scipy":
        tr = _trace_sqrt_product_scipy(s1, s2)
    elif method == "eig":
        tr = _trace_sqrt_product_eig(s1, s2)
    else:
        raise ValueError(f"method must be auto, scipy or eig, got {method!r}")
    fd = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)
    return max(fd, 0.0)


# ---------------------------------------------------------------------------- control
def sign_agreement(pred: np.ndarray, real: np.ndarray, eps: float = 1e-6) -> float:
    """Share of samples whose predicted and real changes have the same sign.

    Samples whose real change is ~0 (``|real| <= eps``) or non-finite are left out; NaN if none remain.
    """
    pred, real = np.asarray(pred, float), np.asarray(real, float)
    m = (np.abs(real) > eps) & np.isfinite(pred) & np.isfinite(real)
    return float((np.sign(pred[m]) == np.sign(real[m])).mean()) if m.any() else float("nan")


def correlation(pred: np.ndarray, real: np.ndarray) -> float:
    """Pearson correlation over finite pairs; NaN with < 3 pairs or a constant side."""
    pred, real = np.asarray(pred, float), np.asarray(real, float)
    ok = np.isfinite(pred) & np.isfinite(real)
    if ok.sum() < 3 or np.std(pred[ok]) == 0 or np.std(real[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(pred[ok], real[ok])[0, 1])


# ---------------------------------------------------------------------------- episode ends
def end_precision_recall(
    pred_term: np.ndarray, real_end: np.ndarray, window: np.ndarray, tol: int = 2
) -> dict[str, float]:
    """Predicted episode ends against real ones, per rollout row.

    pred_term, real_end, window: (E, H) bool. ``window`` marks the frames where predictions are
    scored (the real episode's frames, plus ``tol`` frames after a real end). A run of
    consecutive predicted terminal frames is ONE predicted end, placed at the run's first frame
    (where a Gymnasium env on the model would end the episode); it is correct if that frame is
    within ``tol`` frames of a real end, so "always terminal" scores no hits. A real end is
    recalled if a predicted end lies within ``tol`` frames of it. NaN where a ratio has no
    denominator.
    """
    tp_pred = n_pred = hit = n_real = 0
    for p, r, w in zip(np.asarray(pred_term, bool), np.asarray(real_end, bool), np.asarray(window, bool)):
        pi, ri = np.flatnonzero(p & w), np.flatnonzero(r & w)
        starts = pi[np.concatenate([[True], np.diff(pi) > 1])] if len(pi) else pi
        n_pred += len(starts)
        n_real += len(ri)
        if len(starts) and len(ri):
            close = np.abs(starts[:, None] - ri[None]) <= tol  # (predicted, real)
            tp_pred += int(close.any(1).sum())
            hit += int(close.any(0).sum())
    return {
        "precision": tp_pred / n_pred if n_pred else float("nan"),
        "recall": hit / n_real if n_real else float("nan"),
        "predicted_ends": n_pred,
        "real_ends": n_real,
        "tolerance": tol,
    }
