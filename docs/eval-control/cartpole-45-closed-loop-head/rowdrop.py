"""The shipped CartPole, 64 `balance` closed-loop dreams of up to 200 frames: every row stepped to
the end (the probe's play) against rows stopped at their first read-off crossing (the heads stage
since 2026-12-24): wall time of each, and whether each dream is the same frames up to its end."""

import time

import numpy as np
import torch

from worldsim.engine.controlled import play_controlled
from worldsim.engine.world import WorldModel
from worldsim.train.data import load_aligned
from worldsim.train.dreams import ClosedLoop, closed_loop_dreams, closed_loop_session, closed_loop_starts
from worldsim.worlds import get_world

torch.set_num_threads(2)
world = WorldModel.load("envs/cartpole/cartpole.safetensors", device="cpu", dtype=torch.float32, compile=False)
eps, _ = load_aligned(["data/cartpole"], "val")
wd, K, T = get_world("cartpole"), world.config.context_frames, 200
starts = closed_loop_starts(eps, K, 64, seed=0)
t0 = time.perf_counter()
sess, before, now = closed_loop_session(world, eps, starts, list(range(64)))
play = play_controlled(sess, before, now, wd.controllers["balance"], wd.state_reader, T)
t_all = time.perf_counter() - t0
t0 = time.perf_counter()
dreams = closed_loop_dreams(world, eps, ClosedLoop.of(wd, "balance"), T, 64, 64, seed=0)
t_drop = time.perf_counter() - t0
L = np.array([len(d) - K for d in dreams])
same = [np.array_equal(d.frames[K:], play.frames[j, : L[j]]) for j, d in enumerate(dreams)]
diff = [int(np.abs(d.frames[K:].astype(int) - play.frames[j, : L[j]].astype(int)).max()) for j, d in enumerate(dreams)]
print(
    f"every row to the end: {t_all:.1f} s ({64 * T} row-frames); rows stopped at their end: {t_drop:.1f} s ({L.sum()} row-frames)"
)
print("dream lengths quartiles", np.percentile(L, [25, 50, 75]), "ended", sum(d.terminated[-1] for d in dreams))
print("dreams identical to the full play up to their end:", sum(same), "of 64; max abs pixel diff", max(diff))
