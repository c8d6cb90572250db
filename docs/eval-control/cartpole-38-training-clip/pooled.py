"""Pooled termination timing over several `worldsim eval --only-control` runs (one folder per seed).

    PYTHONPATH=. python docs/eval-control/cartpole-38-training-clip/pooled.py DIR [DIR ...]

Prints, over every run's random-play episodes: the head's ends within 2 frames of the real one,
the ends read off the world's frames by the state reader (the head-independent number), and the
Spearman rank correlation of the read-off end with the real one. A world end of 0 = never.
"""

import json
import sys

import numpy as np

from worldsim.eval.fidelity import rank_correlation

real, head, state = [], [], []
for d in sys.argv[1:]:
    r = json.load(open(f"{d}/results.json"))
    rnd = next(iter(r["control_fidelity"].values()))["random"]
    real += rnd["real_lengths"]
    head += rnd["world_head_ends"]
    state += rnd["world_state_ends"]
R, H, S = (np.array(x) for x in (real, head, state))
never = 10**6
H, S = np.where(H > 0, H, never), np.where(S > 0, S, never)
print(f"{len(R)} episodes: head timed {100 * np.mean(np.abs(H - R) <= 2):.1f}%, "
      f"read-off timed {100 * np.mean(np.abs(S - R) <= 2):.1f}%, "
      f"read-off rank correlation {rank_correlation(R, np.minimum(S, R.max() + 100)):.3f}")
