"""World rollouts on held-out episodes: every model gets the same real context frames (with their
actions) and then the real game's action sequence; episodes are rows of one batched session.
Frame indexing: see :mod:`worldsim.eval.episodes`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.eval.episodes import EvalEpisode

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- rollouts
@dataclass
class Generated:
    """One model's rollouts, aligned with a :class:`Reference`."""

    frames: np.ndarray  # (E, H, 64, 64, 3) uint8 (zeros where not stepped)
    rewards: np.ndarray  # (E, H)
    terminated: np.ndarray  # (E, H) bool
    stepped: np.ndarray  # (E, H) bool
    seconds: float = 0.0  # wall time of the model steps


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, max(1, size))]


@torch.inference_mode()
def rollout(
    world: WorldModel,
    episodes: Sequence[EvalEpisode],
    horizon: int,
    start: int | None = None,
    seed: int = 0,
    batch: int = 16,
    tol: int = 2,
    progress: Any = None,
) -> Generated:
    """Roll ``world`` out for up to ``horizon`` frames after real context frames.

    The context is the ``world.config.context_frames`` real frames (and their actions) just
    before frame ``start`` (default: right after the model's own context); then the model gets
    the real game's action for every frame. A row is stepped while its episode has frames (and
    ``tol`` frames beyond a real end, with the null action, to score predicted ends). Episode
    ``i`` always gets noise seed ``seed + i``, whatever ``batch`` is (results then agree up to
    floating-point rounding of differently sized batched matmuls).
    """
    import time

    K = world.config.context_frames
    start = K if start is None else start
    if start < K:
        raise ValueError(f"start {start} leaves fewer than the model's {K} context frames")
    E, spec = len(episodes), world.action_spec
    s = world.config.codec.image_size
    out = Generated(
        np.zeros((E, horizon, s, s, 3), np.uint8),
        np.zeros((E, horizon)),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon), bool),
    )
    short = [i for i, e in enumerate(episodes) if len(e) < start]
    if short:
        raise ValueError(f"episodes {short} are shorter than the {start} context frames")
    null = spec.null(1)[0]
    cfg_on = world.config.sampler.guidance_scale != 1.0
    t0 = time.perf_counter()
    for chunk in _chunks(E, batch):
        eps = [episodes[i] for i in chunk]
        need = np.array([min(horizon, len(e) - start + (tol if e.ended else 0)) for e in eps])
        sess = world.session(batch=len(eps), seed=seed + chunk.start)
        sess.reset(
            frames=np.stack([e.frames[start - K : start] for e in eps]),
            actions=np.stack([e.actions[start - K : start] for e in eps]),
        )
        for h in range(int(need.max(initial=0))):
            j = start + h
            rows = np.flatnonzero(need > h)
            n_rows = len(rows)
            if cfg_on:  # a subset of rows cannot be stepped with guidance: step them all
                rows = np.arange(len(eps))
            acts = np.stack([eps[r].actions[j] if j < len(eps[r]) else null for r in rows])
            res = sess.step(acts) if len(rows) == len(eps) else sess.step(acts, rows=rows.tolist())
            gi = np.asarray(chunk)[rows]
            out.frames[gi, h], out.rewards[gi, h], out.terminated[gi, h] = res.frames, res.rewards, res.terminated
            out.stepped[gi, h] = True
            if progress is not None:
                progress.update(n_rows)
        if progress is not None:  # rows that needed fewer steps
            progress.update(int(horizon * len(eps) - need.sum()))
    out.seconds = time.perf_counter() - t0
    return out
