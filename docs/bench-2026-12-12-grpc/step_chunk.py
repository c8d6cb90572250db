import time

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.threads import on_torch_thread

torch.set_num_threads(2)


def run():
    w = WorldModel.load("envs/cartpole/cartpole.safetensors")
    out = {}
    for rnd in range(2):
        for chunk in (16, 32):
            s = w.session(batch=64, seed=0)
            s.step_chunk = chunk
            s.reset()
            for _ in range(3):
                s.step(np.zeros(64, np.int64))
            t = time.perf_counter()
            n = 8
            for _ in range(n):
                s.step(np.random.randint(0, 2, 64))
            fps = n * 64 / (time.perf_counter() - t)
            out.setdefault(chunk, []).append(fps)
            print(rnd, chunk, f"{fps:.1f} f/s", flush=True)
    return out


print(on_torch_thread(run))
