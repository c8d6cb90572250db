"""The step core shared by :class:`WorldEnv` and :class:`WorldVectorEnv`.

One :class:`~worldsim.engine.Session` of N rows; per-row episode bookkeeping (elapsed steps,
truncation, the per-row ``np_random`` that seeds each new episode), observation layout and
info. The single env is this core with N = 1, so the two envs cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.engine.world import WorldModel


def load_world(world: str | Path | WorldModel, device: Any = None, dtype: Any = None) -> WorldModel:
    """A loaded world from a bundled world's name, a checkpoint path or a WorldModel."""
    if isinstance(world, WorldModel):
        return world
    from worldsim.worlds import world_path

    return WorldModel.load(world_path(world), device=device, dtype=dtype)


class StepCore:
    def __init__(
        self,
        world: WorldModel,
        num_envs: int,
        max_episode_steps: int | None = None,
        channels_first: bool = False,
    ) -> None:
        self.world = world
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.channels_first = channels_first
        self.session = world.session(batch=num_envs, seed=0)
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.last_latency_ms = 0.0
        self.np_randoms: list[np.random.Generator] = [np.random.default_rng() for _ in range(num_envs)]
        size = world.config.codec.image_size
        self.obs_shape = (3, size, size) if channels_first else (size, size, 3)

    # ------------------------------------------------------------------ observations
    def obs(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) -> the observation layout, as a fresh array."""
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)) if self.channels_first else frames.copy()

    # ------------------------------------------------------------------ reset
    def seed_rows(self, rows: Sequence[int], seeds: Sequence[int | None]) -> None:
        for r, s in zip(rows, seeds):
            if s is not None:
                self.np_randoms[r] = np.random.default_rng(int(s))

    def reset_rows(
        self, rows: Sequence[int], options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes in ``rows``; engine seeds come from each row's ``np_random``."""
        rows = list(rows)
        options = options or {}
        engine_seeds = [int(self.np_randoms[r].integers(2**31 - 1)) for r in rows]
        frames = options.get("frames")
        self.session.reset(frames=frames, actions=options.get("actions"), seed=engine_seeds, rows=rows)
        self.elapsed[rows] = 0
        out = self.session.frames[rows]
        return self.obs(out), {"frame_index": self.elapsed[rows].copy()}

    # ------------------------------------------------------------------ step
    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One batched engine call for all rows."""
        out = self.session.step(actions)
        self.elapsed += 1
        terminated = out.terminated.astype(bool)
        if self.max_episode_steps is not None:
            truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        else:
            truncated = np.zeros(self.num_envs, dtype=bool)
        self.last_latency_ms = out.latency_ms  # not in info: gymnasium expects infos to be deterministic
        info = {"frame_index": self.elapsed.copy()}
        return self.obs(out.frames), out.rewards.astype(np.float64), terminated, truncated, info
