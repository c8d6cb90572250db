"""Heads fitted on the world's own dreams (``heads.source = dreams``): where the dreams branch, that
they are the world's rollouts under the recorded actions, and that they carry the recording's labels."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from worldsim.testing import tiny_world, toy_episodes
from worldsim.train.dreams import ClosedLoop, branch_points, closed_loop_dreams, dream_episodes, heads_episodes
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


def _mean_loop(limit: float) -> ClosedLoop:
    """A reader of one 'state' (a frame's mean brightness), a controller that pushes toward a rise,
    and bounds at ``limit``: enough to check the bookkeeping on a tiny world."""
    return ClosedLoop(
        controller=lambda s: (s[:, 1, 0] > s[:, 0, 0]).astype(np.int64),
        reader=lambda f: f.reshape(len(f), -1).mean(1, keepdims=True).astype(np.float64),
        state_done=lambda s: s[:, 0] > limit,
    )


def test_closed_loop_dreams_end_where_the_read_state_first_crosses_the_bounds() -> None:
    world = tiny_world()
    K = world.config.context_frames
    eps = toy_episodes(n=3, length=12)
    free = closed_loop_dreams(world, eps, _mean_loop(np.inf), frames=6, n=5, batch=3, seed=1)
    assert [len(d) for d in free] == [K + 6] * 5 and not any(d.terminated.any() for d in free)
    peaks = [d.frames[K:].reshape(6, -1).mean(1).max() for d in free]
    limit = float(np.median(peaks))  # the dreams above it end (at their first crossing), the others not
    loop = _mean_loop(limit)
    cut = closed_loop_dreams(world, eps, loop, frames=6, n=5, batch=3, seed=1)
    assert any(d.terminated[-1] for d in cut) and not all(d.terminated[-1] for d in cut)
    for d, whole in zip(cut, free):
        m = len(d) - K
        np.testing.assert_array_equal(d.frames, whole.frames[: K + m])  # the same dream, cut
        read = loop.reader(d.frames[K:])
        crossed = loop.state_done(read)
        assert not crossed[:-1].any() and bool(crossed[-1]) == bool(d.terminated[-1]) == (m < 6)
        assert d.free is not None and not d.free[K:].any()
        assert not d.terminated[:-1].any() and d.has_action.all()
        seen = loop.reader(d.frames)  # each action is the controller's on the two frames before it
        for t in range(K, K + m):
            assert d.actions[t] == loop.controller(seen[None, [max(t - 2, 0), t - 1]])[0]


def test_closed_loop_heads_need_a_reader_and_the_termination_head_alone() -> None:
    world = tiny_world()
    eps = toy_episodes(n=4, length=12)
    cfg = HeadFitConfig(source="dreams", dream_frames=3, dream_rollouts=4, which="termination")
    cfg.closed_loop, cfg.closed_loop_rollouts, cfg.closed_loop_frames = "mean", 3, 4
    train, val = heads_episodes(world, cfg, eps[:3], eps[3:], _mean_loop(np.inf))
    assert len(train) == 4 + 3 and len(val) >= 16  # closed-loop val: at least 16
    assert all(len(d) == world.config.context_frames + 4 for d in train[4:])
    for bad in (dict(which="both"), dict(closed_loop_rollouts=0)):
        with pytest.raises(ValueError, match="heads.which=termination"):
            heads_episodes(world, dataclasses.replace(cfg, **bad), eps, eps, _mean_loop(np.inf))
    with pytest.raises(ValueError, match="state reader"):
        ClosedLoop.of(SimpleNamespace(controllers={}, state_reader=None, state_done=None), "balance")
