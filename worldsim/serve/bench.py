"""gRPC overhead, for ``worldsim bench --grpc``: loopback Play streams against the engine in-process.

For each number of clients N: the engine stepping a batch of N directly (the ceiling), then N
clients, each a thread with its own :class:`~worldsim.client.RemoteWorld` streaming to a server
on 127.0.0.1 (port 0) in this process, which micro-batches them. The clients run in a process of
their own by default, as a remote client would; ``client_process=False`` runs them as threads of
this process, sharing its GIL with the server (a pessimistic bound: every Python line of a client
then delays the server's step).

Both sides run the same loop: random actions, and a new episode wherever one ended (a client
calls Reset; in process, one batched reset of the ended rows). Resets are not free (a reset
encodes and commits the context frames: about one and a half steps), and random play ends
CartPole episodes every ~10 frames, so a baseline without them would charge the server for work
the engine skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from worldsim.threads import on_torch_thread

if TYPE_CHECKING:
    from worldsim.engine.world import WorldModel


def _pct(x: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(x, 50)), "p99_ms": float(np.percentile(x, 99))}


def _in_process(model: WorldModel, n: int, steps: int, warmup: int) -> dict[str, float]:
    """The same loop as the clients': random actions, a new episode in a row whose episode ended
    (one batched reset of those rows, as a vector env does); latency is the step's."""
    sess = model.session(batch=n, seed=0)
    sess.reset()
    space = model.action_spec.to_space()
    space.seed(0)

    def step() -> float:
        acts = [space.sample() for _ in range(n)]
        t = time.perf_counter()
        res = sess.step(acts)
        dt = (time.perf_counter() - t) * 1e3
        ended = np.flatnonzero(res.terminated).tolist()
        if ended:
            sess.reset(rows=ended)
        return dt

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    lat = [step() for _ in range(steps)]
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


def _in_client_process(address: str, world: str, n: int, steps: int, warmup: int, encoding: str) -> dict[str, float]:
    """:func:`_over_grpc` in a fresh Python process (``python -m worldsim.serve.bench``), which
    imports the client only (no torch); its result comes back as JSON on stdout."""
    cmd = [sys.executable, "-m", "worldsim.serve.bench", address, world, str(n), str(steps), str(warmup), encoding]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the gRPC bench's client process failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_grpc(
    world: WorldModel | str | Path,
    clients: tuple[int, ...] = (1, 16),
    frames: int = 200,
    device: Any = None,
    warmup: int = 5,
    encoding: str = "raw",
    window_ms: float = 3.0,
    client_process: bool = True,
    rounds: int = 3,
) -> dict[str, Any]:
    """frames/s and p50/p99 latency: engine in-process vs N loopback gRPC clients, for N in ``clients``.

    ``world``: a checkpoint path (loaded on ``device``) or a loaded WorldModel. ``frames``: about
    how many frames each measurement produces in total. Each N is measured in ``rounds`` pairs,
    in process then over gRPC, side by side: a shared VM's speed drifts by 10-20% within a
    minute, so one pair's ratio says little; the reported ratio is the median of the pairs'.
    Returns ``{"clients_N": {"in_process": {...}, "grpc": {...}, "throughput_ratio": ...,
    "round_ratios": [...], "overhead_p50_ms": ...}}`` (each side's numbers from its median round).
    """
    from worldsim.engine.world import WorldModel
    from worldsim.serve.server import BackgroundServer, ServeConfig

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    # Loaded on the torch thread: torch ops on a second thread would halve the speed (threads.py).
    model = world if isinstance(world, WorldModel) else on_torch_thread(WorldModel.load, world, device=device)
    out: dict[str, Any] = {}
    cfg = ServeConfig(port=0, max_sessions=max(clients), window_ms=window_ms, idle_timeout=0)
    run = _in_client_process if client_process else _over_grpc
    with BackgroundServer({"bench": model}, cfg) as srv:
        for n in clients:
            steps = max(5, frames // n)
            pairs = []
            for _ in range(rounds):
                local = on_torch_thread(_in_process, model, n, steps, warmup)  # the server's engine thread
                pairs.append((local, run(srv.address, "bench", n, steps, warmup, encoding)))
            ratios = [r["frames_per_s"] / loc["frames_per_s"] for loc, r in pairs]
            local = sorted((p[0] for p in pairs), key=lambda d: d["frames_per_s"])[rounds // 2]
            remote = sorted((p[1] for p in pairs), key=lambda d: d["frames_per_s"])[rounds // 2]
            out[f"clients_{n}"] = {
                "in_process": local,
                "grpc": remote,
                "overhead_p50_ms": remote["p50_ms"] - local["p50_ms"],
                "throughput_ratio": float(np.median(ratios)),
                "round_ratios": ratios,
                "client_process": client_process,
            }
    return out


if __name__ == "__main__":  # the client process of _in_client_process
    address, name, n, steps, warmup, encoding = sys.argv[1:7]
    print(json.dumps(_over_grpc(address, name, int(n), int(steps), int(warmup), encoding)))
