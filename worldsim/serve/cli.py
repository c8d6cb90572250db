"""``worldsim serve``: neural worlds over gRPC.

    worldsim serve                          # every bundled world that has a checkpoint
    worldsim serve cartpole my.safetensors --port 50051 --token SECRET --tls-cert c.pem --tls-key k.pem
    worldsim serve runs/pendulum/self-forcing/world.safetensors car=runs/mountaincar/self-forcing/world.safetensors

Prints one JSON line ``{"port": ..., "host": ..., "worlds": [...]}`` once it listens (for scripts
that start it with ``--port 0``). A bad checkpoint, a bad flag value or a port in use ends it with
one line on stderr and exit code 2 (``worldsim.cli``); ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Any

from worldsim.engine.world import WorldModel
from worldsim.serve.server import ServeConfig, Server
from worldsim.threads import on_torch_thread

log = logging.getLogger(__name__)


def load_worlds(
    names: list[str], device: Any = None, verify: bool = True, compile: bool | None = None
) -> dict[str, WorldModel]:
    """Bundled world names, checkpoint paths or ``NAME=PATH`` -> {served name: world}; none: every
    trained bundled world. A checkpoint is served under the name it was trained as
    (``WorldConfig.name``; the file's stem for a world named the default ``world``)."""
    from worldsim.worlds import get_world, list_worlds, world_path

    bundled = list_worlds()
    if not names:
        names = [n for n in bundled if get_world(n).checkpoint.exists()]
        if not names:
            raise SystemExit("worldsim serve: no bundled world has a checkpoint yet; name a checkpoint file")
    out: dict[str, WorldModel] = {}
    paths: dict[str, Path] = {}
    for n in names:
        alias, sep, target = n.partition("=")
        if not sep:
            alias, target = "", n
        try:
            path = world_path(target)
        except (KeyError, FileNotFoundError) as e:
            raise SystemExit(f"worldsim serve: {e.args[0] if e.args else e}") from None
        world = WorldModel.load(path, device=device, verify=verify, compile=compile)
        trained = str(world.config.name)
        key = alias or (target if target in bundled else trained if trained != "world" else Path(target).stem)
        if key in out:
            raise SystemExit(
                f"worldsim serve: two worlds would be served as {key!r} ({paths[key]} and {path}); "
                f"serve one under another name with NAME=PATH, e.g. `worldsim serve {key}2={target}`"
            )
        out[key], paths[key] = world, path
        log.info("loaded %s from %s", key, path)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    parser.add_argument(
        "worlds",
        nargs="*",
        help="bundled world names, checkpoint paths (served under the name they were trained as) or NAME=PATH "
        "(default: all trained bundled worlds)",
    )
    parser.add_argument("--host", default=d.host, help="address to bind (0.0.0.0 for remote clients)")
    parser.add_argument("--port", type=int, default=d.port, help="port (0: any free one; printed at start)")
    parser.add_argument(
        "--max-sessions", type=int, default=d.max_sessions, help="sessions per world (the rows of its engine)"
    )
    parser.add_argument(
        "--max-sessions-per-client",
        type=int,
        default=d.max_sessions_per_client,
        help="sessions one client (by IP address) may hold at once over all worlds (0: no cap)",
    )
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout, help="close idle sessions (s, 0: never)")
    parser.add_argument("--rate-limit", type=float, default=d.rate_limit, help="max steps/s per session (0: none)")
    parser.add_argument("--window-ms", type=float, default=d.window_ms, help="micro-batching window (ms)")
    parser.add_argument("--token", default=None, help="require 'authorization: Bearer TOKEN' from clients")
    parser.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, default=None, help="PEM private key")
    parser.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, help="largest request")
    parser.add_argument("--grace", type=float, default=d.grace, help="shutdown grace period (s)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    parser.add_argument(
        "--no-compile", action="store_true", help="run the step eager, without torch.compile (also: WORLDSIM_COMPILE=0)"
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the checkpoints' SHA-256 and finite-weight checks (huge files)"
    )


def main(args: argparse.Namespace) -> int:
    cfg = ServeConfig(  # checks every value first: a bad flag fails before any world is loaded
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        idle_timeout=args.idle_timeout,
        rate_limit=args.rate_limit,
        window_ms=args.window_ms,
        token=args.token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_message_bytes=args.max_message_bytes,
        grace=args.grace,
    )
    compile = False if args.no_compile else None
    # Loaded (and verified) on the thread that will step them: one OpenMP team per process.
    worlds = on_torch_thread(load_worlds, args.worlds, args.device, verify=not args.no_verify, compile=compile)

    async def run() -> None:
        server = await Server.start(worlds, cfg)
        # One machine-readable line, for scripts that start the server with --port 0.
        print(json.dumps({"port": server.port, "host": cfg.host, "worlds": sorted(worlds)}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: health NOT_SERVING, %g s grace for in-flight calls", cfg.grace)
        await server.stop(cfg.grace)
        log.info("stopped")

    asyncio.run(run())
    return 0
