"""Register the bundled worlds with Gymnasium on ``import worldsim``.

Gymnasium 1.x has no plugin entry points, so ``import worldsim`` calls :func:`register_envs`.
Registration is cheap: no torch import, no checkpoint read; a missing checkpoint is reported
when the env is made.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def make_single(world: str, **kwargs: Any) -> Any:
    from worldsim.gym.env import WorldEnv

    return WorldEnv(world, **kwargs)


def make_vector(world: str, num_envs: int = 1, **kwargs: Any) -> Any:
    from worldsim.gym.vector import WorldVectorEnv

    if kwargs.get("max_episode_steps") is None:
        kwargs.pop("max_episode_steps", None)
    return WorldVectorEnv(world, num_envs=num_envs, **kwargs)


def register_world(env_id: str, world: str, max_episode_steps: int | None = None) -> None:
    """Register ``env_id`` for a bundled world name or a checkpoint path."""
    import gymnasium as gym

    if env_id in gym.registry:
        return
    gym.register(
        id=env_id,
        entry_point="worldsim.gym.registration:make_single",
        vector_entry_point="worldsim.gym.registration:make_vector",
        kwargs={"world": world, "max_episode_steps": max_episode_steps},
        # The env truncates itself (its core counts steps), so no TimeLimit wrapper on top.
        max_episode_steps=None,
        disable_env_checker=False,
    )


def register_envs() -> None:
    try:
        from worldsim.worlds import get_world, list_worlds

        for name in list_worlds():
            w = get_world(name)
            if w.gym_id:
                register_world(w.gym_id, name, w.max_episode_steps)
    except Exception as e:  # never break `import worldsim`
        log.warning("could not register the bundled worlds with gymnasium: %s", e)
