"""Per-episode PSNR @10 and read-off cart / pole error @10, noise seeds 0-3 (2026-12-14; card, "Clean context in the fine-tune").

usage (from the repository root): PYTHONPATH=. python docs/eval-control/cartpole-37-clean-context/per_episode.py FILE...
(data/cartpole test split, the 25 episodes of the card's prediction command; fp32, 1 thread, ~50 s a file)"""

import sys

import numpy as np
import torch

from envs.cartpole.reader import read_state
from worldsim.engine.world import WorldModel
from worldsim.eval.episodes import load_eval_episodes, reference
from worldsim.eval.rollout import rollout

torch.set_num_threads(1)
eps, spec, _ = load_eval_episodes("data/cartpole", "test", 25)
H = 10
res = {}
for f in sys.argv[1:]:
    w = WorldModel.load(f, device="cpu", dtype=torch.float32)
    K = w.config.context_frames
    ref = reference(eps, K, H, 2)
    ok = ref.valid[:, H - 1]
    rs = read_state(ref.frames[ok, H - 1])
    P, C, A = [], [], []
    for seed in range(4):
        g = rollout(w, eps, H, start=K, seed=seed)
        a, b = ref.frames[ok, H - 1].astype(np.float64), g.frames[ok, H - 1].astype(np.float64)
        mse = ((a - b) ** 2).reshape(ok.sum(), -1).mean(1)
        P.append(10 * np.log10(255**2 / np.maximum(mse, 1e-10)))
        gs = read_state(g.frames[ok, H - 1])
        C.append(np.abs(np.asarray(gs[..., 0]) - np.asarray(rs[..., 0])))
        A.append(np.abs(np.asarray(gs[..., 1]) - np.asarray(rs[..., 1])))
    P, C, A = map(np.array, (P, C, A))
    res[f] = (P, C, A)
    print(
        f.split("/")[-2] if "runs" in f else f,
        "PSNR@10 by seed",
        P.mean(1).round(2),
        "mean",
        P.mean().round(2),
        "| cart err",
        np.nanmean(C).round(3),
        "pole err",
        np.nanmean(A).round(3),
    )
    print("  per episode PSNR@10 (mean over seeds):", P.mean(0).round(1))
    print("  per episode cart err:", np.nanmean(C, 0).round(2))
