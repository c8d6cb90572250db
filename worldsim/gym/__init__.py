"""The Gymnasium surface: ``WorldEnv``, ``WorldVectorEnv``, registration, an SB3 adapter.

    import gymnasium as gym, worldsim                 # importing worldsim registers the bundled worlds
    env = gym.make("worldsim/CartPole-v0")
    envs = gym.make_vec("worldsim/CartPole-v0", num_envs=16, vectorization_mode="vector_entry_point")
    env = worldsim.gym.make_env("my_world.safetensors")        # your own checkpoint
    sb3_env = worldsim.gym.to_sb3(worldsim.gym.make_vec_env("my_world.safetensors", 16))
    ensemble = worldsim.gym.concat_sb3([to_sb3(v) for v in vector_envs])  # rows over several worlds

Training agents in the dream (SB3): :mod:`worldsim.gym.ensemble` (rows over several worlds),
:mod:`worldsim.gym.symmetric` (``MirrorPolicy`` for mirror-symmetric games) and
:mod:`worldsim.gym.dream` (read states as observations, dream episode ends on the read state,
unbiased dream returns, keeping the snapshot that does best in a held-out world).

Attributes are imported lazily, so that ``import worldsim`` (which registers the envs through
:mod:`worldsim.gym.registration`) never imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldsim.gym.ensemble import concat_sb3
    from worldsim.gym.env import WorldEnv
    from worldsim.gym.sb3 import to_sb3
    from worldsim.gym.vector import WorldVectorEnv, vector_env_steps_per_second

__all__ = [
    "WorldEnv",
    "WorldVectorEnv",
    "concat_sb3",
    "make_env",
    "make_vec_env",
    "register_world",
    "to_sb3",
    "vector_env_steps_per_second",
]


def make_env(world: str | Path | Any, **kwargs: Any) -> WorldEnv:
    """A :class:`WorldEnv` for a checkpoint path, a bundled world's name or a loaded WorldModel.

    ``kwargs``: ``render_mode``, ``max_episode_steps``, ``channels_first``, ``latency_in_info``,
    ``device``, ``dtype``.
    """
    from worldsim.gym.env import WorldEnv

    return WorldEnv(world, **kwargs)


def make_vec_env(world: str | Path | Any, num_envs: int, **kwargs: Any) -> WorldVectorEnv:
    """A :class:`WorldVectorEnv` of ``num_envs`` rows (``autoreset_mode`` and the WorldEnv kwargs)."""
    from worldsim.gym.vector import WorldVectorEnv

    return WorldVectorEnv(world, num_envs=num_envs, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "WorldEnv":
        from worldsim.gym.env import WorldEnv

        return WorldEnv
    if name in ("WorldVectorEnv", "vector_env_steps_per_second"):
        from worldsim.gym import vector

        return getattr(vector, name)
    if name == "to_sb3":
        from worldsim.gym.sb3 import to_sb3

        return to_sb3
    if name == "concat_sb3":
        from worldsim.gym.ensemble import concat_sb3

        return concat_sb3
    if name == "register_world":
        from worldsim.gym.registration import register_world

        return register_world
    raise AttributeError(f"module 'worldsim.gym' has no attribute {name!r}")
