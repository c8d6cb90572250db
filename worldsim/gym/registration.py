"""Register the bundled worlds with Gymnasium on ``import worldsim``.

Gymnasium 1.x has no plugin entry points, so ``import worldsim`` calls :func:`register_envs`.
Registration is cheap: no torch import, no checkpoint read (entry points are strings, the world
is named, not loaded); a missing checkpoint is reported when the env is made.

Each bundled world's ``gym_id`` (``worldsim/CartPole-v0``) gets the single env as
``entry_point``, :class:`~worldsim.gym.WorldVectorEnv` as ``vector_entry_point`` and the
world's ``max_episode_steps`` (so ``gym.make`` adds Gymnasium's ``TimeLimit`` and
``gym.make(id, max_episode_steps=N)`` overrides it; the vector env counts steps itself).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ENTRY_POINT = "worldsim.gym.registration:make_single"
VECTOR_ENTRY_POINT = "worldsim.gym.registration:make_vector"


def make_single(world: str, **kwargs: Any) -> Any:
    """Entry point: a :class:`~worldsim.gym.WorldEnv`; the checkpoint is resolved here, at make time.

    The env counts no time limit itself (``max_episode_steps=0``): ``gym.make`` wraps it in
    ``TimeLimit`` with the registered (or the given) ``max_episode_steps``, which applies the
    same rule (:func:`worldsim.episodes.truncated`).
    """
    from worldsim.gym.env import WorldEnv

    kwargs.setdefault("max_episode_steps", 0)
    return WorldEnv(world, **kwargs)


def make_vector(world: str, num_envs: int = 1, **kwargs: Any) -> Any:
    """Vector entry point: a :class:`~worldsim.gym.WorldVectorEnv` of ``num_envs`` rows."""
    from worldsim.gym.vector import WorldVectorEnv

    return WorldVectorEnv(world, num_envs=num_envs, **kwargs)


def register_world(
    env_id: str | Path, world: str | Path | None = None, max_episode_steps: int | None = None, **kwargs: Any
) -> str:
    """Register ``env_id`` for a bundled world's name or a checkpoint path (not opened until made); returns the id.

        register_world("worldsim/MyGame-v0", "runs/mygame/world.safetensors")
        env_id = register_world("runs/pendulum/self-forcing/world.safetensors")   # "worldsim/pendulum-v0"
        env = gym.make(env_id)

    With one argument it is the world, and the id is ``worldsim/<name>-v0`` with the name the
    world was trained as (:func:`world_env_id`). ``max_episode_steps``: None is the default limit
    (a bundled world's, else 1000: :func:`worldsim.episodes.default_max_episode_steps`), 0 none.
    ``kwargs`` become default constructor arguments (``channels_first``, ``device``, ...).
    Registering an id again with different arguments replaces it.
    """
    if world is None:
        world, env_id = env_id, world_env_id(env_id)
    env_id = str(env_id)
    import gymnasium as gym

    from worldsim.episodes import resolve_max_episode_steps

    max_episode_steps = resolve_max_episode_steps(max_episode_steps, str(world)) or None

    env_kwargs = {"world": str(world), **kwargs}
    old = gym.registry.get(env_id)
    if old is not None:
        if old.kwargs == env_kwargs and old.max_episode_steps == max_episode_steps:
            return env_id
        del gym.registry[env_id]  # re-registration (e.g. a world pointed at a new checkpoint)
    gym.register(
        id=env_id,
        entry_point=ENTRY_POINT,
        vector_entry_point=VECTOR_ENTRY_POINT,
        kwargs=env_kwargs,
        max_episode_steps=max_episode_steps,
    )
    return env_id


def world_env_id(world: str | Path) -> str:
    """``worldsim/<name>-v0`` for a checkpoint (the name it was trained as, read from its header)
    or a bundled world's name."""
    from worldsim.worlds import list_worlds

    try:
        bundled = list_worlds()
    except FileNotFoundError:  # no envs/ folder (an odd install): only checkpoints
        bundled = []
    if str(world) in bundled and not str(world).endswith(".safetensors"):
        return f"worldsim/{world}-v0"
    import json

    from worldsim.checkpoint import read_header

    name = json.loads(read_header(world)["__metadata__"]["config"]).get("name") or Path(world).stem
    return f"worldsim/{name}-v0"


def register_envs() -> None:
    """Register every bundled world that has a ``gym_id``; never raises (``import worldsim`` must work)."""
    try:
        from worldsim.worlds import get_world, list_worlds

        for name in list_worlds():
            w = get_world(name)
            if w.gym_id:
                register_world(w.gym_id, name, w.max_episode_steps)
    except Exception as e:  # a broken world definition must not break `import worldsim`
        log.warning("could not register the bundled worlds with gymnasium: %s", e)
