"""Held-out episode data: recorded episodes in memory and the real side of the rollouts.

Frame indices follow :mod:`worldsim.train.data`: ``frames[0]`` is the reset frame,
``actions[j]`` produced frame ``j`` and ``rewards[j]`` / ``terminated[j]`` come with it.
With ``start`` real frames given as context, horizon ``h`` (1-based) is frame ``start + h - 1``.
Episodes are in memory (:class:`EvalEpisode`), so evaluation also runs without a recording on
disk; :func:`load_eval_episodes` reads them from a ``worldsim record`` data set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- episodes
@dataclass
class EvalEpisode:
    """One held-out episode, aligned per frame (see module doc)."""

    frames: np.ndarray  # (L+1, 64, 64, 3) uint8
    actions: np.ndarray  # (L+1, ...) canonical actions; actions[j] produced frames[j]
    rewards: np.ndarray  # (L+1,) float32
    terminated: np.ndarray  # (L+1,) bool
    seed: int | None = None  # the real game's reset seed (to replay it)
    episode_id: int = -1
    split: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def ended(self) -> bool:
        """The real game ended this episode (rather than the recording truncating it)."""
        return bool(self.terminated[-1])

    @classmethod
    def from_recorded(cls, ep: Any, spec: ActionSpec, split: str = "") -> EvalEpisode:
        """From a :class:`worldsim.data.Episode` (``actions[i]`` taken at ``frames[i]``)."""
        from worldsim.train.data import align

        a = align(ep, spec)
        return cls(a.frames, a.actions, a.rewards, a.terminated, int(ep.seed), int(ep.episode_id), split)


def load_eval_episodes(
    data: str | Path, split: str = "test", n: int = 8, fallback: str | None = "val"
) -> tuple[list[EvalEpisode], ActionSpec, dict[str, Any]]:
    """The ``n`` longest episodes of ``split`` (topped up from ``fallback`` when it has fewer),
    longest first (ties by episode id), with the data set's action spec and manifest."""
    from worldsim.data import action_spec, load_episodes, read_manifest

    manifest = read_manifest(data)
    spec = action_spec(data)
    eps = [EvalEpisode.from_recorded(e, spec, split) for e in load_episodes(data, split=split)]
    if len(eps) < n and fallback and fallback != split:
        more = [EvalEpisode.from_recorded(e, spec, fallback) for e in load_episodes(data, split=fallback)]
        more = sorted(more, key=lambda e: (-len(e), e.episode_id))[: n - len(eps)]
        log.info("%s split has %d episodes; adding %d from %s", split, len(eps), len(more), fallback)
        eps += more
    if not eps:
        raise ValueError(f"no {split} (or {fallback}) episodes in {data}")
    eps = sorted(eps, key=lambda e: (-len(e), e.episode_id))[:n]
    return eps, spec, manifest


@dataclass
class Reference:
    """The real side of the rollouts: the same for every model."""

    frames: np.ndarray  # (E, H, 64, 64, 3) uint8, zeros where the episode had no such frame
    valid: np.ndarray  # (E, H) bool: the real episode has this frame
    rewards: np.ndarray  # (E, H) float
    terminated: np.ndarray  # (E, H) bool
    window: np.ndarray  # (E, H) bool: where predicted ends are scored (valid + tol frames after a real end)
    start: int  # frame index of horizon 1


def reference(episodes: Sequence[EvalEpisode], start: int, horizon: int, tol: int = 2) -> Reference:
    E = len(episodes)
    s = episodes[0].frames.shape[1]
    ref = Reference(
        np.zeros((E, horizon, s, s, 3), np.uint8),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon)),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon), bool),
        start,
    )
    for i, e in enumerate(episodes):
        n = max(0, min(horizon, len(e) - start))
        ref.frames[i, :n] = e.frames[start : start + n]
        ref.valid[i, :n] = True
        ref.rewards[i, :n] = e.rewards[start : start + n]
        ref.terminated[i, :n] = e.terminated[start : start + n]
        ref.window[i, : min(horizon, n + (tol if e.ended else 0))] = True
    return ref


def repeat(ref: Reference, n: int) -> Reference:
    """``ref``'s episodes ``n`` times over, in order (the real side of ``n`` noise draws each)."""
    if n == 1:
        return ref

    def rep(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x] * n)

    return Reference(rep(ref.frames), rep(ref.valid), rep(ref.rewards), rep(ref.terminated), rep(ref.window), ref.start)


def max_horizon(episodes: Sequence[EvalEpisode], start: int) -> int:
    """The most frames any episode has after ``start`` context frames."""
    return max((len(e) - start for e in episodes), default=0)
