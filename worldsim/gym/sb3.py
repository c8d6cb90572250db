"""A Stable-Baselines3 ``VecEnv`` over :class:`WorldVectorEnv` (one batched engine call per step).

SB3 auto-resets in the same step and expects the last observation of an ended episode in
``infos[i]["terminal_observation"]`` and time-limit ends flagged ``"TimeLimit.truncated"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worldsim.gym.vector import WorldVectorEnv


def to_sb3(env: WorldVectorEnv) -> Any:
    """Wrap a :class:`WorldVectorEnv` (SAME_STEP or NEXT_STEP) as an SB3 ``VecEnv``."""
    try:
        from stable_baselines3.common.vec_env import VecEnv
    except ImportError as e:
        raise ImportError("Stable-Baselines3 is not installed: pip install 'worldsim[sb3]'") from e

    from gymnasium.vector import AutoresetMode

    class WorldSB3VecEnv(VecEnv):  # type: ignore[misc]
        def __init__(self, venv: WorldVectorEnv) -> None:
            venv.metadata["autoreset_mode"] = AutoresetMode.SAME_STEP
            self.venv = venv
            super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
            self._actions: Any = None
            self._seeds: list[int | None] = [None] * venv.num_envs

        def reset(self) -> np.ndarray:
            seeds = self._seeds if any(s is not None for s in self._seeds) else None
            obs, _ = self.venv.reset(seed=seeds)
            self._seeds = [None] * self.num_envs
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = actions

        def step_wait(self) -> Any:
            obs, rew, term, trunc, info = self.venv.step(self._actions)
            infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
            for i in range(self.num_envs):
                if term[i] or trunc[i]:
                    infos[i]["terminal_observation"] = info["final_obs"][i]
                    infos[i]["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
            return obs, rew.astype(np.float32), (term | trunc), infos

        def seed(self, seed: int | None = None) -> list[int | None]:
            self._seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
            return self._seeds

        def close(self) -> None:
            self.venv.close()

        def get_images(self) -> list[np.ndarray]:
            return list(self.venv.core.session.frames.copy())

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            return [getattr(self.venv, attr_name)] * len(self._idx(indices))

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            setattr(self.venv, attr_name, value)

        def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
            return [getattr(self.venv, method_name)(*args, **kwargs)] * len(self._idx(indices))

        def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
            return [False] * len(self._idx(indices))

        def _idx(self, indices: Any) -> list[int]:
            if indices is None:
                return list(range(self.num_envs))
            return [indices] if isinstance(indices, int) else list(indices)

    return WorldSB3VecEnv(env)
