"""Read Breakout's paddle and ball positions off a 64x64 frame (by colour).

Paddle and ball are both red (200, 72, 72); the paddle lives in the bottom rows, the ball above
them and below the bricks. Positions are in 64x64 pixel units (column, row of the centre).
Frames from the recorder: crop rows 32-196, columns 8-152 of the 210x160 screen.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CROP = (32, 196, 8, 152)
PADDLE_ROWS = slice(60, 64)


def _red(fr: np.ndarray) -> np.ndarray:
    r, g, b = fr[..., 0], fr[..., 1], fr[..., 2]
    return np.clip((r - np.maximum(g, b) - 40) / 88.0, 0, 1)  # 1 for pure (200, 72, 72), 0 for other colours


def read_state(frames: np.ndarray) -> np.ndarray:
    """frames (T, 64, 64, 3) uint8 -> (T, 3) float32: paddle x, ball x, ball y (NaN if not visible)."""
    f = frames.astype(np.float32)
    out = np.full((len(f), 3), np.nan, np.float32)
    cols = np.arange(64) + 0.5
    rows = np.arange(64) + 0.5
    for i, fr in enumerate(f):
        red = _red(fr)
        pad = red[PADDLE_ROWS]
        if pad.sum() > 0.5:
            out[i, 0] = (pad.sum(0) * cols).sum() / pad.sum()
        ball = red[26:60]  # below the bricks, above the paddle
        if ball.sum() > 0.15:
            out[i, 1] = (ball.sum(0) * cols).sum() / ball.sum()
            out[i, 2] = (ball.sum(1) * rows[26:60]).sum() / ball.sum()
    return out


def true_state(env: Any) -> np.ndarray:
    """The same quantities from the full-resolution screen, mapped into 64x64 pixel units."""
    f = env.render().astype(np.float32)
    t, b, left, r = CROP
    sy, sx = 64 / (b - t), 64 / (r - left)
    red = (np.abs(f - np.array([200, 72, 72])).sum(-1) < 1).astype(np.float32)
    red[:, :left] = 0  # the walls' red feet are outside the crop
    red[:, r:] = 0
    out = np.full(3, np.nan, np.float32)
    pad = red[189:194]
    if pad.sum():
        out[0] = ((pad.sum(0) * (np.arange(160) + 0.5)).sum() / pad.sum() - left) * sx
    ball = red[t + int(26 / sy) : 189]
    if ball.sum():
        ys = np.arange(t + int(26 / sy), 189) + 0.5
        out[1] = ((ball.sum(0) * (np.arange(160) + 0.5)).sum() / ball.sum() - left) * sx
        out[2] = ((ball.sum(1) * ys).sum() / ball.sum() - t) * sy
    return out
