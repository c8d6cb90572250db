"""Where a CartPole world's termination head fires under the ``balance`` controller, against the
ends read off its own frames: 64 closed-loop dreams from states of data/cartpole's val episodes,
up to 200 frames. Run from the repo root: ``python docs/eval-control/cartpole-45-closed-loop-head/probe.py
[WORLD]`` (~11 min at 2 threads)."""

import sys

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.train.data import load_aligned
from worldsim.train.dreams import ClosedLoop, closed_loop_dreams
from worldsim.worlds import get_world

torch.set_num_threads(2)
path = sys.argv[1] if len(sys.argv) > 1 else "envs/cartpole/cartpole.safetensors"
world = WorldModel.load(path, device="cpu", dtype=torch.float32, compile=False)
eps, _ = load_aligned(["data/cartpole"], "val")
heads: list[np.ndarray] = []
open_session = world.session


def session(*a, **k):  # the same sessions, with each step's head ends kept
    s = open_session(*a, **k)
    step = s.step

    def kept(act):
        r = step(act)
        heads.append(r.terminated.copy())
        return r

    s.step = kept
    return s


world.session = session
dreams = closed_loop_dreams(world, eps, ClosedLoop.of(get_world("cartpole"), "balance"), 200, 64, 64, seed=0)
K = world.config.context_frames
L = np.array([len(e) - K for e in dreams])
print(
    "read-off lengths, quartiles:",
    np.percentile(L, [25, 50, 75]),
    "ended by the bounds:",
    sum(e.terminated[-1] for e in dreams),
)
H = np.stack(heads, 1)
first = np.where(H.any(1), H.argmax(1) + 1, 0)
print("the head fires before the read-off end in", int(((first > 0) & (first < L)).sum()), "of", len(L))
print("the head's first ends:", sorted(first.tolist()))
