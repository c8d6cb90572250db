"""The step core shared by :class:`~worldsim.gym.WorldEnv` and :class:`~worldsim.gym.WorldVectorEnv`.

One :class:`~worldsim.engine.Session` of N rows plus everything that is per-episode rather than
per-model: action validation, the per-row ``np_random`` that seeds each new episode, elapsed
steps and truncation, autoreset bookkeeping (none / NEXT_STEP / SAME_STEP) and info building.
The single env is this core with N = 1 and no autoreset, so the two envs cannot drift apart.

Every row behaves exactly like a single env wrapped in Gymnasium's ``TimeLimit``: ``truncated``
is set once ``max_episode_steps`` steps were taken, whatever ``terminated`` says.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode

from worldsim.engine.world import WorldModel
from worldsim.spaces import ActionError


def load_world(world: str | Path | WorldModel, device: Any = None, dtype: Any = None) -> WorldModel:
    """A loaded world from a bundled world's name, a checkpoint path or a WorldModel (shared, not copied).

    ``dtype``: a ``torch.dtype`` or its name (``"bfloat16"``), handy in ``gym.make`` kwargs.
    Raises ``FileNotFoundError`` naming the path (or the missing bundled checkpoint and how to train it).
    """
    if isinstance(world, WorldModel):
        return world
    from worldsim.worlds import world_path

    if isinstance(dtype, str):
        import torch

        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown torch dtype {dtype!r}")
        dtype = resolved
    return WorldModel.load(world_path(world), device=device, dtype=dtype)


class StepCore:
    """N rows of one world and their episode bookkeeping.

    ``autoreset_mode=None`` (the single env): rows never restart by themselves.
    ``NEXT_STEP``: the step after a row's episode ended resets that row instead of stepping it
    (its action is ignored) and returns the new first frame with reward 0.
    ``SAME_STEP``: a row whose episode ends is reset in the same step; the ending observation
    and info are returned in ``info["final_obs"]`` / ``info["final_info"]``.
    """

    def __init__(
        self,
        world: WorldModel,
        num_envs: int,
        *,
        max_episode_steps: int | None = None,
        channels_first: bool = False,
        autoreset_mode: AutoresetMode | None = None,
        latency_in_info: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1 or None, got {max_episode_steps}")
        self.world = world
        self.spec = world.action_spec
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.channels_first = channels_first
        self.autoreset_mode = autoreset_mode
        self.latency_in_info = latency_in_info
        self.session = world.session(batch=num_envs, seed=0)
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.needs_reset = np.zeros(num_envs, dtype=bool)  # NEXT_STEP: reset on the next step
        self.started = False
        self.last_latency_ms = 0.0
        self.np_randoms: list[np.random.Generator | None] = [None] * num_envs
        size = world.config.codec.image_size
        self.obs_shape = (3, size, size) if channels_first else (size, size, 3)

    # ------------------------------------------------------------------ observations / info
    def obs(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) -> the observation layout, as a fresh contiguous array."""
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)) if self.channels_first else frames.copy()

    def info(self, latency_ms: float) -> dict[str, np.ndarray]:
        """Per-row info arrays (every row has every key)."""
        out: dict[str, np.ndarray] = {"frame_index": self.elapsed.copy()}
        if self.latency_in_info:
            out["latency_ms"] = np.full(self.num_envs, latency_ms, dtype=np.float64)
        return out

    @staticmethod
    def row_info(info: dict[str, np.ndarray], row: int) -> dict[str, Any]:
        """One row of per-row info arrays as Python scalars (the single env's info); skips masks
        (``_key``) and SAME_STEP's ``final_obs`` / ``final_info``."""
        return {k: v[row].item() for k, v in info.items() if not k.startswith(("_", "final_"))}

    @staticmethod
    def vector_info(info: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
        """Gymnasium's vector info layout: each key plus a ``_key`` mask of the rows it is valid for."""
        out: dict[str, Any] = {}
        for k, v in info.items():
            out[k] = v
            out["_" + k] = mask.copy()
        return out

    # ------------------------------------------------------------------ actions
    def validate_one(self, action: Any) -> np.ndarray:
        """One action (the single env) -> a canonical batch of 1; :class:`ActionError` if it does not fit."""
        try:
            a = np.asarray(action)
        except Exception as e:  # ragged lists etc.
            raise ActionError(f"action could not be read as an array: {e}") from e
        shape = self.spec.per_action_shape
        if a.shape != shape and not (self.spec.kind == "discrete" and a.shape == (1,)):
            want = "a scalar" if shape == () else f"shape {shape}"
            raise ActionError(
                f"expected one action ({want}) for {self.spec.to_space()}, got {a.tolist()!r} of shape {a.shape}"
            )
        return self.spec.validate(a.reshape(1, *shape), batch=1)

    def validate(self, actions: Any) -> np.ndarray:
        """A batch of N actions -> canonical form; :class:`ActionError` naming the problem."""
        return self.spec.validate(actions, batch=self.num_envs)

    # ------------------------------------------------------------------ seeding / reset
    def seed_rows(self, rows: Sequence[int], seeds: Sequence[int | None]) -> None:
        """New ``np_random`` for rows given a seed (Gymnasium's ``seeding.np_random``); None keeps the row's."""
        for r, s in zip(rows, seeds):
            if s is not None:
                self.np_randoms[r], _ = seeding.np_random(int(s))

    def _rng(self, row: int) -> np.random.Generator:
        rng = self.np_randoms[row]
        if rng is None:  # first reset without a seed: fresh entropy, as gymnasium does
            rng, _ = seeding.np_random()
            self.np_randoms[row] = rng
        return rng

    def reset_rows(
        self, rows: Sequence[int] | np.ndarray, frames: np.ndarray | None = None, actions: Any = None
    ) -> np.ndarray:
        """Start new episodes in ``rows``; returns their observations (len(rows), ...).

        Each row's engine seed (which start clip, the diffusion noise) is drawn from the row's
        ``np_random``, so a seeded reset replays the same episode. ``frames``: context frames
        ``(K, H, W, 3)`` for every row or ``(len(rows), K, H, W, 3)``.
        """
        rows = [int(r) for r in rows]
        engine_seeds = [int(self._rng(r).integers(2**31 - 1)) for r in rows]
        self.session.reset(frames=frames, actions=actions, seed=engine_seeds, rows=rows)
        self.elapsed[rows] = 0
        self.needs_reset[rows] = False
        self.started = True
        return self.obs(self.session.frames[rows])

    # ------------------------------------------------------------------ step
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One batched engine call for all rows, with autoreset; ``actions`` canonical (see ``validate``).

        Returns obs (N, ...), rewards (N,) float64, terminated (N,) bool, truncated (N,) bool and
        per-row info arrays (plus ``final_obs`` / ``final_info`` in SAME_STEP mode).
        """
        if not self.started:
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        restart = np.flatnonzero(self.needs_reset)
        if restart.size:  # NEXT_STEP: these rows are reset, not stepped; their actions are ignored
            actions = actions.copy()
            actions[restart] = self.spec.null(restart.size)
        out = self.session.step(actions)
        self.elapsed += 1
        obs = self.obs(out.frames)
        rewards = out.rewards.astype(np.float64)
        terminated = np.asarray(out.terminated, dtype=bool).copy()
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, dtype=bool)
        else:
            truncated = self.elapsed >= self.max_episode_steps
        if restart.size:
            obs[restart] = self.reset_rows(restart)
            rewards[restart], terminated[restart], truncated[restart] = 0.0, False, False
        done = terminated | truncated
        final: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            ended = np.flatnonzero(done)
            final_obs = np.empty(self.num_envs, dtype=object)
            for r in ended:
                final_obs[r] = obs[r].copy()
            final = (final_obs, self.info(0.0))
            obs[ended] = self.reset_rows(ended)
        elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self.needs_reset = done.copy()
        self.last_latency_ms = (time.perf_counter() - t0) * 1e3
        info: dict[str, Any] = self.info(self.last_latency_ms)
        if final is not None:
            final_obs, final_info = final
            if "latency_ms" in final_info:
                final_info["latency_ms"][:] = self.last_latency_ms
            info["final_obs"], info["final_info"] = final_obs, final_info
        return obs, rewards, terminated, truncated, info
