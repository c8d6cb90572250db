"""Where a 64-row bf16 CartPole step goes, and how fast its GEMM shapes run alone (2026-12-13).

usage: python profile.py  (2 threads; the shipped world; prints torch.profiler's op table for
one step after 4 warm-up steps, grouped by input shape, then the GFLOP/s of the 1024^3 reference
and of the step's linear shapes as eager bf16 matmuls)"""

import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from worldsim.engine.world import WorldModel

torch.set_num_threads(2)
world = WorldModel.load("envs/cartpole/cartpole.safetensors")
session = world.session(batch=64, seed=0)
session.warmup()
session.reset()
for _ in range(4):
    session.step(np.zeros(64, int))
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
    session.step(np.zeros(64, int))
print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))


def rate(m: int, k: int, n: int, reps: int = 50) -> float:
    a, b = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(k, n, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


for shape in [(1024, 1024, 1024), (2048, 128, 384), (2048, 128, 512), (2048, 512, 128), (2048, 128, 128)]:
    print(shape, f"{rate(*shape):.0f} GFLOP/s")
