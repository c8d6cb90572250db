"""Read Boxing's state off 64x64 frames (by colour), to score generated frames.

The player's boxer is white (214, 214, 214), the CPU's black, the ring floor green
(110, 156, 66) and the ropes orange (195, 144, 61). Whiteness is read from the blue channel
(the floor and the ropes have almost none) and blackness from the green channel, so the ropes
barely count. A boxer's row is the mean row of its pixels; its column the median column, which a
punching arm hardly moves. Positions are returned in the game's own coordinates (the RAM's,
see :func:`true_state`): 64x64 pixels map back through the crop to screen pixels, minus the
offset between a sprite's centre and its RAM position (measured once on recorded play).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CROP = (24, 188, 24, 136)  # top, bottom, left, right of the 210x160 screen: the ring with its ropes
SY = (CROP[1] - CROP[0]) / 64  # screen rows per 64x64 row
SX = (CROP[3] - CROP[2]) / 64  # screen columns per 64x64 column
STATE_NAMES = ("player_x", "player_y", "enemy_x", "enemy_y")
RAM = (32, 34, 33, 35)  # the same four, in the console's RAM (Anand et al. 2019, AtariARI)
# Screen position of a sprite's (median column, mean row) minus its RAM position.
OFFSET_X = {"player": 11.8, "enemy": 10.2}
OFFSET_Y = {"player": 61.5, "enemy": 60.5}
MIN_MASS = 4.0  # pixels' worth of a boxer below which it counts as not visible


def _median_position(profile: np.ndarray) -> float:
    """Where the cumulative mass of a 1-D profile crosses half (in pixel-edge units, 0..len)."""
    c = np.cumsum(profile)
    half = c[-1] / 2
    i = int(np.searchsorted(c, half))
    before = c[i - 1] if i > 0 else 0.0
    return i + float((half - before) / max(profile[i], 1e-9))


def boxer_masks(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64, 64) coverage in [0, 1] of the player's (white) and the CPU's (black) boxer."""
    f = frame.astype(np.float32)
    white = np.clip((f[..., 2] - 66.0) / 148.0, 0, 1)
    black = np.clip((156.0 - f[..., 1]) / 156.0, 0, 1)
    black[black < 0.15] = 0  # the ropes' slight darkening
    return white, black


def read_state(frames: np.ndarray) -> np.ndarray:
    """frames (T, 64, 64, 3) uint8 -> (T, 4) float32: player x, y, enemy x, y (NaN if not visible)."""
    out = np.full((len(frames), 4), np.nan, np.float32)
    rows = np.arange(64) + 0.5
    for t, frame in enumerate(frames):
        for k, (who, mask) in enumerate(zip(("player", "enemy"), boxer_masks(frame))):
            mass = mask.sum()
            if mass < MIN_MASS:
                continue
            col = _median_position(mask.sum(0))
            row = float((mask.sum(1) * rows).sum() / mass)
            out[t, 2 * k] = col * SX + CROP[2] - OFFSET_X[who]
            out[t, 2 * k + 1] = row * SY + CROP[0] - OFFSET_Y[who]
    return out


def true_state(env: Any) -> np.ndarray:
    """(4,) float32 from the console's RAM: player x, y, enemy x, y."""
    ram = env.unwrapped.ale.getRAM()
    return ram[list(RAM)].astype(np.float32)
