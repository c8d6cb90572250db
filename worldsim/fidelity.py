"""Frame fidelity with one stated definition, shared by training and evaluation.

**PSNR** on uint8 RGB frames: MSE over all pixels *and* the three channels, peak 255,
``10 log10(255^2 / MSE)`` per frame. Identical frames give ``+inf``, capped at :data:`PSNR_CAP`
= 100 dB so that means over episodes stay finite.
"""

from __future__ import annotations

import numpy as np

PSNR_CAP = 100.0
"""PSNR reported for identical frames (dB)."""


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> np.ndarray:
    """(..., H, W, 3) uint8 pairs -> PSNR per frame in dB, shape (...); ``cap`` for identical frames."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(-3, -2, -1))
    with np.errstate(divide="ignore"):
        out = 10.0 * np.log10(255.0**2 / mse)
    return np.minimum(out, cap)
