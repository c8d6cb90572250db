"""Read CartPole's state off a 64x64 frame (by colour), to score generated frames.

The cart is black, the pole brown (202, 152, 101). Column c of the 64-wide frame covers source
x in [c * 600/64, (c+1) * 600/64); the env maps cart x to source pixels as 300 + 125 x. Rows
cover 2.5 source pixels each. The pole angle is the slope of a line fitted through the pole's
pixels in source units (angle from vertical, positive leaning right, as the env's theta).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SX, SY = 600 / 64, 160 / 64  # source pixels per output pixel (x, y)
SCALE = 600 / 4.8  # source pixels per env unit


POLE = np.array([202, 152, 101], np.float32)
_D = 255.0 - POLE  # how much the pole darkens white, per channel


def read_state(frames: np.ndarray) -> np.ndarray:
    """frames (T, 64, 64, 3) uint8 -> (T, 2) float32: cart x (env units), pole angle (radians).

    NaN where a component cannot be read (no cart / no pole visible).
    """
    f = frames.astype(np.float32)
    out = np.full((len(f), 2), np.nan, np.float32)
    cols = (np.arange(64) + 0.5) * SX
    rows = (np.arange(64) + 0.5) * SY
    for i, fr in enumerate(f):
        # Cart: dark pixels in the cart's rows, minus each row's median (removes the track line).
        dark = 1.0 - fr[48:64].mean(-1) / 255.0
        dark = np.clip(dark - np.median(dark, axis=1, keepdims=True), 0, None)
        dark[dark < 0.25] = 0
        if dark.sum() > 1.0:
            out[i, 0] = ((dark.sum(0) * cols).sum() / dark.sum() - 300) / SCALE
        # Pole: coverage of brown-over-white per pixel (sub-pixel position from blending), rows above the cart.
        band = 255.0 - fr[:46]
        alpha = np.clip((band @ _D) / float(_D @ _D), 0, 1)
        alpha[(fr[:46, :, 0] - fr[:46, :, 2]) < 15] = 0  # brownish only (not the grey/black/blue parts)
        # Generated frames carry faint tinted specks (codec artefacts, often on the 8-pixel latent
        # grid); the pole is one bright 1-2 pixel run per row. Keep, per row, only the run around
        # the strongest pixel, then fit the line robustly (drop rows far from a first fit).
        alpha[alpha < 0.1] = 0
        peak = alpha.argmax(1)  # (46,)
        near = np.abs(np.arange(64)[None, :] - peak[:, None]) <= 2
        alpha = alpha * near
        w_row = alpha.sum(1)
        ok = w_row > 0.3
        if ok.sum() >= 5:
            xc = (alpha[ok] * cols).sum(1) / w_row[ok]
            y = rows[:46][ok]
            fit = np.polyfit(y, xc, 1)  # source x per source y (y grows downwards)
            keep = np.abs(np.polyval(fit, y) - xc) <= 1.5 * SX
            if keep.sum() >= 5 and not keep.all():
                fit = np.polyfit(y[keep], xc[keep], 1)
            out[i, 1] = np.arctan(-fit[0])
    return out


def true_state(env: Any) -> np.ndarray:
    s = env.unwrapped.state
    return np.array([s[0], s[2]], np.float32)


X_LIMIT, ANGLE_LIMIT = 2.4, 12 * 2 * np.pi / 360  # CartPole-v1's termination bounds (0.2095 rad)


def state_done(states: np.ndarray) -> np.ndarray:
    """states (T, 2) (cart x, pole angle) -> (T,) bool: the real game would have ended there
    (|x| > 2.4 or |angle| > 0.2095 rad). Unreadable (NaN) components never end an episode."""
    s = np.asarray(states, np.float64)
    with np.errstate(invalid="ignore"):
        return (np.abs(s[:, 0]) > X_LIMIT) | (np.abs(s[:, 1]) > ANGLE_LIMIT)


FRAME_SECONDS = 0.04  # 2 env steps of 0.02 s per frame


def _push(states: np.ndarray) -> np.ndarray:
    """(B, 2, 2) read states (previous, now) -> (B,) PD control signal (> 0: push right)."""
    s = np.nan_to_num(np.asarray(states, np.float64))
    (x0, a0), (x1, a1) = s[:, 0].T, s[:, 1].T
    return 10.0 * a1 + 2.0 * (a1 - a0) / FRAME_SECONDS + 0.3 * x1 + 0.6 * (x1 - x0) / FRAME_SECONDS


def balance(states: np.ndarray) -> np.ndarray:
    """Closed-loop controller: a PD controller on the read pole angle and cart x (velocities from
    the last two frames); balances the real pole for 250+ frames from reset states."""
    return (_push(states) > 0).astype(np.int64)


def wrong_way(states: np.ndarray) -> np.ndarray:
    """``balance`` pushing the other way: the real pole falls within a few frames."""
    return (_push(states) <= 0).astype(np.int64)
