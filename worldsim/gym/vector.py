"""``WorldVectorEnv``: N neural worlds stepped by ONE batched engine call per step.

Autoreset follows Gymnasium 1.x: ``NEXT_STEP`` (default; the step after an episode ends resets
that row and returns its first observation with reward 0) or ``SAME_STEP`` (the ending step
already returns the new episode's first observation; the last one is in
``info["final_obs"]`` / ``info["final_info"]``). Only the ended rows are reset in the KV cache
(a copy of their start clips' committed rows, see ``worldsim.engine.starts``), so the other rows
keep their history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldsim.engine.world import WorldModel
from worldsim.episodes import row_seeds
from worldsim.gym.core import StepCore, load_world


class WorldVectorEnv(VectorEnv):
    """``num_envs`` episodes of one world, stepped by ONE batched engine call per step.

    See :class:`worldsim.gym.WorldEnv` for each row's spaces, rewards, starting state and
    episode ends; row ``i`` reset with seed ``s`` replays exactly what ``WorldEnv`` reset with
    seed ``s`` does (same start clip, same noise; frames equal up to the rounding of batched
    matmuls). ``reset(seed=int)`` seeds rows ``seed + i``, a list seeds row by row.

    ``reset(options=...)``: ``"reset_mask"`` (bool (num_envs,)) resets only those rows;
    ``"frames"``: context frames ``(K, 64, 64, 3)`` for every row or ``(num_envs, K, 64, 64, 3)``
    (with ``"actions"`` likewise) instead of the world's start clips.

    Episodes follow :mod:`worldsim.episodes` (the rules every surface shares): ``truncated`` once
    ``max_episode_steps`` steps were taken (None: the world's default limit, 0: none), whatever
    ``terminated`` says.

    Infos use Gymnasium's vector layout: ``info["frame_index"]`` (num_envs,) with the mask
    ``info["_frame_index"]``; ``latency_ms`` is the wall time of the whole batched step.
    """

    metadata: dict[str, Any] = {
        "render_modes": ["rgb_array"],
        "render_fps": 15,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        world: str | Path | WorldModel = "cartpole",
        num_envs: int = 1,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
        channels_first: bool = False,
        latency_in_info: bool = False,
        end_rule: Callable[[np.ndarray], np.ndarray] | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {mode}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        model = load_world(world, device, dtype)
        self.core = StepCore(
            model,
            num_envs,
            max_episode_steps=max_episode_steps,
            channels_first=channels_first,
            autoreset_mode=mode,
            latency_in_info=latency_in_info,
            end_rule=end_rule,
        )
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(model.config.fps), "autoreset_mode": mode}
        self.single_action_space = model.action_spec.to_space()
        self.single_observation_space = gym.spaces.Box(0, 255, self.core.obs_shape, np.uint8)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)

    @property
    def world(self) -> WorldModel:
        return self.core.world

    @property
    def last_latency_ms(self) -> float:
        """Wall time of the last batched step, in milliseconds."""
        return self.core.last_latency_ms

    def set_autoreset_mode(self, mode: AutoresetMode | str) -> None:
        """Switch between NEXT_STEP and SAME_STEP (takes effect for episodes ending from now on)."""
        mode = AutoresetMode(mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {mode}")
        self.metadata["autoreset_mode"] = mode
        self.core.autoreset_mode = mode
        pending = np.flatnonzero(self.core.episodes.done)
        if mode == AutoresetMode.SAME_STEP and pending.size:
            self.core.reset_rows(pending)

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        n = self.num_envs
        seeds = row_seeds(seed, n)
        options = dict(options or {})
        mask = np.ones(n, dtype=bool)
        if options.get("reset_mask") is not None:
            mask = np.asarray(options.pop("reset_mask"))
            if mask.shape != (n,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({n},) with a True value")
        rows = np.flatnonzero(mask).tolist()
        frames, actions = options.get("frames"), options.get("actions")
        if frames is not None:
            frames = np.asarray(frames)
            if frames.ndim == 5:  # one clip per env: keep the reset rows'
                if frames.shape[0] != n:
                    raise ValueError(f"options['frames'] must be (K, H, W, 3) or ({n}, K, H, W, 3), got {frames.shape}")
                frames = frames[rows]
                if actions is not None:
                    actions = np.asarray(actions)[rows]
        t0 = time.perf_counter()
        obs_rows = self.core.reset_rows(rows, frames=frames, actions=actions, seeds=[seeds[r] for r in rows])
        self.core.last_latency_ms = (time.perf_counter() - t0) * 1e3
        obs = self.core.obs(self.core.session.frames)
        obs[rows] = obs_rows
        info = self.core.vector_info(self.core.info(self.core.last_latency_ms), mask)
        return obs, info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rew, term, trunc, info = self.core.step(self.core.validate(actions))
        final_obs, final_info = info.pop("final_obs", None), info.pop("final_info", None)
        out = self.core.vector_info(info, np.ones(self.num_envs, dtype=bool))
        if final_obs is not None:  # SAME_STEP: rows that ended this step (Gymnasium's layout)
            ended = term | trunc
            out["final_obs"], out["_final_obs"] = final_obs, ended.copy()
            out["final_info"], out["_final_info"] = self.core.vector_info(final_info, ended), ended.copy()
        return obs, rew, term, trunc, out

    def render(self) -> tuple[np.ndarray, ...] | None:  # type: ignore[override]
        """``rgb_array``: one (64, 64, 3) uint8 frame per row, as Gymnasium's SyncVectorEnv returns."""
        if self.render_mode == "rgb_array":
            return tuple(self.core.session.frames.copy())
        return None


def vector_env_steps_per_second(
    world: str | Path | WorldModel, num_envs: int, steps: int = 50, warmup: int = 5
) -> float:
    """Env steps per second of a :class:`WorldVectorEnv` (``num_envs`` per batched call) with random
    actions, autoreset included; what ``worldsim bench --vector`` reports at N = 1, 16, 64."""
    env = WorldVectorEnv(world, num_envs=num_envs)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(warmup):
        env.step(env.action_space.sample())
    t = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
    elapsed = time.perf_counter() - t
    env.close()
    return steps * num_envs / elapsed
