"""Heads fitted on the world's own dreams (``heads.source = dreams``): where the dreams branch, that
they are the world's rollouts under the recorded actions, and that they carry the recording's labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim.testing import tiny_world, toy_episodes
from worldsim.train.dreams import branch_points, dream_episodes, heads_episodes
from worldsim.train.heads import HeadFitConfig, fit_heads
from worldsim.train.latents import encode_episodes

CPU = torch.device("cpu")


def test_branch_points_reach_every_end_and_stay_inside_their_episodes() -> None:
    eps = toy_episodes(n=6, length=24)  # 25 frames each, every one ends at its last frame
    eps[1].terminated[-1] = False  # one that does not end (truncated)
    pts = branch_points(eps, context=4, frames=8, n=100, seed=0)
    assert pts == branch_points(eps, context=4, frames=8, n=100, seed=0)  # from the seed
    ends = pts[:5]
    assert [i for i, _, _ in ends] == [0, 2, 3, 4, 5]
    assert all(b + m == 24 and 1 <= m <= 8 for _, b, m in ends)  # each reaches its end
    assert len(pts) == 5 + 6  # and one more anywhere per episode
    assert all(b >= 3 and 1 <= m <= 8 and b + m <= 24 for _, b, m in pts)
    assert branch_points(eps, context=4, frames=8, n=3, seed=0) == ends[:3]  # ends are kept first
    with pytest.raises(ValueError, match="dream_frames"):
        branch_points(eps, context=4, frames=0, n=3, seed=0)


def test_dreams_are_the_worlds_rollouts_under_the_recorded_actions_with_the_recorded_labels() -> None:
    world = tiny_world()
    K = world.config.context_frames
    eps = toy_episodes(n=3, length=12)
    dreams = dream_episodes(world, eps, frames=5, n=6, batch=4, seed=3)
    pts = sorted(branch_points(eps, K, 5, 6, 3), key=lambda p: -p[2])
    assert len(dreams) == len(pts) == 6
    for j, ((i, b, m), d) in enumerate(zip(pts, dreams)):
        e, sl = eps[i], slice(b - K + 1, b + m + 1)
        assert len(d) == K + m
        np.testing.assert_array_equal(d.frames[:K], e.frames[b - K + 1 : b + 1])  # the real context
        for name in ("actions", "has_action", "rewards", "terminated"):
            np.testing.assert_array_equal(getattr(d, name), getattr(e, name)[sl])
        assert not np.array_equal(d.frames[K:], e.frames[b + 1 : b + m + 1])  # dreamed, not recorded
        sess = world.session(batch=1, seed=3 + j)  # the same row alone: the same frames
        sess.reset(frames=e.frames[b - K + 1 : b + 1], actions=e.actions[b - K + 1 : b + 1])
        alone = np.stack([sess.step(e.actions[b + t : b + t + 1]).frames[0] for t in range(1, m + 1)])
        diff = np.abs(alone.astype(int) - d.frames[K:].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_heads_fit_on_dreams_of_every_length() -> None:
    world = tiny_world()
    world.requires_grad_(False)
    eps = toy_episodes(n=6, length=12)
    cfg = HeadFitConfig(steps=20, batch=64, clip_len=6, source="dreams", dream_frames=3, dream_rollouts=8)
    train, val = heads_episodes(world, cfg, eps[:4], eps[4:])
    assert len(train) == 8 and len(val) == 4  # val: every point its 2 episodes give (64 asked)
    assert all(len(d) <= world.config.context_frames + 3 for d in train + val)  # shorter than a window
    lat_train, lat_val = (encode_episodes(world.codec, e, CPU) for e in (train, val))
    m = fit_heads(cfg, world.denoiser, lat_train, lat_val, CPU, world.config.context_frames)
    assert m["heads_true_ends"] > 0  # short dreams are windows of their own: their ends are fitted
    same = heads_episodes(world, HeadFitConfig(), eps[:4], eps[4:])
    assert same == (eps[:4], eps[4:])
    with pytest.raises(ValueError, match="heads.source"):
        heads_episodes(world, HeadFitConfig(source="dream"), eps, eps)
