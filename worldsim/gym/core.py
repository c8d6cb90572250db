"""The step core shared by :class:`~worldsim.gym.WorldEnv` and :class:`~worldsim.gym.WorldVectorEnv`.

One :class:`~worldsim.engine.Session` of N rows plus an :class:`~worldsim.episodes.EpisodeTracker`
(seeds, elapsed steps, truncation, done, NEXT_STEP autoreset: the rules every surface shares),
SAME_STEP autoreset and info building. The single env is this core with N = 1 and no
autoreset, so the two envs cannot drift apart.

Every row behaves like a single env wrapped in Gymnasium's ``TimeLimit``: ``truncated`` is set
once ``max_episode_steps`` steps were taken, whatever ``terminated`` says
(:func:`worldsim.episodes.truncated`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from worldsim.engine.session import StepResult
from worldsim.engine.world import WorldModel, parse_dtype
from worldsim.episodes import EpisodeTracker, resolve_max_episode_steps, validate_action, validate_actions


def load_world(world: str | Path | WorldModel, device: Any = None, dtype: Any = None) -> WorldModel:
    """A loaded world from a bundled world's name, a checkpoint path or a WorldModel (shared, not copied).

    ``dtype``: a ``torch.dtype`` or its name (``"bfloat16"``), handy in ``gym.make`` kwargs.
    Raises ``FileNotFoundError`` naming the path (or the missing bundled checkpoint and how to train it).
    """
    if isinstance(world, WorldModel):
        return world
    from worldsim.worlds import world_path

    if isinstance(dtype, str):
        dtype = parse_dtype(dtype)
    return WorldModel.load(world_path(world), device=device, dtype=dtype)


class StepCore:
    """N rows of one world and their episode bookkeeping.

    ``autoreset_mode=None`` (the single env): rows never restart by themselves.
    ``NEXT_STEP``: the step after a row's episode ended resets that row instead of stepping it
    (its action is ignored) and returns the new first frame with reward 0.
    ``SAME_STEP``: a row whose episode ends is reset in the same step; the ending observation
    and info are returned in ``info["final_obs"]`` / ``info["final_info"]``.
    ``max_episode_steps``: None is the world's default limit, 0 no limit
    (:func:`worldsim.episodes.resolve_max_episode_steps`).
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
        end_rule: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.world = world
        self.spec = world.action_spec
        self.num_envs = num_envs
        self.channels_first = channels_first
        self.latency_in_info = latency_in_info
        self.end_rule = end_rule
        """frames (N, H, W, 3) uint8 -> (N,) bool, or None: an episode also ends (``terminated``) where
        it says so, beside the world's termination head (e.g. ``WorldDef.frames_done``: the game's bounds
        read off the frame)."""
        self.session = world.session(batch=num_envs, seed=0)
        limit = resolve_max_episode_steps(max_episode_steps, str(world.config.name))
        self.episodes = EpisodeTracker(num_envs, limit, autoreset=autoreset_mode == AutoresetMode.NEXT_STEP)
        self._autoreset_mode = autoreset_mode
        self.last_latency_ms = 0.0
        self.ended: dict[int, dict[str, float | int]] = {}
        """Rows whose episode ended in the last step -> its SB3-style ``{"r", "l", "t"}`` statistics."""
        size = world.config.codec.image_size
        self.obs_shape = (3, size, size) if channels_first else (size, size, 3)

    @property
    def max_episode_steps(self) -> int:
        """Steps after which an episode is truncated (0: no limit)."""
        return self.episodes.max_episode_steps

    @property
    def autoreset_mode(self) -> AutoresetMode | None:
        return self._autoreset_mode

    @autoreset_mode.setter
    def autoreset_mode(self, mode: AutoresetMode | None) -> None:
        self._autoreset_mode = mode
        self.episodes.autoreset = mode == AutoresetMode.NEXT_STEP

    # ------------------------------------------------------------------ observations / info
    def obs(self, frames: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) -> the observation layout, as a fresh contiguous array."""
        return np.ascontiguousarray(frames.transpose(0, 3, 1, 2)) if self.channels_first else frames.copy()

    def info(self, latency_ms: float) -> dict[str, np.ndarray]:
        """Per-row info arrays (every row has every key)."""
        out: dict[str, np.ndarray] = {"frame_index": self.episodes.elapsed.copy()}
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
        """One action (the single env) -> a canonical batch of 1 (:func:`worldsim.episodes.validate_action`)."""
        return validate_action(self.spec, action)[None]

    def validate(self, actions: Any) -> np.ndarray:
        """A batch of N actions -> canonical form (:func:`worldsim.episodes.validate_actions`)."""
        return validate_actions(self.spec, actions, self.num_envs)

    # ------------------------------------------------------------------ reset
    def reset_rows(
        self,
        rows: Sequence[int] | np.ndarray,
        frames: np.ndarray | None = None,
        actions: Any = None,
        seeds: Sequence[int | None] | None = None,
    ) -> np.ndarray:
        """Start new episodes in ``rows`` (seeding their ``np_random`` with ``seeds`` first);
        returns their observations (len(rows), ...).

        Each row's engine seed (which start clip, the diffusion noise) is drawn from the row's
        ``np_random``, so a seeded reset replays the same episode. ``frames``: context frames
        ``(K, H, W, 3)`` for every row or ``(len(rows), K, H, W, 3)``.
        """
        rows = [int(r) for r in rows]
        engine_seeds = self.episodes.begin(rows, seeds)
        self.session.reset(frames=frames, actions=actions, seed=engine_seeds, rows=rows)
        return self.obs(self.session.frames[rows])

    # ------------------------------------------------------------------ step
    def _step_live(self, actions: np.ndarray, restart: np.ndarray) -> StepResult:
        """Step every row but ``restart``; those rows get a blank frame, reward 0 and no end (the
        caller resets them). In random play ~10% of rows restart a step; skipping them costs a copy
        of the live rows' caches (a subset step): 1.19x at N = 64, even at N = 16 (bf16, docs/performance.md)."""
        live = np.setdiff1d(np.arange(self.num_envs), restart)
        n, (h, w) = self.num_envs, self.session.frames.shape[1:3]
        frames, rewards = np.zeros((n, h, w, 3), np.uint8), np.zeros(n, np.float32)
        terminated, p_term = np.zeros(n, bool), np.zeros(n, np.float32)
        if live.size:
            out = self.session.step(actions[live], rows=live.tolist())
            frames[live], rewards[live], terminated[live] = out.frames, out.rewards, out.terminated
            p_term[live] = out.p_terminated
        return StepResult(frames=frames, rewards=rewards, terminated=terminated, latency_ms=0.0, p_terminated=p_term)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One batched engine call for all rows, with autoreset; ``actions`` canonical (see ``validate``).

        Returns obs (N, ...), rewards (N,) float64, terminated (N,) bool, truncated (N,) bool and
        per-row info arrays (plus ``final_obs`` / ``final_info`` in SAME_STEP mode).
        """
        if not self.episodes.started.all():
            raise RuntimeError("call reset() before step()")
        t0 = time.perf_counter()
        restart = self.episodes.pending_resets()
        # NEXT_STEP: these rows are reset, not stepped (their actions are ignored): only the others run.
        out = self._step_live(actions, restart) if restart.size else self.session.step(actions)
        terminated = np.asarray(out.terminated, dtype=bool).copy()
        if self.end_rule is not None:
            ends = np.asarray(self.end_rule(out.frames), dtype=bool)
            if ends.shape != terminated.shape:
                raise ValueError(
                    f"end_rule returned shape {ends.shape} for {len(terminated)} frames; expected ({len(terminated)},)"
                )
            terminated |= ends
        truncated = self.episodes.record(out.rewards, terminated)
        obs = self.obs(out.frames)
        rewards = out.rewards.astype(np.float64)
        if restart.size:
            obs[restart] = self.reset_rows(restart)
            rewards[restart], terminated[restart], truncated[restart] = 0.0, False, False
        done = terminated | truncated
        self.ended = {int(r): self.episodes.episode_info(int(r)) for r in np.flatnonzero(done)}
        final: tuple[np.ndarray, dict[str, np.ndarray]] | None = None
        if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
            ended = np.flatnonzero(done)
            final_obs = np.empty(self.num_envs, dtype=object)
            for r in ended:
                final_obs[r] = obs[r].copy()
            final = (final_obs, self.info(0.0))
            obs[ended] = self.reset_rows(ended)
        self.last_latency_ms = (time.perf_counter() - t0) * 1e3
        info: dict[str, Any] = self.info(self.last_latency_ms)
        if final is not None:
            final_obs, final_info = final
            if "latency_ms" in final_info:
                final_info["latency_ms"][:] = self.last_latency_ms
            info["final_obs"], info["final_info"] = final_obs, final_info
        return obs, rewards, terminated, truncated, info
