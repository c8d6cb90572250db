"""Closed-loop control fidelity: a controller that reacts to every frame, in the real game and in a world.

Held and random actions (:mod:`worldsim.eval.control`) are *open loop*: the actions are fixed
before either side runs. An agent, or a player, acts on what it sees, and a world can pass every
open-loop check and still fail that: if its very first response to a push has the wrong sign,
a controller that pushes against a fall makes the fall worse in the dream, and nothing it learns
there transfers. So each named controller of the world (``WorldDef.controllers``: read states in,
actions out) plays the real game and the world from the same reset states, seeing only the state
read off each side's own frames with the same reader, and the episode lengths are compared:

- CartPole's ``balance`` (a PD controller on the read pole angle and cart position) keeps the real
  pole up for the whole run; a world that obeys the controls must let it do so too;
- ``wrong-way`` (the same, pushing the other way) drops the real pole within a few frames; a world
  that does not fall then has learned "controller actions mean balance", not the game.

The world's episode ends where its termination head fires or the read state crosses the game's
bounds (as for random actions, :func:`worldsim.eval.fidelity.world_ends`); the report says which
ended how many (a head that fires while the pole is still up is a different fault from a pole
that falls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from worldsim.engine.controlled import Controller, Reader, play_controlled
from worldsim.engine.world import WorldModel
from worldsim.eval.control import Branches, RealSide, StartState, first_true


@dataclass
class ClosedLoopFidelity:
    """One controller's episodes in both sides (lengths in frames after the context, capped at ``frames``)."""

    controller: str
    episodes: int
    frames: int
    real_lengths: list[int]
    world_lengths: list[int]
    median_real: float
    median_world: float
    real_full: int  # episodes that lasted the whole run in the real game
    world_full: int
    length_ratio: float  # median world / median real
    world_by_head: int = 0
    """World episodes that ended where its termination head fired (first, or with the bounds); the
    other ended ones ended where the state read off its frames crossed the game's bounds first."""


def _decide(
    controller: Controller, reader: Reader, prev: np.ndarray, frames: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(states of this frame (B, K), actions (B,)) for frames (B, s, s, 3)."""
    now = np.asarray(reader(frames), np.float64)
    return now, np.asarray(controller(np.stack([prev, now], axis=1)))


def real_closed_loop(
    real: RealSide, starts: Sequence[StartState], controller: Controller, reader: Reader, frames: int
) -> Branches:
    """The controller plays the real game from each start, one row at a time (a row stops at the
    game's own time limit, which does not count as an end)."""
    B = len(starts)
    s = starts[0].frames.shape[1]
    out = np.zeros((B, frames, s, s, 3), np.uint8)
    term = np.zeros((B, frames), bool)
    for b, start in enumerate(starts):
        real.restore(start)
        prev = np.asarray(reader(start.frames[-2:-1] if len(start.frames) > 1 else start.frames[-1:]), np.float64)
        frame = start.frames[-1:].copy()
        for t in range(frames):
            prev, act = _decide(controller, reader, prev, frame)
            step = real.game.step(act[0])
            if step.done:  # a time limit (truncated) is not an end: the run counts as full
                out[b, t:], term[b, t:] = real.game.frame(), step.terminated
                break
            out[b, t] = frame[0] = real.game.frame()
    return Branches(out, term)


@torch.inference_mode()
def world_closed_loop(
    world: WorldModel, starts: Sequence[StartState], controller: Controller, reader: Reader, frames: int, seed: int = 0
) -> Branches:
    """The controller plays every start as one row of a batched session (row i: noise seed ``seed + i``)."""
    K = world.config.context_frames
    B = len(starts)
    sess = world.session(batch=B, seed=[seed + i for i in range(B)])
    sess.reset(frames=np.stack([st.frames[-K:] for st in starts]), actions=np.stack([st.actions[-K:] for st in starts]))
    before = np.stack([st.frames[-2] if len(st.frames) > 1 else st.frames[-1] for st in starts])
    play = play_controlled(sess, before, np.stack([st.frames[-1] for st in starts]), controller, reader, frames)
    return Branches(play.frames, play.terminated)


def closed_loop_fidelity(
    name: str, real: Branches, world_end: np.ndarray, head_end: np.ndarray | None = None
) -> ClosedLoopFidelity:
    """Episode lengths from the real runs and the world's first end (1-based, 0 = none; see ``world_ends``);
    with ``head_end`` (the head's first end alone), how many of the world's ends were the head's."""
    T = real.terminated.shape[1]
    real_end = first_true(real.terminated)
    real_len = np.where(real_end > 0, real_end, T)
    world_len = np.where(world_end > 0, world_end, T)
    med_r, med_w = float(np.median(real_len)), float(np.median(world_len))
    return ClosedLoopFidelity(
        name,
        len(real_len),
        T,
        real_len.tolist(),
        world_len.tolist(),
        med_r,
        med_w,
        int((real_end == 0).sum()),
        int((world_end == 0).sum()),
        med_w / med_r if med_r > 0 else float("nan"),
        int(((world_end > 0) & (head_end == world_end)).sum()) if head_end is not None else 0,
    )
