"""Where a CartPole world's termination head fires under the ``balance`` controller, against the
ends read off its own frames: 64 closed-loop dreams from states of data/cartpole's val episodes,
200 frames each (the heads stage's closed-loop dreams, starts and noise seeds, played on past
the read-off end so that the head's later ends count too). Run from the repo root:
``python docs/eval-control/cartpole-45-closed-loop-head/probe.py [WORLD]`` (~11 min at 2 threads).

(Rewritten 2026-12-24 on ``play_controlled``, the loop the dreams now share with the eval; the
same starts, seeds and frames as the version that wrote the two ``probe-shipped-*.txt``.)"""

import sys

import numpy as np
import torch

from worldsim.engine.controlled import play_controlled
from worldsim.engine.world import WorldModel
from worldsim.train.data import load_aligned
from worldsim.train.dreams import closed_loop_session, closed_loop_starts
from worldsim.worlds import get_world

torch.set_num_threads(2)
path = sys.argv[1] if len(sys.argv) > 1 else "envs/cartpole/cartpole.safetensors"
world = WorldModel.load(path, device="cpu", dtype=torch.float32, compile=False)
eps, _ = load_aligned(["data/cartpole"], "val")
wd, K, T = get_world("cartpole"), world.config.context_frames, 200
starts = closed_loop_starts(eps, K, 64, seed=0)
sess, before, now = closed_loop_session(world, eps, starts, list(range(64)))
play = play_controlled(sess, before, now, wd.controllers["balance"], wd.state_reader, T)


def first(hits: np.ndarray) -> np.ndarray:
    """(B, T) bool -> (B,) 1-based first True, 0 where none."""
    return np.where(hits.any(1), hits.argmax(1) + 1, 0)


crossed = first(np.stack([wd.state_done(wd.state_reader(f)) for f in play.frames]))
L = np.where(crossed > 0, crossed, T)
print("read-off lengths, quartiles:", np.percentile(L, [25, 50, 75]), "ended by the bounds:", int((crossed > 0).sum()))
head = first(play.terminated)
print("the head fires before the read-off end in", int(((head > 0) & (head < L)).sum()), "of", len(L))
print("the head's first ends:", sorted(head.tolist()))
