"""Score end rules on saved head probabilities (hazard.py) with the engine's own rule
(``worldsim.engine.ends.EndRule``: a frame ends the episode when ``1 - prod(1 - p)`` over the row's
last ``window`` frames is above ``threshold``; window 1 is the single-frame rule). Timed = the
rule's end within 2 frames of the real one, as ``worldsim eval``'s "termination within 2 frames".

    python rules.py hz-0.npz hz-1.npz ...
"""

import sys

import numpy as np

from worldsim.engine.ends import EndRule


def ends(P: np.ndarray, threshold: float, window: int) -> np.ndarray:
    """(B, T) probabilities -> (B,) 1-based end frame under the rule (10**6: never)."""
    rule = EndRule(len(P), threshold, window)
    rows = list(range(len(P)))
    ended = np.stack([rule.step(rows, P[:, t]) for t in range(P.shape[1])], axis=1)
    return np.where(ended.any(1), ended.argmax(1) + 1, 10**6)


runs = [np.load(f) for f in sys.argv[1:]]
print("window threshold " + " ".join(f"{f.rsplit('-', 1)[-1]:>9}" for f in sys.argv[1:]) + "       all")
for window in (1, 2, 3, 4, 5, 60):
    for th in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        per = [float(np.mean(np.abs(ends(z["P"], th, window) - z["real_end"]) <= 2)) for z in runs]
        print(f"{window:>6} {th:>9.1f} " + " ".join(f"{p:>9.3f}" for p in per) + f" {np.mean(per):>9.4f}")
