"""``worldsim play``: a neural game in a pygame window.

    worldsim play                                   # cartpole, local engine, keyboard
    worldsim play cartpole --compare                # the real game beside it: same keys, lock step
    worldsim play runs/cartpole/student.safetensors --zoom 8 --smooth
    worldsim play --remote localhost:50051          # the world served by `worldsim serve` (name it if several)
    worldsim play runs/pendulum/self-forcing/world.safetensors --keys a=0-,d=0+ --key-magnitude 0.5
    worldsim play cartpole --headless --frames 300 --record out.mp4 --screenshot shot.png

In the window: the world's keys play (``--keys`` / ``--idle`` / ``--key-magnitude``, else the
controls stored in the world file at train time, else :func:`worldsim.keys.default_keymap`); R resets, P pauses, H toggles the HUD, F1 lists the keys,
F12 saves a screenshot, V starts/stops recording, ESC quits.

Layout: ``game.py`` (PlayerCore: actions in, frames out, both games in lock step, recording; no
window), ``hud.py``, ``recorder.py`` (GIF/MP4), ``app.py`` (the thin pygame front end and the
headless loop); held keys -> action is :mod:`worldsim.keys`, shared with human recording.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.display import has_display

__all__ = ["Setup", "add_arguments", "build", "load_actions", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "world",
        nargs="?",
        default=None,
        help="bundled world name or checkpoint path (default: cartpole; with --remote the server's only world)",
    )
    parser.add_argument("--remote", default=None, metavar="HOST:PORT", help="play a world served by `worldsim serve`")
    parser.add_argument("--token", default=None, help="bearer token for --remote")
    parser.add_argument("--device", default="cpu", help="torch device of the local engine (default: cpu)")
    parser.add_argument(
        "--no-compile", action="store_true", help="run the step eager, without torch.compile (also: WORLDSIM_COMPILE=0)"
    )
    parser.add_argument("--zoom", type=int, default=6, metavar="N", help="integer scale of the frames (default: 6)")
    parser.add_argument("--smooth", action="store_true", help="smooth scaling instead of nearest neighbour")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="seed of the first episode")
    parser.add_argument(
        "--fps", type=float, default=None, metavar="F", help="pace (default: the world's fps; 0: as fast as it goes)"
    )
    parser.add_argument("--compare", action="store_true", help="show the real game beside the neural one")
    parser.add_argument(
        "--game",
        default=None,
        metavar="NAME",
        help="bundled world whose keys and real game to use (default: the one the world is named after)",
    )
    parser.add_argument(
        "--keys",
        default=None,
        metavar="MAP",
        help="key map: KEY=ACTION,... (Discrete left=0,right=2; Box a=0-,d=0+ moves axis 0; MultiDiscrete q=1:2) "
        "or a JSON object (default: the world file's, else arrows then digits)",
    )
    parser.add_argument(
        "--idle", default=None, metavar="ACTION", help="action with no key held, e.g. 1 or [0.0] (default: see docs)"
    )
    parser.add_argument(
        "--key-magnitude",
        type=float,
        default=None,
        metavar="M",
        help="Box worlds: how far a key pushes its axis from idle towards the bound, in (0, 1] (default 1)",
    )
    parser.add_argument("--no-hud", action="store_true", help="start with the HUD hidden (H toggles it)")
    parser.add_argument("--out-dir", type=Path, default=Path("."), help="where F12 screenshots and V videos go")
    parser.add_argument(
        "--video-format", choices=("mp4", "gif"), default=None, help="format of V recordings (default: mp4 if possible)"
    )
    g = parser.add_argument_group("headless (no window: scripted play to a video)")
    g.add_argument("--headless", action="store_true", help="play without a window")
    g.add_argument(
        "--frames", type=int, default=None, metavar="N", help="frames to play (default: 300, or all --actions)"
    )
    g.add_argument("--actions", type=Path, default=None, metavar="FILE", help="actions to play (.npy, .json or .txt)")
    g.add_argument(
        "--policy",
        choices=("sticky", "random", "scripted"),
        default="sticky",
        help="without --actions: seeded random actions held a few frames (sticky), or the world's "
        "scripted controller on the real game (scripted, needs --compare)",
    )
    g.add_argument("--record", type=Path, default=None, metavar="VIDEO", help="write the play to .mp4 or .gif")
    g.add_argument("--screenshot", type=Path, default=None, metavar="PNG", help="save the last frame, HUD included")


# ---------------------------------------------------------------------------- setup
@dataclass
class Setup:
    """What ``build`` makes from the command line: the core and how to drive it."""

    core: Any  # PlayerCore
    keymap: dict[str, Any]
    default_action: Any
    fps: float
    title: str
    world_def: Any = None  # the bundled WorldDef, when there is one
    magnitude: float = 1.0  # Box worlds: how far a key pushes its axis


def _world_def(*names: str | None) -> Any:
    from worldsim.worlds import get_world, list_worlds

    try:
        bundled = list_worlds()
    except FileNotFoundError:
        return None
    for n in names:
        if n and n in bundled:
            return get_world(n)
    return None


def build(args: argparse.Namespace, world_def: Any = None) -> Setup:
    """The engine (local or remote), the real game if ``--compare``, and the world's keys.

    ``world_def``: a WorldDef-like object to use instead of looking one up by name.
    """
    from worldsim.keys import controls_for
    from worldsim.play.game import CompareGame, LocalBackend, PlayerCore, RemoteBackend

    if args.remote:
        from worldsim.client import RemoteWorld

        try:
            backend: Any = RemoteBackend(RemoteWorld(args.remote, args.world, token=args.token, seed=args.seed))
        except Exception as e:  # RemoteError and friends: say what failed, without a traceback
            what = f"world {args.world!r}" if args.world else "the served world"
            raise ConnectionError(f"cannot open {what} at {args.remote}: {e}") from e
    else:
        from worldsim.engine.world import WorldModel
        from worldsim.worlds import world_path

        args.world = args.world or "cartpole"
        compile = False if getattr(args, "no_compile", False) else None
        world = WorldModel.load(world_path(args.world), device=args.device, compile=compile)
        backend = LocalBackend(world, seed=args.seed)
        warm_up(backend.session, str(world.config.name))
    real = None
    try:
        if world_def is not None:
            wd = world_def
        elif getattr(args, "game", None):
            from worldsim.worlds import get_world

            wd = get_world(args.game)
        else:
            wd = _world_def(args.world, backend.name)
        if args.compare:
            if wd is None:
                raise ValueError(
                    f"--compare needs a bundled world (its definition names the real game); {args.world!r} is not one"
                )
            real = CompareGame(wd, size=backend.image_size, action_spec=backend.spec)
        spec = backend.spec
        stored = backend.world.config.controls if not args.remote else None
        ctl = controls_for(
            spec,
            stored,
            wd,
            getattr(args, "keys", None),
            getattr(args, "idle", None),
            getattr(args, "key_magnitude", None),
        )
        default = ctl["idle"]
        core = PlayerCore(backend, real=real, default_action=default, seed=args.seed)
    except BaseException:
        backend.close()
        if real is not None:
            real.close()
        raise
    fps = backend.fps if args.fps is None else float(args.fps)
    return Setup(core, ctl["keymap"], default, fps, backend.name, wd, ctl["magnitude"])


def warm_up(session: Any, name: str) -> None:
    """Compile the world's step before the first frame (``Session.warmup``), counting the seconds on
    stderr while it runs: the first run on a machine pays the C++ compile, later ones reuse it."""
    if session.world.compiled is None:
        return
    done, t0 = threading.Event(), time.perf_counter()

    def tick() -> None:
        while not done.wait(1.0):
            print(
                f"\rworldsim play: compiling {name} for this CPU: {time.perf_counter() - t0:.0f} s "
                "(cached for the next run; --no-compile skips it)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        secs = session.warmup()
    finally:
        done.set()
        ticker.join()
    if secs >= 1.0:
        print(f"\rworldsim play: compiled {name} in {secs:.0f} s" + " " * 50, file=sys.stderr)


def load_actions(path: Path, spec: Any) -> list[Any]:
    """Actions from a file: ``.npy`` (T,) or (T, n); ``.json`` a list; ``.txt`` numbers (Discrete:
    separated by spaces, commas or newlines; other spaces: one action per line). ``#`` comments."""
    if path.suffix == ".npy":
        arr = np.load(path)
    elif path.suffix == ".json":
        arr = np.asarray(json.loads(path.read_text()))
    else:
        rows = [ln.split("#")[0].replace(",", " ").split() for ln in path.read_text().splitlines()]
        rows = [r for r in rows if r]
        if spec.kind == "discrete":
            arr = np.asarray([float(x) for r in rows for x in r])
        else:
            arr = np.asarray([[float(x) for x in r] for r in rows])
    if len(arr) == 0:
        raise ValueError(f"{path}: no actions")
    return list(spec.validate(arr))


def action_source(args: argparse.Namespace, setup: Setup) -> tuple[Callable[[Any], Any], int]:
    """(core -> next action, number of frames) for headless play."""
    core, spec = setup.core, setup.core.backend.spec
    seed = 0 if args.seed is None else args.seed
    if args.actions is not None:
        actions = load_actions(args.actions, spec)
        n = len(actions) if args.frames is None else min(args.frames, len(actions))
        it = iter(actions)
        return (lambda core: next(it)), n
    n = 300 if args.frames is None else args.frames
    if args.policy == "scripted":
        if core.real is None:
            raise ValueError("--policy scripted plays the real game's controller: it needs --compare")
        from worldsim.data.policies import make_policy

        policy = make_policy("scripted", core.real.env, np.random.default_rng(seed), setup.world_def)
        return (lambda core: policy(core.real.env, core.state.real_frame)), n
    space = spec.to_space()
    space.seed(seed)
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {"left": 0, "action": None}

    def sample(core: Any) -> Any:
        if args.policy == "random":
            return space.sample()
        if state["left"] <= 0:
            state["action"], state["left"] = space.sample(), int(rng.geometric(1 / 6))
        state["left"] -= 1
        return state["action"]

    return sample, n


# ---------------------------------------------------------------------------- main
def _no_display(args: argparse.Namespace, why: str = "") -> int:
    import importlib.util

    from worldsim.play.recorder import default_video_suffix

    reason = f" ({why.strip()})" if why.strip() else ""
    needs = "" if importlib.util.find_spec("imageio") else " (after pip install 'worldsim[video]')"
    print(
        f"worldsim play: no display here, SDL cannot open a window{reason}; play headless instead{needs}: "
        f"worldsim play {args.world or ''} --headless --frames 300 --record out{default_video_suffix()}",
        file=sys.stderr,
    )
    return 1


def main(args: argparse.Namespace) -> int:
    from worldsim.play.recorder import RecorderError, check_video_path

    def fail(msg: str) -> int:
        print(f"worldsim play: {msg}", file=sys.stderr)
        return 2

    if args.zoom < 1:
        return fail("--zoom must be >= 1")
    if args.headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
        if args.seed is None:
            args.seed = 0  # headless runs are reproducible unless asked otherwise
    elif not has_display():
        return _no_display(args)
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        if args.record is not None:
            check_video_path(args.record)
        if args.video_format is not None:
            check_video_path(f"out.{args.video_format}")
        if args.screenshot is not None and args.screenshot.suffix.lower() != ".png":
            raise ValueError(f"--screenshot writes a PNG, not {args.screenshot.name}")
        if args.actions is not None and not args.headless:
            raise ValueError("--actions plays headless: add --headless")
        setup = build(args)
    except (RecorderError, ValueError, KeyError, OSError) as e:
        return fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))  # KeyError str() adds quotes

    from worldsim.keys import KeyTracker
    from worldsim.play.app import NoDisplay, PlayerApp

    core = setup.core
    try:
        keys = KeyTracker(setup.keymap, core.backend.spec, setup.default_action, setup.magnitude)
        suffix = None if args.video_format is None else "." + args.video_format
        app = PlayerApp(
            core, keys, setup.fps, args.zoom, args.smooth, video_suffix=suffix, out_dir=args.out_dir, title=setup.title
        )
    except NoDisplay as e:
        core.close()
        return _no_display(args, str(e))
    except ValueError as e:
        core.close()
        return fail(str(e))
    app.show_hud = not args.no_hud
    try:
        if args.headless:
            try:
                next_action, n = action_source(args, setup)
            except ValueError as e:
                return fail(str(e))
            source = "actions file" if args.actions is not None else args.policy
            out = app.run_headless(next_action, n, args.record, args.screenshot, source)
            done = [str(p) for p in (out, args.screenshot) if p is not None]
            print(f"played {n} frames of {setup.title}" + (f": wrote {', '.join(done)}" if done else ""))
        else:
            if args.record is not None:
                app.toggle_recording(args.record)
            app.run()
            if args.screenshot is not None:
                app.screenshot(args.screenshot)
    finally:
        app.close()
    return 0
