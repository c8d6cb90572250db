"""worldsim: turn a game into a neural world.

A small causal video diffusion model, trained with Self Forcing, predicts the next frame from
the frames so far and the player's action. The same engine serves a pygame window, Gymnasium
envs and a gRPC service.

    >>> import worldsim
    >>> world = worldsim.WorldModel.load(worldsim.world_path("cartpole"))
    >>> session = world.session(batch=1, seed=0)
    >>> frames = session.reset()                    # (1, 64, 64, 3) uint8
    >>> out = session.step([1])                     # out.frames, out.rewards, out.terminated
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["WorldModel", "Session", "world_path", "list_worlds", "make_env", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import worldsim` stays cheap (no torch import)
    if name in ("WorldModel", "Session"):
        from worldsim import engine

        return getattr(engine, name)
    if name in ("world_path", "list_worlds", "get_world"):
        from worldsim import worlds

        return getattr(worlds, name)
    if name == "make_env":
        from worldsim.gym import make_env

        return make_env
    raise AttributeError(f"module 'worldsim' has no attribute {name!r}")


def _register_envs() -> None:
    try:
        from worldsim.gym.registration import register_envs
    except ImportError:  # the gym surface is not built yet / gymnasium missing
        return
    register_envs()


_register_envs()
