"""Sessions: determinism, independent rows (resets, subsets, chunks), action validation, start clips,
the graphed path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim import compliance
from worldsim.engine import SamplerConfig
from worldsim.spaces import ActionError, ActionSpec
from worldsim.testing import tiny_world


def test_determinism_and_row_independence() -> None:
    world = tiny_world()
    acts = [[i % 2, (i + 1) % 2] for i in range(6)]

    def roll(seed: int) -> np.ndarray:
        s = world.session(2, seed=seed)
        s.reset()
        return np.stack([s.step(a).frames for a in acts])

    a, b, c = roll(7), roll(7), roll(8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # Row 1 of a batch equals a batch-1 session seeded like that row (seed + 1).
    single = world.session(1, seed=8)
    single.reset()
    one = np.stack([single.step([x[1]]).frames[0] for x in acts])
    assert np.abs(one.astype(int) - a[:, 1].astype(int)).max() <= 1


def test_reset_single_row_keeps_others() -> None:
    world = tiny_world()
    s = world.session(2, seed=0)
    s.reset()
    s.step([0, 1])
    k_row0 = s.cache.k[:, 0].clone()
    count0 = int(s.cache.count[0])
    s.reset(rows=[1], seed=3)
    assert torch.equal(s.cache.k[:, 0], k_row0) and int(s.cache.count[0]) == count0
    assert int(s.cache.count[1]) == world.config.context_frames
    out = s.step([1, 1])
    assert out.frames.shape == (2, 64, 64, 3)


def test_guided_session_resets_one_row() -> None:
    """With guidance each row owns two cache rows; resetting one row leaves the other's two alone."""
    world = tiny_world(sampler=SamplerConfig(guidance_scale=2.0))
    s = world.session(2, seed=0)
    s.reset()
    assert s.cache.batch == 4
    assert s.step([0, 1]).frames.shape == (2, 64, 64, 3)
    k_row1 = s.cache.k[:, 2:4].clone()
    s.reset(rows=[0])
    K = world.config.context_frames
    assert s.cache.count.tolist() == [K, K, K + 1, K + 1]
    assert torch.equal(s.cache.k[:, 2:4], k_row1)
    assert s.step([1], rows=[0]).frames.shape == (1, 64, 64, 3)


@pytest.mark.parametrize(
    "bad,match",
    [
        ([0, 1, 2], "expected 2 actions"),
        ([[0, 1]], "shape"),
        ([0.5, 1], "integers"),
        ([float("nan"), 1], "NaN"),
        ([5, 0], r"\[0, 1\]"),
    ],
)
def test_bad_actions_clear_errors(bad: object, match: str) -> None:
    world = tiny_world()
    s = world.session(2, seed=0)
    s.reset()
    with pytest.raises(ActionError, match=match):
        s.step(bad)
    assert s.step([0, 1]).frames.shape == (2, 64, 64, 3)  # still usable


@pytest.mark.parametrize("kind", list(compliance.spaces()))
def test_all_action_spaces_step(kind: str) -> None:
    world = tiny_world(compliance.spaces()[kind])
    spec = world.action_spec
    assert ActionSpec.from_json(spec.to_json()) == spec
    s = world.session(2, seed=0)
    s.reset()
    space = spec.to_space()
    out = s.step([space.sample(), space.sample()])
    assert out.frames.shape == (2, 64, 64, 3) and out.rewards.dtype == np.float32


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_start_clips_are_committed_once_and_copied(guidance: float) -> None:
    """A reset without frames copies the clip's cache rows, committed once per world: the same
    cache as committing the clip's frames in that session, and the same in any batch."""
    world = tiny_world(sampler=SamplerConfig(guidance_scale=guidance), n_start=4)
    s = world.session(3, seed=0)
    s.reset(seed=[5, 6, 7])
    assert 1 <= len(world.starts) <= 3
    before = len(world.starts)
    s.reset(seed=[5, 6, 7])  # the same clips again: nothing new is committed
    assert len(world.starts) == before

    # The same three clips, their frames given: committed in the session instead of copied.
    clips = [int(torch.randint(4, (1,), generator=torch.Generator().manual_seed(x))) for x in (5, 6, 7)]
    g = world.session(3, seed=0)
    g.reset(frames=world.start_frames[clips].numpy(), actions=world.start_actions[clips].numpy(), seed=[5, 6, 7])
    torch.testing.assert_close(g.cache.k, s.cache.k, atol=1e-4, rtol=1e-4)
    assert torch.equal(g.cache.frame_idx, s.cache.frame_idx) and torch.equal(g.cache.count, s.cache.count)
    step_copied = s.step([0, 1, 0]).frames
    assert np.abs(g.step([0, 1, 0]).frames.astype(int) - step_copied.astype(int)).max() <= 1

    # Row 2 of a batch and a batch-1 session with that row's seed start bit-identically.
    one = world.session(1, seed=7)
    one.reset()
    assert np.array_equal(one.step([0]).frames[0], step_copied[2])


def test_reset_from_given_frames() -> None:
    world = tiny_world()
    s = world.session(1, seed=0)
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    assert np.array_equal(s.reset(frames=frames)[0], frames[-1])
    with pytest.raises(ValueError, match="context frames must be"):
        s.reset(frames=np.zeros((2, 32, 32, 3), np.uint8))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_step_subsets_of_rows(guidance: float) -> None:
    """Stepping a prefix (cache view) or any subset (gather/scatter) of rows == stepping them alone.

    The same with guidance: the engine moves each row's two cache rows together."""
    world = tiny_world(sampler=SamplerConfig(guidance_scale=guidance))
    full = world.session(3, seed=[5, 6, 7])
    full.reset()
    singles = [world.session(1, seed=s) for s in (5, 6, 7)]
    for s in singles:
        s.reset()
    plan = [([0, 1], [1, 0]), ([2], [1]), ([0, 2], [0, 0]), ([0, 1, 2], [1, 1, 0]), ([1], [1])]
    for rows, acts in plan:
        out = full.step(acts, rows=rows)
        for r, a, f in zip(rows, acts, out.frames):
            ref = singles[r].step([a]).frames[0]
            assert np.abs(ref.astype(int) - f.astype(int)).max() <= 1
    assert list(full.frame_index) == [s.frame_index[0] for s in singles]
    # Moving a row carries its whole state.
    full.move_row(2, 0)
    a = full.step([1], rows=[0]).frames[0]
    b = singles[2].step([1]).frames[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_graphed_step_path_matches_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-graph step (static buffers, mask decided on the host) gives the plain step's frames.

    No GPU here: the graph's replay is swapped for running the captured function eagerly on the
    same static buffers, which checks everything but the capture itself.
    """
    from worldsim.engine.graphs import GraphedStep

    calls: list[bool] = []

    def replay_eagerly(self: GraphedStep, action: torch.Tensor, noise: torch.Tensor, full: bool):  # type: ignore[no-untyped-def]
        calls.append(full)
        return self.run_eager(action, noise, full)

    monkeypatch.setattr(GraphedStep, "run", replay_eagerly)
    world = tiny_world()
    capacity = world.config.cache.capacity
    plain, graphed = world.session(2, seed=3), world.session(2, seed=3)
    graphed.cuda_graphs = True
    n = capacity + 3
    for s in (plain, graphed):
        s.reset()
    outs = {"plain": [], "graphed": []}
    for i in range(2 * n):
        if i == n:  # a new episode in one row: the cache is filling again
            plain.reset(rows=[1], seed=9)
            graphed.reset(rows=[1], seed=9)
        for name, s in (("plain", plain), ("graphed", graphed)):
            outs[name].append(s.step([i % 2, 1]))
    for p, g in zip(outs["plain"], outs["graphed"]):
        assert np.abs(p.frames.astype(int) - g.frames.astype(int)).max() <= 1
        np.testing.assert_allclose(p.rewards, g.rewards, atol=1e-5)
    # both graphs were used: filling at first, full once every slot held a frame, filling after the reset
    first_full = capacity - world.config.context_frames
    assert calls[:first_full] == [False] * first_full and calls[first_full] is True
    assert calls[n] is False and calls[-1] is True
    # a step of some rows only runs eagerly, outside the graph
    before = len(calls)
    graphed.step([0], rows=[0])
    assert len(calls) == before


def test_cuda_graphs_need_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        tiny_world().session(1, cuda_graphs=True)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_steps_in_chunks_match_one_call(guidance: float) -> None:
    """A step of more rows than ``step_chunk`` runs in contiguous chunks (views of the cache):
    the same rollouts as one call, within float tolerance, subsets of rows included."""
    world = tiny_world(sampler=SamplerConfig(guidance_scale=guidance))
    outs = []
    for chunk in (0, 2):
        s = world.session(5, seed=3)
        s.step_chunk = chunk
        s.reset()
        res = [s.step([0, 1, 1, 0, 1]) for _ in range(3)] + [s.step([1, 0, 1], rows=[0, 2, 4])]
        outs.append((res, s.cache.count.clone()))
    (one, count_one), (chunked, count_chunked) = outs
    assert torch.equal(count_one, count_chunked)
    for a, b in zip(one, chunked):
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
        np.testing.assert_allclose(a.rewards, b.rewards, atol=1e-4)
        assert np.array_equal(a.terminated, b.terminated)
