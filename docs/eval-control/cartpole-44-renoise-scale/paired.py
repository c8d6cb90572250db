"""Paired comparison, episode by episode, of the shipped file's end timing before and after
``renoise_scale`` 0.7: the same 200 random-play episodes a seed (same starts, actions, real ends).

Before: the 2026-12-20 file's head probabilities saved by ``../cartpole-43-end-rule/hazard.py``
(``hz-shipped-SEED.npz``), its end rule (4 frames, 0.7) applied with the engine's ``EndRule``; or,
for seed 3, that file's own eval report (``../cartpole-43-end-rule/control-200-w4-seed3``).
After: ``worldsim eval``'s ``results.json`` of the card's 200-episode control command with
``--sampler renoise_scale=0.7``. Timed = the head's end within 2 frames of the real one.

    python paired.py SEED BEFORE(.npz|results.json) AFTER_results.json [SEED BEFORE AFTER ...]
"""

import json
import sys
from math import comb

import numpy as np

from worldsim.engine.ends import EndRule


def rule_ends(P: np.ndarray, threshold: float = 0.7, window: int = 4) -> np.ndarray:
    rule = EndRule(len(P), threshold, window)
    rows = list(range(len(P)))
    ended = np.stack([rule.step(rows, P[:, t]) for t in range(P.shape[1])], axis=1)
    return np.where(ended.any(1), ended.argmax(1) + 1, 10**6)


def from_results(path: str) -> tuple[np.ndarray, np.ndarray]:
    r = json.load(open(path))["control_fidelity"]
    rnd = next(iter(r.values()))["random"]
    ends = [10**6 if e is None else e for e in rnd["world_head_ends"]]
    return np.asarray(rnd["real_lengths"]), np.asarray(ends)


args = sys.argv[1:]
gained = lost = n = before_t = after_t = 0
for i in range(0, len(args), 3):
    seed, before, after = args[i : i + 3]
    real, new = from_results(after)
    if before.endswith(".npz"):
        z = np.load(before)
        real_b, old = z["real_end"], rule_ends(z["P"])
    else:
        real_b, old = from_results(before)
    assert np.array_equal(real, real_b), f"seed {seed}: not the same episodes"
    t_old, t_new = np.abs(old - real) <= 2, np.abs(new - real) <= 2
    g, l_ = int((t_new & ~t_old).sum()), int((t_old & ~t_new).sum())
    print(f"seed {seed}: before {t_old.mean():.3f}  after {t_new.mean():.3f}  gained {g}  lost {l_}")
    gained, lost, n = gained + g, lost + l_, n + len(real)
    before_t, after_t = before_t + int(t_old.sum()), after_t + int(t_new.sum())
k, m = min(gained, lost), gained + lost
p = min(1.0, 2 * sum(comb(m, j) for j in range(k + 1)) / 2**m) if m else 1.0
print(f"all {n}: before {before_t / n:.4f}  after {after_t / n:.4f}  gained {gained}  lost {lost}  exact McNemar p = {p:.4g}")
