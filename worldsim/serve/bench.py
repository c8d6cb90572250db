"""gRPC overhead, for ``worldsim bench --grpc``: loopback Play streams against the engine in-process.

For each number of clients N: the engine stepping a batch of N directly (the ceiling), then N
clients, each a thread with its own :class:`~worldsim.client.RemoteWorld` streaming to a server
on 127.0.0.1 (port 0) in this process, which micro-batches them. Clients and server share this
process (and its GIL), so the gRPC numbers are a pessimistic bound for remote clients.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.engine.world import WorldModel
from worldsim.threads import on_torch_thread


def _pct(x: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99))}


def _in_process(model: WorldModel, n: int, steps: int, warmup: int) -> dict[str, float]:
    sess = model.session(batch=n, seed=0)
    sess.reset()
    space = model.action_spec.to_space()
    space.seed(0)
    for _ in range(warmup):
        sess.step([space.sample() for _ in range(n)])
    lat = []
    t0 = time.perf_counter()
    for _ in range(steps):
        acts = [space.sample() for _ in range(n)]
        t = time.perf_counter()
        sess.step(acts)
        lat.append((time.perf_counter() - t) * 1e3)
    return {"frames_per_s": steps * n / (time.perf_counter() - t0), **_pct(lat)}


def _over_grpc(address: str, world: str, n: int, steps: int, warmup: int, encoding: str) -> dict[str, float]:
    from worldsim.client import RemoteWorld

    start = threading.Barrier(n + 1)
    done = threading.Barrier(n + 1)

    def client(i: int) -> tuple[list[float], list[float], list[int]]:
        env = None
        try:
            env = RemoteWorld(address, world, seed=i, encoding=encoding)
            env.action_space.seed(i)
            for _ in range(warmup):
                if any(env.step(env.action_space.sample())[2:4]):
                    env.reset()
            start.wait()
            rtt, server, batch = [], [], []
            for _ in range(steps):
                a = env.action_space.sample()
                t = time.perf_counter()
                _, _, term, trunc, _ = env.step(a)
                rtt.append((time.perf_counter() - t) * 1e3)
                server.append(env.last_latency_ms)
                batch.append(env.last_batch_size)
                if term or trunc:
                    env.reset()
            done.wait()
            return rtt, server, batch
        except BaseException:
            start.abort()  # release the others and the timer
            done.abort()
            raise
        finally:
            if env is not None:
                env.close()

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(client, i) for i in range(n)]
        try:
            start.wait(120)
            t0 = time.perf_counter()
            done.wait(600)
            elapsed = time.perf_counter() - t0
        except threading.BrokenBarrierError:
            start.abort()
            done.abort()
            elapsed = float("nan")
        results = [f.result() for f in futures]  # re-raises a client's error
    rtt = [v for r in results for v in r[0]]
    server = [v for r in results for v in r[1]]
    batch = [v for r in results for v in r[2]]
    return {
        "frames_per_s": len(rtt) / elapsed,
        **_pct(rtt),
        "server_p50_ms": float(np.percentile(server, 50)),
        "mean_batch": float(np.mean(batch)),
    }


def bench_grpc(
    world: WorldModel | str | Path,
    clients: tuple[int, ...] = (1, 16),
    frames: int = 200,
    device: Any = None,
    warmup: int = 5,
    encoding: str = "raw",
    window_ms: float = 3.0,
) -> dict[str, Any]:
    """frames/s and p50/p99 latency: engine in-process vs N loopback gRPC clients, for N in ``clients``.

    ``world``: a checkpoint path (loaded on ``device``) or a loaded WorldModel. ``frames``: about
    how many frames each measurement produces in total. Returns ``{"clients_N": {"in_process":
    {...}, "grpc": {...}, "overhead_p50_ms": ...}}``.
    """
    from worldsim.serve.server import BackgroundServer, ServeConfig

    model = world if isinstance(world, WorldModel) else WorldModel.load(world, device=device)
    out: dict[str, Any] = {}
    cfg = ServeConfig(port=0, max_sessions=max(clients), window_ms=window_ms, idle_timeout=0)
    with BackgroundServer({"bench": model}, cfg) as srv:
        for n in clients:
            steps = max(5, frames // n)
            local = on_torch_thread(_in_process, model, n, steps, warmup)  # the server's engine thread
            remote = _over_grpc(srv.address, "bench", n, steps, warmup, encoding)
            out[f"clients_{n}"] = {
                "in_process": local,
                "grpc": remote,
                "overhead_p50_ms": remote["p50_ms"] - local["p50_ms"],
                "throughput_ratio": remote["frames_per_s"] / local["frames_per_s"],
            }
    return out


if __name__ == "__main__":
    import json
    import sys

    from worldsim.testing import tiny_world

    target: Any = sys.argv[1] if len(sys.argv) > 1 else tiny_world()
    print(json.dumps(bench_grpc(target), indent=2))
