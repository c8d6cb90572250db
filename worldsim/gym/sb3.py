"""A Stable-Baselines3 ``VecEnv`` over :class:`~worldsim.gym.WorldVectorEnv` (one batched engine call per step).

    from stable_baselines3 import PPO
    vec = to_sb3(WorldVectorEnv("cartpole", num_envs=16))
    PPO("CnnPolicy", vec).learn(10_000)

SB3's conventions, handled here: episodes restart in the same step (the wrapped env is switched
to ``SAME_STEP``) with the last observation in ``infos[i]["terminal_observation"]``; every info
has ``"TimeLimit.truncated"`` (ended by ``max_episode_steps``, not by the world); ``dones`` is
``terminated | truncated``; the info of a row whose episode ended has SB3's ``"episode"``
statistics (``{"r": return, "l": length, "t": seconds}``, what its ``Monitor`` writes, kept by
:class:`worldsim.episodes.EpisodeTracker`), so SB3 logs ``ep_rew_mean`` / ``ep_len_mean``
without a ``VecMonitor``; rewards are float32; observations stay uint8 images. Channel order:
with the default channel-last observations SB3 wraps the env in ``VecTransposeImage`` itself
for ``CnnPolicy``; build the vector env with ``channels_first=True`` to skip that (for example
under ``VecFrameStack(..., channels_order="first")``). Seeds set with ``vec.seed(s)`` (row ``i``
gets ``s + i``) and ``vec.set_options(...)`` apply at the next ``reset()``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from worldsim.gym.core import StepCore
from worldsim.gym.vector import WorldVectorEnv

INSTALL_HINT = "Stable-Baselines3 is not installed: pip install 'worldsim[sb3]'"


def to_sb3(env: WorldVectorEnv) -> Any:
    """Wrap a :class:`WorldVectorEnv` as an SB3 ``VecEnv`` (switches it to ``SAME_STEP`` autoreset)."""
    try:
        from stable_baselines3.common.vec_env import VecEnv
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    if not isinstance(env, WorldVectorEnv):
        raise TypeError(f"to_sb3 expects a WorldVectorEnv, got {type(env).__name__}")

    class WorldSB3VecEnv(VecEnv):  # type: ignore[misc]
        """SB3 view of a WorldVectorEnv; ``.venv`` is the wrapped Gymnasium vector env."""

        def __init__(self, venv: WorldVectorEnv) -> None:
            venv.set_autoreset_mode(AutoresetMode.SAME_STEP)
            self.venv = venv
            super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
            self._actions: np.ndarray | None = None

        def reset(self) -> np.ndarray:
            options = self._options[0] if all(o == self._options[0] for o in self._options) else None
            if options is None:
                raise ValueError("WorldSB3VecEnv.set_options: pass one dict for all envs")
            obs, info = self.venv.reset(seed=list(self._seeds), options=options or None)
            self.reset_infos = [StepCore.row_info(info, i) for i in range(self.num_envs)]
            self._reset_seeds()
            self._reset_options()
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions)

        def step_wait(self) -> Any:
            if self._actions is None:
                raise RuntimeError("step_async() must be called before step_wait()")
            obs, rew, term, trunc, info = self.venv.step(self._actions)
            self._actions = None
            done = term | trunc
            final_info = info.get("final_info", {})
            infos: list[dict[str, Any]] = []
            for i in range(self.num_envs):
                if done[i]:  # the step's own info is the new episode's: report the ended one's
                    row = StepCore.row_info(final_info, i)
                    row["terminal_observation"] = info["final_obs"][i]
                    row["episode"] = dict(self.venv.core.ended[i])
                    self.reset_infos[i] = StepCore.row_info(info, i)
                else:
                    row = StepCore.row_info(info, i)
                row["TimeLimit.truncated"] = bool(trunc[i] and not term[i])
                infos.append(row)
            return obs, rew.astype(np.float32), done, infos

        def close(self) -> None:
            self.venv.close()

        def get_images(self) -> list[np.ndarray]:
            return list(self.venv.core.session.frames.copy())

        # The rows share one env object: attributes and methods are the vector env's.
        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            return [getattr(self.venv, attr_name)] * len(self._idx(indices))

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            setattr(self.venv, attr_name, value)

        def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
            return [getattr(self.venv, method_name)(*args, **kwargs)] * len(self._idx(indices))

        def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
            return [isinstance(self.venv, wrapper_class)] * len(self._idx(indices))

        def _idx(self, indices: Any) -> list[int]:
            if indices is None:
                return list(range(self.num_envs))
            return [int(indices)] if isinstance(indices, (int, np.integer)) else list(indices)

    return WorldSB3VecEnv(env)


__all__ = ["to_sb3", "INSTALL_HINT"]
