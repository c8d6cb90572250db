"""Bundled worlds: what real game each one learns, how to record it, how to play it.

Each bundled world lives in ``envs/<name>/`` (installed as ``worldsim/envs/<name>/`` in a
wheel): an ``__init__.py`` that defines ``WORLD = WorldDef(...)``, the trained checkpoint
``<name>.safetensors`` and a card ``README.md`` with its measured numbers.

``worldsim worlds`` lists them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from worldsim.data.policies import Exploration


@dataclass(frozen=True)
class RecordRecipe:
    """How ``worldsim record <world>`` makes the world's data set, reproducibly."""

    policies: tuple[tuple[str, float], ...] = (("random", 1.0),)
    """(policy name, share of episodes) pairs; shares sum to 1."""
    episodes: int = 200
    """Episodes recorded in total."""
    seed: int = 0
    """Seed of the first episode; episode i uses seed + i."""
    max_episode_steps: int = 500
    """Episodes are truncated after this many steps."""
    explore: Exploration = field(default_factory=Exploration)
    """State-independent exploration mixed into every policy, so the data teaches what actions do."""


@dataclass(frozen=True)
class WorldDef:
    """The definition of one bundled world."""

    name: str
    """Short name used on the command line: ``worldsim play cartpole``."""
    env_id: str
    """The real game's Gymnasium id."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra kwargs for ``gymnasium.make`` (frameskip, repeat_action_probability, ...)."""
    fps: int = 15
    """Frames per second the world is played at."""
    frameskip: int = 1
    """Real env steps per recorded frame (the action is repeated, rewards summed)."""
    crop: tuple[int, int, int, int] | None = None
    """(top, bottom, left, right) crop of the rendered frame before the 64x64 area resize."""
    keymap: dict[str, Any] = field(default_factory=dict)
    """pygame key name -> action (int for Discrete; bit index for MultiBinary)."""
    default_action: Any = 0
    """The action sent when no mapped key is held."""
    record: RecordRecipe = field(default_factory=RecordRecipe)
    """The recording recipe."""
    gym_id: str = ""
    """Id registered for the neural world, e.g. ``worldsim/CartPole-v0``."""
    max_episode_steps: int = 500
    """Truncation for the neural world's Gymnasium env."""
    state_reader: Callable[[np.ndarray], np.ndarray] | None = None
    """frames (T, 64, 64, 3) uint8 -> state (T, K) float, read off the pixels."""
    state_names: tuple[str, ...] = ()
    """Names of the K state components the reader returns."""
    state_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Range of each state component that the data should cover (for the data diagnostic)."""
    true_state: Callable[[Any], np.ndarray] | None = None
    """real env -> the same K state components from the game's internals (for checking readers)."""
    state_done: Callable[[np.ndarray], np.ndarray] | None = None
    """states (T, K) from the reader -> (T,) bool: the real game ends there (its bounds), e.g.
    CartPole's |x| > 2.4 or |angle| > 0.2095; control fidelity ends world episodes with it."""
    controllers: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    """Closed-loop controllers on the reader's state, by name: (B, 2, K) read states (the previous
    frame's, this frame's; NaN where unreadable) -> (B,) actions. ``worldsim eval`` plays each in the
    real game and in the world and compares episode lengths (:mod:`worldsim.eval.closed_loop`)."""
    train: dict[str, Any] = field(default_factory=dict)
    """Per-stage config overrides for ``worldsim train`` (``{"codec": {...}, "teacher": {...}}``)."""
    directory: Path = Path(".")
    """Where the definition, the checkpoint and the card live (filled in by the loader)."""

    @property
    def checkpoint(self) -> Path:
        return self.directory / f"{self.name}.safetensors"

    def frames_done(self, frames: np.ndarray) -> np.ndarray:
        """frames (N, 64, 64, 3) uint8 -> (N,) bool: ``state_done`` on the state read off each frame.

        An episode-end rule for the neural world's Gymnasium envs (``end_rule=``), the one
        ``worldsim eval`` already ends world episodes with: the game's published bounds applied to
        the dreamed frames (as MBPO gives its model rollouts the environment's known termination
        function). Raises ``ValueError`` when the world has no ``state_reader`` / ``state_done``."""
        if self.state_reader is None or self.state_done is None:
            raise ValueError(f"{self.name} has no state_reader and state_done: it has no end rule on frames")
        return np.asarray(self.state_done(np.asarray(self.state_reader(frames))), bool)

    def make_env(self, **kwargs: Any) -> Any:
        """The real game, rendering ``rgb_array`` (``kwargs`` over ``env_kwargs``; the env's own time
        limit): :func:`worldsim.real.make_env`, the one place a real env is made."""
        from worldsim.real import GameSpec, make_env

        return make_env(GameSpec(self.env_id, {**self.env_kwargs, **kwargs}, max_steps=None))


def envs_dir() -> Path:
    """The folder holding the bundled worlds (source checkout or installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "envs", here.parent / "envs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no bundled worlds folder found next to {here}")


def _load_module(name: str, directory: Path) -> ModuleType:
    mod_name = f"worldsim.envs.{name}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(
        mod_name, directory / "__init__.py", submodule_search_locations=[str(directory)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load world definition from {directory}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    return module


def list_worlds() -> list[str]:
    """Names of the bundled worlds."""
    root = envs_dir()
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_"))


def get_world(name: str) -> WorldDef:
    """The definition of a bundled world, by name (``cartpole``)."""
    names = list_worlds()
    if name not in names:
        raise KeyError(f"unknown world {name!r}; bundled worlds: {', '.join(names)}")
    directory = envs_dir() / name
    world: WorldDef = _load_module(name, directory).WORLD
    return WorldDef(**{**world.__dict__, "directory": directory})


def world_path(name_or_path: str | Path) -> Path:
    """A checkpoint path from a bundled world's name or a path to a ``.safetensors`` file."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"no checkpoint at {p}")
        return p
    world = get_world(str(name_or_path))
    if not world.checkpoint.exists():
        raise FileNotFoundError(
            f"world {world.name!r} has no trained checkpoint at {world.checkpoint}; "
            f"train one with `worldsim train {world.name}`"
        )
    return world.checkpoint


# ---------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(args: argparse.Namespace) -> int:
    import json

    rows = []
    for name in list_worlds():
        w = get_world(name)
        ckpt = w.checkpoint
        rows.append(
            {
                "name": name,
                "env_id": w.env_id,
                "gym_id": w.gym_id,
                "fps": w.fps,
                "checkpoint": str(ckpt) if ckpt.exists() else None,
                "size_mb": round(ckpt.stat().st_size / 2**20, 2) if ckpt.exists() else None,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'world':<12}{'real game':<28}{'gym id':<28}{'fps':>4}  checkpoint")
    for r in rows:
        ck = f"{r['checkpoint']} ({r['size_mb']} MB)" if r["checkpoint"] else "(not trained)"
        print(f"{r['name']:<12}{r['env_id']:<28}{r['gym_id']:<28}{r['fps']:>4}  {ck}")
    return 0
