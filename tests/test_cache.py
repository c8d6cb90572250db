"""The rolling KV cache's contracts: causality, equivalence with a block-causal forward, flat memory,
bounded positions, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim import compliance
from worldsim.engine import CacheConfig, KVCache, commit_frame, denoise_frame
from worldsim.engine.cache import RowState
from worldsim.testing import random_actions, tiny_denoiser, tiny_world


@pytest.mark.parametrize("kind", list(compliance.spaces()))
def test_causality_frame_and_action(kind: str) -> None:
    """Changing frame t+1 or its action leaves every output for frames <= t unchanged."""
    m, spec = tiny_denoiser(kind)
    B, T, t_star = 2, 5, 2
    x, t = torch.randn(B, T, 4, 4, 4), torch.rand(B, T)
    a, h = random_actions(spec, B, T), torch.ones(B, T, dtype=torch.bool)
    base = m(x, t, a, h)
    x2 = x.clone()
    x2[:, t_star + 1 :] = torch.randn_like(x2[:, t_star + 1 :])
    a2 = random_actions(spec, B, T, seed=1)
    a2[:, : t_star + 1] = a[:, : t_star + 1]
    for xx, aa in ((x2, a), (x, a2)):
        out = m(xx, t, aa, h)
        assert torch.equal(out.v[:, : t_star + 1], base.v[:, : t_star + 1])
        assert torch.equal(out.reward[:, : t_star + 1], base.reward[:, : t_star + 1])
    # ...and the change is visible later, so the test can fail.
    assert not torch.allclose(m(x2, t, a, h).v[:, t_star + 1 :], base.v[:, t_star + 1 :])


@pytest.mark.parametrize("sink,window", [(0, 6), (1, 5), (2, 3)])
def test_cache_matches_block_causal_forward(sink: int, window: int) -> None:
    """N frames one at a time through the KV cache == one block-causal forward (atol 1e-5, fp32)."""
    m, spec = tiny_denoiser()
    B, T = 3, sink + window + 1  # every frame fits: no rolling yet
    x, t = torch.randn(B, T, 4, 4, 4), torch.rand(B, T)
    a, h = random_actions(spec, B, T), torch.ones(B, T, dtype=torch.bool)
    full = m(x, t, a, h)
    cache = KVCache(m.cfg, CacheConfig(window=window, sink=sink), B)
    for i in range(T):
        out = m(x[:, i : i + 1], t[:, i : i + 1], a[:, i : i + 1], h[:, i : i + 1], cache.context(write=True))
        torch.testing.assert_close(out.v, full.v[:, i : i + 1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.term_logit, full.term_logit[:, i : i + 1], atol=1e-5, rtol=1e-5)


def test_sampler_through_cache_matches_full_forward() -> None:
    """The few-step sampler + clean commit == the same computation with full block-causal passes."""
    m, spec = tiny_denoiser()
    B, T, sched = 2, 4, [1.0, 0.75, 0.5, 0.25]
    a, h = random_actions(spec, B, T), torch.ones(B, T, dtype=torch.bool)
    noise = torch.randn(B, T, len(sched), 4, 4, 4)
    cache = KVCache(m.cfg, CacheConfig(window=T, sink=0), B)
    frames = []
    for i in range(T):
        x0 = denoise_frame(m, cache, a[:, i : i + 1], h[:, i : i + 1], noise[:, i], sched)
        commit_frame(m, cache, x0, a[:, i : i + 1], h[:, i : i + 1])
        frames.append(x0)
    # Reference: full forwards over [clean frames < i, noisy frame i].
    ref = []
    for i in range(T):
        x = noise[:, i, :1]
        for k, tk in enumerate(sched):
            inp = torch.cat([*ref, x], dim=1)
            tt = torch.cat([torch.zeros(B, i), torch.full((B, 1), tk)], dim=1)
            v = m(inp, tt, a[:, : i + 1], h[:, : i + 1]).v[:, -1:]
            x0 = x - tk * v
            if k + 1 < len(sched):
                x = (1 - sched[k + 1]) * x0 + sched[k + 1] * noise[:, i, k + 1 : k + 2]
        ref.append(x0)
    torch.testing.assert_close(torch.cat(frames, 1), torch.cat(ref, 1), atol=1e-4, rtol=1e-4)


def test_rolling_cache_flat_memory_10k_frames() -> None:
    """Once the window is full nothing grows; a 10,000-frame rollout stays finite."""
    world = tiny_world()
    sess = world.session(batch=1, seed=0)
    sess.reset()
    nbytes = sess.cache.nbytes
    ptrs = (sess.cache.k.data_ptr(), sess.cache.v.data_ptr())
    cap = world.config.cache.capacity
    for i in range(10_000):
        out = sess.step([i % 2])
        if i == cap + 1:
            valid_after_fill = int((sess.cache.frame_idx >= 0).sum())
    assert np.isfinite(out.rewards).all() and out.frames.dtype == np.uint8
    assert sess.cache.nbytes == nbytes and (sess.cache.k.data_ptr(), sess.cache.v.data_ptr()) == ptrs
    assert int((sess.cache.frame_idx >= 0).sum()) == valid_after_fill == cap
    assert int(sess.cache.count[0]) == 10_000 + world.config.context_frames


def test_positions_stay_bounded_when_rolling() -> None:
    """Frame 100,000 sees the same positions (and thus outputs) as an early full-window frame."""
    m, spec = tiny_denoiser()
    cfg = CacheConfig(window=3, sink=1)
    B = 1
    x = torch.randn(1, 1, 4, 4, 4)
    a, h, t = torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1)
    ctx_frames = torch.randn(6, 1, 1, 4, 4, 4)

    def run(offset: int) -> torch.Tensor:
        cache = KVCache(m.cfg, cfg, B)
        # sink frame, then `offset` filler frames, then the last 3 frames: same content in the window
        m(ctx_frames[0], torch.zeros(1, 1), a, h, cache.context(write=True))
        cache.count += offset  # pretend `offset` frames passed (their slots are overwritten below)
        for f in ctx_frames[1:4]:
            m(f, torch.zeros(1, 1), a, h, cache.context(write=True))
        return m(x, t, a, h, cache.context()).v

    # Same positions; only the ring-slot order (float summation order) differs.
    torch.testing.assert_close(run(0), run(100_000), atol=1e-4, rtol=1e-4)


def test_cache_mask_is_a_policy_argument() -> None:
    """``context(mask=...)``: auto looks at the slots, always/never are the caller's word."""
    m, _ = tiny_denoiser()
    cache = KVCache(m.cfg, CacheConfig(window=2, sink=0), 1)
    assert cache.context(mask="auto").mask is not None  # empty slots: masked
    assert cache.context(mask="never").mask is None
    cache.frame_idx[:] = torch.tensor([[0, 1]])
    cache.count[:] = 2
    assert cache.context(mask="auto").mask is None  # every slot filled
    mask = cache.context(mask="always").mask
    assert mask is not None and bool(mask.all())


def test_cache_snapshot_restores_rows_exactly() -> None:
    """A snapshot of a row, restored into any rows, continues exactly as the row would have."""
    world = tiny_world()
    s = world.session(2, seed=0)
    s.reset()
    for a in ([0, 1], [1, 1], [1, 0]):
        s.step(a)
    snap, rng = s.cache.snapshot([1]), s.generators[1].get_state()
    expected = s.step([0, 1]).frames[1]
    s.step([1, 0])
    s.cache.restore([0, 1], RowState.cat([snap, snap]))
    for g in s.generators:
        g.set_state(rng)
    out = s.step([1, 1]).frames
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], expected)
    with pytest.raises(ValueError, match="snapshot of 1 rows"):
        s.cache.restore([0, 1], snap)
