"""Numbers from rollouts: per-horizon summaries, horizon buckets, control-probe summaries and the
divergence target (numpy only)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worldsim.eval.episodes import Reference
from worldsim.eval.metrics import correlation, end_precision_recall, frechet_distance, psnr, sign_agreement, ssim
from worldsim.eval.results import ModelScores
from worldsim.eval.rollout import Generated

Features = Callable[[np.ndarray], np.ndarray]


def buckets_for(horizons: Sequence[int], horizon: int) -> list[tuple[int, int]]:
    """Horizon buckets between consecutive requested horizons, clipped to the rollout:
    (1, 10), (11, 50), (51, 200) for horizons 1, 10, 50, 200 (plus the rest up to ``horizon``)."""
    edges = sorted({h for h in horizons if 1 < h <= horizon})
    if not edges or edges[-1] < horizon:
        edges.append(horizon)
    out, prev = [], 0
    for e in edges:
        out.append((prev + 1, e))
        prev = e
    return out


def _nanmean(x: np.ndarray, axis: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def _masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, values, np.nan)


def summarize(
    ref: Reference,
    gen: Generated,
    real_state: np.ndarray | None,
    gen_state: np.ndarray | None,
    state_names: Sequence[str],
    features: Features | None,
    horizons: Sequence[int],
    buckets: Sequence[tuple[int, int]],
    tol: int = 2,
) -> ModelScores:
    """Every per-frame number of one model's rollouts, averaged over episodes per horizon, at
    the requested horizons and per bucket; FD per bucket; episode ends; reward error."""
    E, H = ref.valid.shape
    v = ref.valid
    per_frame: dict[str, np.ndarray] = {  # (E, H), NaN where not scored
        "psnr": _masked(psnr(gen.frames, ref.frames), v),
        "ssim": _masked(ssim(gen.frames, ref.frames), v),
    }
    if real_state is not None and gen_state is not None:
        for c, name in enumerate(state_names):
            err = np.abs(gen_state[..., c] - real_state[..., c])  # NaN where either side is unreadable
            per_frame[f"{name}_err"] = _masked(err, v)
            real_ok = v & np.isfinite(real_state[..., c])
            per_frame[f"{name}_unreadable"] = _masked((~np.isfinite(gen_state[..., c])).astype(float), real_ok)
    curves = {k: _nanmean(x, 0) for k, x in per_frame.items()}
    out = ModelScores(curves, {}, {})
    for h in horizons:
        if h <= H:
            out.at[str(h)] = {k: float(c[h - 1]) for k, c in curves.items()}
    for a, b in buckets:
        key = f"{a}-{b}"
        out.buckets[key] = {k: float(_nanmean(x[:, a - 1 : b])) for k, x in per_frame.items()}
        out.buckets[key]["frames"] = int(v[:, a - 1 : b].sum())
        if features is not None:
            m = v[:, a - 1 : b]
            if m.sum() >= 4:
                g = features(gen.frames[:, a - 1 : b][m])
                r = features(ref.frames[:, a - 1 : b][m])
                out.fd_codec_latents[key] = frechet_distance(g, r)
    out.episode_end = end_precision_recall(gen.terminated, ref.terminated, ref.window & gen.stepped, tol)
    out.reward_mae = float(np.abs(gen.rewards - ref.rewards)[v].mean()) if v.any() else math.nan
    out.rollout_seconds = gen.seconds
    out.frames_per_second = float(gen.stepped.sum() / gen.seconds) if gen.seconds > 0 else math.nan
    return out


def control_summary(model_d: np.ndarray, real_d: np.ndarray, state_names: Sequence[str]) -> dict[str, Any]:
    """Model vs real state changes (P, A, S) for the same probes and actions, per component:
    sign agreement and correlation of the raw changes, and of the *action effects* (each
    action's change minus the mean change over actions from that state, which removes the
    motion the state had anyway), plus the mean absolute error of the changes."""
    out: dict[str, Any] = {"probes": int(model_d.shape[0]), "actions": int(model_d.shape[1])}
    both = np.isfinite(model_d) & np.isfinite(real_d)
    for c, name in enumerate(state_names):
        m, r, ok = model_d[..., c], real_d[..., c], both[..., c]
        mm, rr = np.where(ok, m, np.nan), np.where(ok, r, np.nan)
        em = mm - _nanmean(mm, 1)[:, None]
        er = rr - _nanmean(rr, 1)[:, None]
        out[name] = {
            "pairs": int(ok.sum()),
            "sign_agreement": sign_agreement(mm[ok], rr[ok]),
            "correlation": correlation(mm[ok], rr[ok]),
            "mae": float(np.abs(mm - rr)[ok].mean()) if ok.any() else math.nan,
            "effect_sign_agreement": sign_agreement(em[ok], er[ok]),
            "effect_correlation": correlation(em[ok], er[ok]),
        }
    return out


def target_check(curve: np.ndarray, divergence: np.ndarray, n: np.ndarray) -> dict[str, Any]:
    """Model error curve vs twice the real game's own divergence (both read off pixels)."""
    ok = np.isfinite(curve) & np.isfinite(divergence) & (n > 0)
    below = curve <= 2 * divergence
    first_above = np.flatnonzero(ok & ~below)
    return {
        "frames_compared": int(ok.sum()),
        "share_within_2x": float(below[ok].mean()) if ok.any() else math.nan,
        "first_frame_above_2x": int(first_above[0] + 1) if len(first_above) else None,
    }
