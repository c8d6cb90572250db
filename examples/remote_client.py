"""Play a served world over gRPC with random actions and report the frame rate.

worldsim serve cartpole --port 50051 &
python examples/remote_client.py --address localhost:50051 --steps 300
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
    """World to open a session on."""
    steps: int = 300
    """Steps to play."""
    token: str = ""
    """Bearer token, if the server wants one."""
    seed: int = 0
    """Seed of the session and of the random actions."""


def main(args: Args) -> None:
    from worldsim.client import Client, RemoteWorld

    print("worlds:", [w["name"] for w in Client(args.address, token=args.token or None).list_worlds()])
    env = RemoteWorld(args.address, args.world, token=args.token or None, seed=args.seed)
    env.action_space.seed(args.seed)
    env.reset(seed=args.seed)
    lat, server_lat, t0, episodes = [], [], time.perf_counter(), 1
    for _ in range(args.steps):
        t = time.perf_counter()
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        lat.append((time.perf_counter() - t) * 1e3)
        server_lat.append(env.last_latency_ms)
        if term or trunc:
            env.reset()
            episodes += 1
    fps = args.steps / (time.perf_counter() - t0)
    print(
        f"{args.steps} steps, {episodes} episodes: {fps:.1f} frames/s; round trip p50 {np.median(lat):.1f} ms, "
        f"p99 {np.percentile(lat, 99):.1f} ms; server-side p50 {np.median(server_lat):.1f} ms"
    )
    env.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Args):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    main(Args(**vars(p.parse_args())))
