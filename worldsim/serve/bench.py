"""gRPC overhead for ``worldsim bench --grpc``: loopback Play streams against in-process steps."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.engine.world import WorldModel


def _pct(x: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99))}


def bench_grpc(
    world: WorldModel | str | Path, clients: tuple[int, ...] = (1, 16), frames: int = 200, warmup: int = 10
) -> dict[str, Any]:
    """frames/s and latency over a loopback stream (server in this process) vs the engine directly."""
    from worldsim.client import RemoteWorld
    from worldsim.serve.server import ServeConfig, Server

    model = world if isinstance(world, WorldModel) else WorldModel.load(world)
    loop = asyncio.new_event_loop()
    box: dict[str, Server] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        box["s"] = loop.run_until_complete(Server.start({"w": model}, ServeConfig(port=0, max_sessions=max(clients))))
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(60)
    addr = f"127.0.0.1:{box['s'].port}"
    results: dict[str, Any] = {}
    try:
        for n in clients:
            # in-process: the same batch size through the engine directly
            sess = model.session(batch=n, seed=0)
            sess.reset()
            acts = model.action_spec.to_space()
            for _ in range(warmup):
                sess.step([acts.sample() for _ in range(n)])
            lat = []
            t0 = time.perf_counter()
            for _ in range(frames // n if n > 1 else frames):
                t = time.perf_counter()
                sess.step([acts.sample() for _ in range(n)])
                lat.append((time.perf_counter() - t) * 1e3)
            inproc_fps = len(lat) * n / (time.perf_counter() - t0)

            steps = frames // n if n > 1 else frames

            def client(i: int, steps: int = steps) -> list[float]:
                env = RemoteWorld(addr, "w", seed=i)
                env.action_space.seed(i)
                for _ in range(warmup):
                    env.step(env.action_space.sample())
                out = []
                for _ in range(steps):
                    t = time.perf_counter()
                    env.step(env.action_space.sample())
                    out.append((time.perf_counter() - t) * 1e3)
                env.close()
                return out

            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                lats = list(pool.map(client, range(n)))
            total = sum(len(x) for x in lats)
            grpc_fps = total / (time.perf_counter() - t0)
            flat = [v for x in lats for v in x]
            results[f"clients_{n}"] = {
                "in_process": {"frames_per_s": inproc_fps, **_pct(lat)},
                "grpc": {"frames_per_s": grpc_fps, **_pct(flat)},
            }
    finally:
        asyncio.run_coroutine_threadsafe(box["s"].stop(0.5), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
    return results
