"""Play a served world over gRPC with random actions and report frames/s and latency.

    worldsim serve cartpole --port 50051 &
    python examples/remote_client.py --address localhost:50051 --world cartpole --steps 300

Without a server at hand, ``--local`` serves a tiny random-weight world in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Args:
    address: str = "localhost:50051"
    """host:port of `worldsim serve`."""
    world: str = "cartpole"
    """World to open a session on (`Client.list_worlds()` lists them)."""
    steps: int = 300
    """Steps to play; the episode is reset whenever it ends."""
    seed: int = 0
    """Seed of the session and of the random actions."""
    token: str = ""
    """Bearer token, if the server was started with --token."""
    root_cert: str = ""
    """PEM certificate to trust, if the server uses TLS."""
    encoding: str = "raw"
    """Frame encoding on the wire: raw, png or jpeg."""
    local: bool = False
    """Ignore --address/--world: serve a tiny random-weight world in this process (a demo)."""


def main(args: Args) -> None:
    from worldsim.client import Client, RemoteWorld

    server = None
    if args.local:
        from worldsim.serve.server import BackgroundServer
        from worldsim.testing import tiny_world

        server = BackgroundServer({"tiny": tiny_world()})
        args.address, args.world = server.address, "tiny"
    token, cert = args.token or None, args.root_cert or None
    with Client(args.address, token=token, root_cert=cert) as client:
        print("worlds:", ", ".join(w["name"] for w in client.list_worlds()))
    env = RemoteWorld(args.address, args.world, token=token, root_cert=cert, seed=args.seed, encoding=args.encoding)
    env.action_space.seed(args.seed)
    env.reset(seed=args.seed)
    rtt, server_ms, episodes = [], [], 1
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        rtt.append((time.perf_counter() - t) * 1e3)
        server_ms.append(env.last_latency_ms)
        if terminated or truncated:
            env.reset()
            episodes += 1
    fps = args.steps / (time.perf_counter() - t0)
    env.close()
    if server is not None:
        server.stop()
    print(
        f"{args.steps} steps, {episodes} episode(s): {fps:.1f} frames/s; round trip p50 {np.median(rtt):.1f} ms, "
        f"p99 {np.percentile(rtt, 99):.1f} ms; server side p50 {np.median(server_ms):.1f} ms"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    main(Args(**vars(p.parse_args())))
