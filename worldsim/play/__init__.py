"""``worldsim play``: a neural game in a pygame window.

worldsim play cartpole                 # local engine, keyboard
worldsim play cartpole --compare       # the real game beside it, same keys, lock step
worldsim play cartpole --remote localhost:50051
worldsim play cartpole --headless --frames 300 --record out.gif --screenshot shot.png
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("world", nargs="?", default="cartpole", help="bundled world name or checkpoint path")
    parser.add_argument("--remote", default=None, metavar="HOST:PORT", help="play a world served by `worldsim serve`")
    parser.add_argument("--token", default=None, help="bearer token for --remote")
    parser.add_argument("--zoom", type=int, default=6, help="integer scale of the 64x64 frames")
    parser.add_argument("--smooth", action="store_true", help="smooth instead of nearest-neighbour scaling")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--fps", type=int, default=None, help="pace (default: the world's fps)")
    parser.add_argument("--compare", action="store_true", help="show the real game beside the neural one")
    parser.add_argument("--headless", action="store_true", help="no window: play scripted/random actions")
    parser.add_argument("--frames", type=int, default=300, help="headless: frames to play")
    parser.add_argument("--actions", type=Path, default=None, help="headless: actions file (.npy, .json or .txt)")
    parser.add_argument("--record", type=Path, default=None, help="headless: write the video here (.gif or .mp4)")
    parser.add_argument("--screenshot", type=Path, default=None, help="headless: write the last frame (PNG) here")
    parser.add_argument("--video-format", choices=("gif", "mp4"), default="gif", help="format of V recordings")
    parser.add_argument("--device", default="cpu")


def load_actions(path: Path) -> list[Any]:
    if path.suffix == ".npy":
        return list(np.load(path))
    import json

    text = path.read_text()
    return list(json.loads(text)) if path.suffix == ".json" else [int(x) for x in text.split()]


def scripted_actions(spec: Any, n: int, seed: int, default_action: Any) -> list[Any]:
    """Sticky random actions (held for a few frames, like a player)."""
    space = spec.to_space()
    space.seed(seed)
    rng = np.random.default_rng(seed)
    out: list[Any] = []
    while len(out) < n:
        a = space.sample()
        out += [a] * int(rng.integers(1, 6))
    return out[:n]


def build(args: argparse.Namespace) -> tuple[Any, Any, Any, int]:
    """(PlayerCore, KeyTracker-args, world definition or None, fps) for the CLI or tests."""
    from worldsim.play.game import LocalBackend, PlayerCore, RealGame, RemoteBackend
    from worldsim.worlds import get_world, list_worlds

    wd = get_world(args.world) if args.world in list_worlds() else None
    if args.remote:
        backend: Any = RemoteBackend(args.remote, wd.name if wd else args.world, seed=args.seed, token=args.token)
    else:
        from worldsim.engine import WorldModel
        from worldsim.worlds import world_path

        backend = LocalBackend(WorldModel.load(world_path(args.world), device=args.device), seed=args.seed)
    real = None
    if args.compare:
        if wd is None:
            raise SystemExit("--compare needs a bundled world (it knows its real game)")
        real = RealGame(wd)
    default = wd.default_action if wd else 0
    core = PlayerCore(backend, real=real, default_action=default, seed=args.seed)
    return core, (wd.keymap if wd else {}), default, args.fps or backend.fps


def main(args: argparse.Namespace) -> int:
    if args.headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    else:
        from worldsim.play.app import has_display

        if not has_display():
            print(
                "worldsim play: no display here; try `worldsim play "
                f"{args.world} --headless --frames 300 --record out.gif`",
                file=sys.stderr,
            )
            return 1
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from worldsim.play.app import PlayerApp
    from worldsim.play.keys import KeyTracker

    core, keymap, default, fps = build(args)
    import pygame

    pygame.init()
    spec = core.backend.spec
    keys = KeyTracker(keymap or _fallback_keymap(spec), spec, default)
    app = PlayerApp(core, keys, fps, zoom=args.zoom, smooth=args.smooth, video_suffix="." + args.video_format)
    try:
        if args.headless:
            acts = (
                load_actions(args.actions)
                if args.actions
                else scripted_actions(spec, args.frames, args.seed or 0, default)
            )
            app.run_headless(acts[: args.frames], args.record, args.screenshot)
        else:
            app.run()
    finally:
        app.close()
    return 0


def _fallback_keymap(spec: Any) -> dict[str, Any]:
    """Number keys for the first actions of a Discrete world without a key map."""
    if spec.kind == "discrete":
        return {str(i): i for i in range(min(spec.n, 10))}
    if spec.kind == "multi_binary":
        return {str(i): i for i in range(min(spec.n, 10))}
    return {}
