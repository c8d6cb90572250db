"""A controller plays a world session: read the state off each frame, act on it, step.

One loop for everything that lets a controller (read states in, actions out; e.g. CartPole's
``balance``) drive a world: the closed-loop control benchmark (``worldsim.eval.closed_loop``) and
the heads stage's closed-loop dreams (``worldsim.train.dreams``). The session is already reset on
its context; the controller sees, per row, the state read off the frame before and the one it is
acting on, exactly as it would in the real game.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from worldsim.engine.session import Session

Reader = Callable[[np.ndarray], np.ndarray]
"""(B, H, W, 3) uint8 frames -> (B, K) read states (NaN where unreadable)."""
Controller = Callable[[np.ndarray], np.ndarray]
"""(B, 2, K) read states (previous frame, this frame) -> (B,) canonical actions."""


@dataclass
class ControlledPlay:
    """What the session produced (T frames: all of them, or fewer when every row crossed ``done``)."""

    frames: np.ndarray  # (B, T, H, W, 3) uint8
    terminated: np.ndarray  # (B, T) bool: the world's end rule on its termination head
    actions: np.ndarray  # (B, T, ...) the controller's actions
    done: np.ndarray  # (B, T) bool: the row's first crossing of ``done`` (all False without it)


@torch.inference_mode()
def play_controlled(
    sess: Session,
    before: np.ndarray,
    frame: np.ndarray,
    controller: Controller,
    reader: Reader,
    frames: int,
    done: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ControlledPlay:
    """Step a reset ``sess`` (B rows) ``frames`` times with ``controller``'s actions.

    ``before`` and ``frame`` (B, H, W, 3): the last two context frames (the same one twice when the
    context is one frame). With ``done`` ((B, K) states -> (B,) bool, the game's bounds), a row
    stops at its first crossing (later frames repeat its last one, with its last action and no
    head end) and the loop stops once every row has: only the rows still going are stepped (each
    row keeps its own noise stream; see ``Session.step``'s ``rows``). A smaller batch rounds the
    matmuls differently, so a row may then drift from the play it has without ``done`` (on the
    shipped CartPole, 64 ``balance`` dreams of 200 frames: 58 bit-identical, the same length
    quartiles and ends, half the time; ``docs/eval-control/cartpole-45-closed-loop-head/rowdrop.txt``).
    """
    B = len(frame)
    prev = np.asarray(reader(before), np.float64)
    now = np.asarray(reader(frame), np.float64)
    gen: list[np.ndarray] = []
    term: list[np.ndarray] = []
    acts: list[np.ndarray] = []
    crossed: list[np.ndarray] = []
    going = np.ones(B, bool)
    for _ in range(frames):
        act = np.array(controller(np.stack([prev, now], axis=1)))
        if acts:
            act[~going] = acts[-1][~going]
        rows = np.flatnonzero(going)
        res = sess.step(act[rows], rows=None if going.all() else rows.tolist())
        out, ends = (gen[-1] if gen else frame).copy(), np.zeros(B, bool)
        out[rows], ends[rows] = res.frames, res.terminated
        gen.append(out)
        term.append(ends)
        acts.append(act)
        prev, now = now, np.asarray(reader(out), np.float64)
        crossed.append(np.asarray(done(now), bool) & going if done is not None else np.zeros(B, bool))
        going &= ~crossed[-1]
        if not going.any():
            break
    return ControlledPlay(np.stack(gen, 1), np.stack(term, 1), np.stack(acts, 1), np.stack(crossed, 1))
