"""Control-fidelity runs: the same real start states and the same actions, in the real game and in a world.

A *side* is anything that, given start states and an action sequence per row, returns the frames
it produces and where it says the episode ended (:class:`Side`). Two implementations:

- :class:`RealSide`: the real game (:class:`worldsim.real.RealGame`), restored to each start's
  snapshot (or replayed from its seed) and stepped with the actions. It is the reference, and it
  can also stand in for the world (then every fidelity number is exact: the check in the tests).
- :class:`WorldSide`: a :class:`~worldsim.engine.world.WorldModel`; every row is one row of a
  batched session started from the start's last ``context_frames`` real frames and their actions.

Start states (:func:`collect_starts`): the real game reset with a seed and stepped by uniformly
random actions for a random number of frames (at least the world's context), then snapshotted.
:func:`held_runs` holds every probe action for ``k`` frames from every start (rows = starts x
actions); :func:`random_runs` plays random action sequences from reset states.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.real import RealGame, RealGameError, Snapshot
from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)


@dataclass
class StartState:
    """A real state to branch from."""

    frames: np.ndarray
    """(K, s, s, 3) uint8: the last K real frames; ``frames[-1]`` is the branch point."""
    actions: np.ndarray
    """(K, ...) canonical actions that produced them (the first one is not used by a world)."""
    snapshot: Snapshot | None
    """The real game at the branch point (None: replay ``history`` from ``seed``)."""
    seed: int
    """The real game's reset seed."""
    history: np.ndarray
    """(t, ...) every action since the reset frame."""


@dataclass
class Branches:
    """What one side produced for a batch of rows."""

    frames: np.ndarray
    """(B, T, s, s, 3) uint8; after the side's episode end its last frame is repeated."""
    terminated: np.ndarray
    """(B, T) bool: the side says the episode has ended at this frame (real: from the end on;
    world: the termination head, per frame)."""
    states: np.ndarray | None = None
    """(B, T, K) the game's internal state at each frame (the real game, when its world defines
    ``true_state``), else None: what the state reader is checked against (its resolution)."""


class Side(Protocol):
    """Steps rows from start states with given actions (one start per row)."""

    def run(self, starts: Sequence[StartState], actions: np.ndarray) -> Branches:
        """``actions``: (B, T, ...) canonical actions, ``len(starts) == B``."""
        ...


def first_true(x: np.ndarray) -> np.ndarray:
    """(B, T) bool -> (B,) 1-based index of the first True, 0 where there is none."""
    x = np.asarray(x, bool)
    return np.where(x.any(1), x.argmax(1) + 1, 0)


# ---------------------------------------------------------------------------- the real game
class RealSide:
    """The real game as a :class:`Side` (its ``action_spec`` must be the world's)."""

    def __init__(self, game: RealGame, progress: Any = None) -> None:
        if game.action_spec is None:
            raise RealGameError("RealSide needs a RealGame made with the world's action_spec")
        self.game, self.progress = game, progress

    def restore(self, start: StartState) -> None:
        """Put the real game at ``start`` (its snapshot, or a replay of its actions from its seed)."""
        if start.snapshot is not None:
            self.game.restore(start.snapshot)
        elif not self.game.replay_actions(start.seed, list(start.history)):
            raise RealGameError(f"replaying seed {start.seed} ended early: the game is not deterministic")

    def run(self, starts: Sequence[StartState], actions: np.ndarray) -> Branches:
        B, T = actions.shape[:2]
        s = starts[0].frames.shape[1]
        frames = np.zeros((B, T, s, s, 3), np.uint8)
        term = np.zeros((B, T), bool)
        states: list[np.ndarray | None] = []
        for b, start in enumerate(starts):
            self.restore(start)
            for t in range(T):
                done = self.game.step(actions[b, t]).done
                frames[b, t] = self.game.frame()
                states.append(self.game.true_state())
                if done:
                    frames[b, t + 1 :], term[b, t:] = frames[b, t], True
                    states += states[-1:] * (T - t - 1)
                    break
            if self.progress is not None:
                self.progress.update(1)
        true = None if not states or states[0] is None else np.stack(states).reshape(B, T, -1)  # type: ignore[arg-type]
        return Branches(frames, term, true)


# ---------------------------------------------------------------------------- a world
class WorldSide:
    """A world model as a :class:`Side`: rows in batched sessions of up to ``batch`` rows; row i
    always gets noise seed ``seed + i`` (so results do not depend on ``batch``)."""

    def __init__(self, world: WorldModel, seed: int = 0, batch: int = 256, progress: Any = None) -> None:
        self.world, self.seed, self.batch, self.progress = world, seed, max(1, batch), progress

    @torch.inference_mode()
    def run(self, starts: Sequence[StartState], actions: np.ndarray) -> Branches:
        K = self.world.config.context_frames
        if starts and len(starts[0].frames) < K:
            raise ValueError(f"start states have {len(starts[0].frames)} frames; the world needs {K} context frames")
        B, T = actions.shape[:2]
        s = self.world.config.codec.image_size
        frames = np.zeros((B, T, s, s, 3), np.uint8)
        term = np.zeros((B, T), bool)
        for lo in range(0, B, self.batch):
            hi = min(B, lo + self.batch)
            sess = self.world.session(batch=hi - lo, seed=[self.seed + i for i in range(lo, hi)])
            sess.reset(
                frames=np.stack([st.frames[-K:] for st in starts[lo:hi]]),
                actions=np.stack([st.actions[-K:] for st in starts[lo:hi]]),
            )
            for t in range(T):
                res = sess.step(actions[lo:hi, t])
                frames[lo:hi, t], term[lo:hi, t] = res.frames, res.terminated
            if self.progress is not None:
                self.progress.update(hi - lo)
        return Branches(frames, term)


# ---------------------------------------------------------------------------- start states
def random_action(spec: ActionSpec, space: Any) -> np.ndarray:
    """One uniformly random canonical action."""
    return spec.validate([space.sample()])[0]


def collect_starts(
    game: RealGame, n: int, context: int, seed: int = 0, prefix: tuple[int, int] = (0, 20)
) -> list[StartState]:
    """``n`` real states: reset with seed ``seed + i``, then ``context - 1 + p`` frames of random
    actions, ``p`` drawn from ``prefix`` (halved until the episode survives it), then snapshotted.
    ``prefix=(0, 0)`` gives the real start (reset) states."""
    spec = game.action_spec
    if spec is None:
        raise RealGameError("collect_starts needs a RealGame made with the world's action_spec")
    rng = np.random.default_rng(seed)
    space = spec.to_space()
    space.seed(seed)
    null = spec.null(1)[0]
    out = []
    for i in range(n):
        s = seed + i
        extra = int(rng.integers(prefix[0], prefix[1] + 1))
        for _attempt in range(50):
            frames, acts = [game.reset(s)], [null]
            for _ in range(context - 1 + extra):
                a = random_action(spec, space)
                done = game.step(a).done
                frames.append(game.frame())
                acts.append(a)
                if done:
                    break
            if not game.done and len(frames) >= context:
                break
            extra //= 2
            s += 100_003 if extra == 0 else 0  # even the shortest prefix ended: another seed
        else:
            raise RealGameError(f"{game.spec.env_id}: no start state survives {context} random frames")
        out.append(
            StartState(np.stack(frames[-context:]), np.stack(acts[-context:]), game.snapshot(), s, np.stack(acts[1:]))
        )
    return out


# ---------------------------------------------------------------------------- the runs
@dataclass
class HeldRuns:
    """Every probe action held for ``k`` frames from every start: rows are (start, action), start-major."""

    starts: list[StartState]
    actions: np.ndarray  # (A, ...) canonical probe actions
    real: Branches  # frames (N*A, k, ...)
    world: Branches

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.starts), len(self.actions)


@dataclass
class RandomRuns:
    """Random action sequences from reset states, the same in both sides."""

    starts: list[StartState]
    actions: np.ndarray  # (M, T, ...)
    real: Branches
    world: Branches


def held_runs(world: Side, real: Side, starts: list[StartState], actions: np.ndarray, k: int) -> HeldRuns:
    """Both sides with every action of ``actions`` held ``k`` frames from every start."""
    N, A = len(starts), len(actions)
    rows = [starts[n] for n in range(N) for _ in range(A)]
    acts = np.repeat(np.tile(actions, (N,) + (1,) * (actions.ndim - 1))[:, None], k, axis=1)
    return HeldRuns(starts, actions, real.run(rows, acts), world.run(rows, acts))


def random_play_starts(game: RealGame, n: int, context: int, seed: int = 0) -> list[StartState]:
    """The ``n`` reset states ``worldsim eval --random-episodes n --seed seed`` plays from (the
    reference scripts in ``examples/`` replay the same episodes through this and
    :func:`random_actions`)."""
    return collect_starts(game, n, context, seed=seed + 50_000, prefix=(0, 0))


def random_actions(spec: ActionSpec, n: int, frames: int, seed: int = 0) -> np.ndarray:
    """(n, frames, ...) uniformly random canonical actions: ``worldsim eval --seed seed``'s."""
    space = spec.to_space()
    space.seed(seed + 7)
    return np.stack([np.stack([random_action(spec, space) for _ in range(frames)]) for _ in range(n)])


def random_runs(
    world: Side, real: Side, starts: list[StartState], spec: ActionSpec, frames: int, seed: int = 0
) -> RandomRuns:
    """Both sides with one uniformly random action sequence of ``frames`` frames per start
    (:func:`random_actions` with ``seed``)."""
    acts = random_actions(spec, len(starts), frames, seed)
    return RandomRuns(starts, acts, real.run(starts, acts), world.run(starts, acts))


def probe_actions(spec: ActionSpec, n_sampled: int = 4, seed: int = 0) -> np.ndarray:
    """The actions each probe tries: every action of a Discrete space, else ``n_sampled`` sampled
    ones (plus the null action), canonical form (A, ...)."""
    if spec.kind == "discrete":
        return np.arange(spec.start, spec.start + spec.n, dtype=np.int64)
    space = spec.to_space()
    space.seed(seed)
    samples = [np.asarray(space.sample()).reshape(-1) for _ in range(n_sampled)]
    return spec.validate(np.stack([spec.null(1)[0], *samples]))
