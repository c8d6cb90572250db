"""Cart displacement, world against real, per frame (2026-12-14; card, "Clean context in the fine-tune").

usage (from the repository root): PYTHONPATH=. python docs/eval-control/cartpole-37-clean-context/cart_displacement.py FILE...

On the card's 25 held-out episodes (the bot's play), the world's cart displacement
since the last context frame against the real one, per frame: least-squares slope (world on real;
1 = the real magnitude, < 1 = the world's cart moves less), correlation, and the mean |error|; noise seeds 0-3."""

import sys

import numpy as np
import torch

from envs.cartpole.reader import read_state
from worldsim.engine.world import WorldModel
from worldsim.eval.episodes import load_eval_episodes, reference
from worldsim.eval.rollout import rollout

torch.set_num_threads(1)
eps, spec, _ = load_eval_episodes("data/cartpole", "test", 25)
H = 12
for f in sys.argv[1:]:
    w = WorldModel.load(f, device="cpu", dtype=torch.float32)
    K = w.config.context_frames
    ref = reference(eps, K, H, 2)
    x0 = np.array([read_state(e.frames[K - 1 : K])[0, 0] for e in eps])  # cart x at the last context frame
    rx = np.stack([read_state(ref.frames[:, h])[:, 0] for h in range(H)], 1) - x0[:, None]  # (E, H)
    W = []
    for seed in range(4):
        g = rollout(w, eps, H, start=K, seed=seed)
        W.append(np.stack([read_state(g.frames[:, h])[:, 0] for h in range(H)], 1) - x0[:, None])
    W = np.stack(W)  # (S, E, H)
    print(f)
    for h in (1, 2, 4, 6, 8, 10, 12):
        ok = ref.valid[:, h - 1] & np.isfinite(rx[:, h - 1])
        r = np.tile(rx[ok, h - 1], 4)
        wv = W[:, ok, h - 1].reshape(-1)
        m = np.isfinite(wv)
        slope = (wv[m] * r[m]).sum() / (r[m] ** 2).sum()
        print(
            f"  frame {h:2d}: n={ok.sum():2d} real |dx| {np.abs(r[m]).mean():.3f}  world |dx| {np.abs(wv[m]).mean():.3f}"
            f"  slope {slope:.2f}  corr {np.corrcoef(wv[m], r[m])[0, 1]:.2f}  |err| {np.abs(wv[m] - r[m]).mean():.3f}"
        )
