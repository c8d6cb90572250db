"""``WorldVectorEnv``: N neural worlds stepped by ONE batched engine call per step.

Autoreset follows Gymnasium 1.x: ``NEXT_STEP`` (default; the step after an episode ends resets
that row and returns its first observation with reward 0) or ``SAME_STEP`` (the ending step
already returns the new episode's first observation; the last one is in
``info["final_obs"]`` / ``info["final_info"]``). Rows are reset one by one in the KV cache, so
the other rows keep their history.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from worldsim.engine.world import WorldModel
from worldsim.gym.core import StepCore, load_world


class WorldVectorEnv(VectorEnv):
    """A batch of ``num_envs`` episodes of one world; see :class:`worldsim.gym.WorldEnv` for
    the spaces, rewards and episode ends of each."""

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
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        mode = AutoresetMode(autoreset_mode)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset_mode must be NEXT_STEP or SAME_STEP, got {mode}")
        model = load_world(world, device, dtype)
        self.core = StepCore(model, num_envs, max_episode_steps, channels_first)
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": int(model.config.fps), "autoreset_mode": mode}
        self.single_action_space = model.action_spec.to_space()
        self.single_observation_space = gym.spaces.Box(0, 255, self.core.obs_shape, np.uint8)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._autoreset = np.zeros(num_envs, dtype=bool)
        self._obs = np.zeros((num_envs, *self.core.obs_shape), np.uint8)

    @property
    def world(self) -> WorldModel:
        return self.core.world

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        rows = list(range(self.num_envs))
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in rows]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        if seed is not None:
            self.core.seed_rows(rows, seeds)
        if options and "reset_mask" in options:
            rows = [i for i in rows if options["reset_mask"][i]]
        obs, info = self.core.reset_rows(rows, options)
        self._obs[rows] = obs
        self._autoreset[rows] = False
        return self._obs.copy(), {"frame_index": self.core.elapsed.copy()}

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        mode = self.metadata["autoreset_mode"]
        acts = np.asarray(actions)
        restart = np.flatnonzero(self._autoreset) if mode == AutoresetMode.NEXT_STEP else np.array([], int)
        if len(restart):  # those rows' actions are ignored (as gymnasium's SyncVectorEnv does)
            acts = acts.copy()
            acts[restart] = self.world.action_spec.null(len(restart))
        obs, rew, term, trunc, info = self.core.step(acts)
        if len(restart):
            robs, _ = self.core.reset_rows(restart.tolist())
            obs[restart], rew[restart], term[restart], trunc[restart] = robs, 0.0, False, False
            info["frame_index"][restart] = 0
        done = term | trunc
        if mode == AutoresetMode.SAME_STEP and done.any():
            rows = np.flatnonzero(done)
            final_obs = np.empty(self.num_envs, dtype=object)
            final_info = np.empty(self.num_envs, dtype=object)
            for r in rows:
                final_obs[r] = obs[r].copy()
                final_info[r] = {k: v[r] for k, v in info.items()}
            info["final_obs"], info["_final_obs"] = final_obs, done.copy()
            info["final_info"], info["_final_info"] = final_info, done.copy()
            robs, _ = self.core.reset_rows(rows.tolist())
            obs[rows] = robs
            info["frame_index"][rows] = 0
        self._autoreset = done if mode == AutoresetMode.NEXT_STEP else np.zeros(self.num_envs, dtype=bool)
        self._obs = obs
        return obs.copy(), rew, term, trunc, info

    def render(self) -> np.ndarray | None:  # type: ignore[override]
        if self.render_mode == "rgb_array":
            return self.core.session.frames.copy()
        return None


def vector_env_steps_per_second(
    world: str | Path | WorldModel, num_envs: int, steps: int = 50, warmup: int = 5
) -> float:
    """VectorEnv steps/s (env steps, i.e. num_envs per call) with random actions; for ``worldsim bench``."""
    env = WorldVectorEnv(world, num_envs=num_envs)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(warmup):
        env.step(env.action_space.sample())
    t = time.perf_counter()
    for _ in range(steps):
        env.step(env.action_space.sample())
    return steps * num_envs / (time.perf_counter() - t)
