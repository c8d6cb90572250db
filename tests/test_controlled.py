"""A controller playing a world session (``worldsim.engine.controlled``): rows that cross the game's
bounds stop there, and the rows still going are the same play as without bounds (bit for bit on the tiny world)."""

from __future__ import annotations

import numpy as np

from worldsim.engine.controlled import play_controlled
from worldsim.testing import tiny_world, toy_episodes


def _brightness(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(1, keepdims=True).astype(np.float64)


def _toward_rise(states: np.ndarray) -> np.ndarray:
    return (states[:, 1, 0] > states[:, 0, 0]).astype(np.int64)


def test_rows_stop_at_their_first_crossing_and_the_others_play_on_unchanged() -> None:
    world = tiny_world()
    K = world.config.context_frames
    eps = toy_episodes(n=4, length=12)
    ctx = np.stack([e.frames[:K] for e in eps])
    acts = np.stack([e.actions[:K] for e in eps])

    def play(done=None):  # type: ignore[no-untyped-def]
        sess = world.session(batch=4, seed=[7, 8, 9, 10])
        sess.reset(frames=ctx, actions=acts)
        return play_controlled(sess, ctx[:, -2], ctx[:, -1], _toward_rise, _brightness, 8, done)

    free = play()
    assert free.frames.shape == (4, 8, 64, 64, 3) and not free.done.any()
    peaks = np.array([_brightness(f).max() for f in free.frames])
    limit = float(np.sort(peaks)[1])  # rows 'above' it cross it at some frame, at least one never does
    cut = play(lambda s: s[:, 0] > limit)
    for r in range(4):
        hit = np.flatnonzero(_brightness(free.frames[r]) > limit)
        assert cut.done[r].sum() == (len(hit) > 0)  # one crossing at most: the first
        if not len(hit):
            np.testing.assert_array_equal(cut.frames[r], free.frames[r][: cut.frames.shape[1]])
            continue
        t = int(hit[0])
        assert cut.done[r, t]
        np.testing.assert_array_equal(cut.frames[r, : t + 1], free.frames[r, : t + 1])  # the same play up to it
        assert (cut.frames[r, t + 1 :] == cut.frames[r, t]).all() and not cut.terminated[r, t + 1 :].any()
    assert cut.done.any() and cut.frames.shape[1] == 8  # two rows never cross: the loop runs to the end
