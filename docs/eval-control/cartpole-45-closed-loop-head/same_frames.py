"""The file shipped 2026-12-23 and the one before it give the same frames: 8 rows x 120 frames from
recorded starts under random actions, same seeds. Run from the repo root with the old file's path:
``python docs/eval-control/cartpole-45-closed-loop-head/same_frames.py OLD.safetensors`` (~2 min)."""

import sys

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.train.data import load_aligned

eps, _ = load_aligned(["data/cartpole"], "val")
out, ends = [], []
for path in (sys.argv[1], "envs/cartpole/cartpole.safetensors"):
    world = WorldModel.load(path, device="cpu", dtype=torch.float32, compile=False)
    K = world.config.context_frames
    sess = world.session(batch=8, seed=list(range(8)))
    sess.reset(frames=np.stack([e.frames[:K] for e in eps[:8]]), actions=np.stack([e.actions[:K] for e in eps[:8]]))
    acts = np.random.default_rng(0).integers(0, 2, (120, 8))
    steps = [sess.step(a) for a in acts]
    out.append(np.stack([s.frames for s in steps]))
    ends.append(np.stack([s.terminated for s in steps]))
print("frames identical:", np.array_equal(*out), "| head ends (old, new):", int(ends[0].sum()), int(ends[1].sum()))
