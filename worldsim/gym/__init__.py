"""The Gymnasium surface: ``WorldEnv``, ``WorldVectorEnv``, registration, an SB3 adapter.

import gymnasium as gym, worldsim
env = gym.make("worldsim/CartPole-v0")
envs = gym.make_vec("worldsim/CartPole-v0", num_envs=16, vectorization_mode="vector_entry_point")
env = worldsim.make_env("my_world.safetensors")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worldsim.gym.env import WorldEnv
from worldsim.gym.sb3 import to_sb3
from worldsim.gym.vector import WorldVectorEnv, vector_env_steps_per_second


def make_env(world: str | Path | Any, **kwargs: Any) -> WorldEnv:
    """A :class:`WorldEnv` for a bundled world name, a checkpoint path or a loaded WorldModel."""
    return WorldEnv(world, **kwargs)


def make_vec_env(world: str | Path | Any, num_envs: int, **kwargs: Any) -> WorldVectorEnv:
    """A :class:`WorldVectorEnv` of ``num_envs`` rows."""
    return WorldVectorEnv(world, num_envs=num_envs, **kwargs)


__all__ = ["WorldEnv", "WorldVectorEnv", "make_env", "make_vec_env", "to_sb3", "vector_env_steps_per_second"]
