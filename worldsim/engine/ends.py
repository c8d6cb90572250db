"""When a world's episode ends: the termination head's per-frame probabilities -> an end, per row.

The head reads one committed frame and gives the probability that this frame ends the episode.
A world file's rule (``WorldConfig.term_threshold``, ``WorldConfig.term_window``): a frame ends
the episode when the probability that *any* of the row's last ``term_window`` frames (since its
reset) ended it, reading the head's outputs as independent per-frame probabilities,
``1 - prod(1 - p)``, is above the threshold. ``term_window = 1`` is the frame's own probability
against the threshold, the rule of every file before 2026-12-20.

Why a window: the CartPole head, fitted on the world's own dreams, ramps up over the frames of a
fall (0.5-0.9 per frame, rarely above 0.9), and a single frame's probability is noisy; reading
3-5 frames together timed more of the benchmark's real ends than any single-frame threshold (the
card's "Shipped since 2026-12-20" section: 80.6% of 800 against 78.4%). A window rather than the
whole episode, so that long balanced play, whose frames each carry a small probability, never
accumulates into an end.

The rule's state is each row's last ``window`` probabilities, owned by the session (the one
implementation every surface steps through).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class EndRule:
    """Per-row recent termination probabilities of a batch of ``batch`` rows, and the rule on them."""

    def __init__(self, batch: int, threshold: float, window: int = 1) -> None:
        if window < 1:
            raise ValueError(f"term_window must be >= 1 frame, got {window}")
        self.threshold, self.window = float(threshold), int(window)
        self.recent = np.zeros((batch, self.window), np.float64)  # (B, W) newest last; 0 = no frame

    def reset(self, rows: Sequence[int]) -> None:
        """Rows start new episodes: no frame of theirs counts any more."""
        self.recent[list(rows)] = 0.0

    def step(self, rows: Sequence[int], p: np.ndarray) -> np.ndarray:
        """Rows ``rows`` produced frames with termination probabilities ``p`` (len(rows),) -> ended (len(rows),) bool."""
        if self.window == 1:
            return p > self.threshold  # the single-frame rule, exactly as before windows existed
        rows = list(rows)
        self.recent[rows] = np.concatenate([self.recent[rows, 1:], p.astype(np.float64)[:, None]], axis=1)
        return 1.0 - np.prod(1.0 - self.recent[rows], axis=1) > self.threshold

    def move(self, src: int, dst: int) -> None:
        self.recent[dst] = self.recent[src]
