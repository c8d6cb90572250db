"""The few-step sampler's options: action guidance (all steps or the first ones), history guidance, eta, cache noise."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from worldsim.engine import CacheConfig, KVCache, SamplerConfig, WorldModel
from worldsim.testing import random_actions, tiny_denoiser, tiny_world


def test_guided_rollout_differs_from_unguided() -> None:
    """The guidance scale reaches the sampler (so the guided tests below test guidance)."""
    frames = []
    for scale in (1.0, 3.0):
        world = tiny_world(sampler=SamplerConfig(guidance_scale=scale))
        s = world.session(1, seed=0)
        s.reset()
        frames.append(np.stack([s.step([i % 2]).frames for i in range(3)]))
    assert not np.array_equal(frames[0], frames[1])


def test_guidance_on_the_first_steps_only() -> None:
    """``guidance_steps``: guidance on the first N steps, the action alone after. N = all steps is
    the plain guided sampler; the unguided steps read only the action's cache rows (half the work),
    and give what the same step run on both rows would: the model's cache protocol, which runs
    both, and the engine's explicit-tensor path, which runs half, agree."""
    from worldsim.engine.sampler import cache_passes, commit_context, denoise, kv_passes

    cfg = SamplerConfig(guidance_scale=2.0, guidance_steps=1)
    assert cfg.step_guidance() == [2.0, 1.0, 1.0, 1.0] and cfg.guided
    assert SamplerConfig(guidance_scale=2.0).step_guidance() == [2.0] * 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="guidance_steps"):
            SamplerConfig(guidance_steps=bad)  # type: ignore[arg-type]

    def rollout(sampler: SamplerConfig) -> np.ndarray:
        s = tiny_world(sampler=sampler).session(2, seed=0)
        s.reset()
        return np.stack([s.step([i % 2, 1]).frames for i in range(6)])

    every = rollout(SamplerConfig(guidance_scale=3.0))
    assert np.array_equal(rollout(SamplerConfig(guidance_scale=3.0, guidance_steps=4)), every)
    assert not np.array_equal(rollout(SamplerConfig(guidance_scale=3.0, guidance_steps=1)), every)

    m, spec = tiny_denoiser()
    B, K = 3, 3
    ctx, acts = torch.randn(B, K, 4, 4, 4), random_actions(spec, B, K + 1)
    noise = torch.randn(B, 4, 4, 4, 4)
    x0 = []
    for make in (lambda c: cache_passes(m, c), lambda c: kv_passes(m.forward_kv, c)):
        cache = KVCache(m.cfg, CacheConfig(window=4), batch=2 * B)
        commit_context(m, cache, ctx, acts[:, :K], guided=True)
        has = torch.ones(B, 1, dtype=torch.bool)
        with torch.no_grad():
            x0.append(denoise(make(cache), acts[:, K:], has, noise, [1.0, 0.75, 0.5, 0.25], [3.0, 3.0, 1.0, 1.0]).x0)
    torch.testing.assert_close(x0[0], x0[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_history_guidance_short_pass_sees_the_last_frame_alone(guidance: float) -> None:
    """History guidance's short pass is the model on [the last frame alone, as an episode's first
    frame, the new frame]: a two-frame block-causal forward gives the same velocity. Scale 0
    changes no byte (no extra pass); another scale changes the frames; bad scales are refused."""
    from worldsim.engine.compiled import eager_forward_kv
    from worldsim.engine.sampler import kv_passes

    assert SamplerConfig(guidance_steps=1, history_guidance=0.5).step_history_guidance() == [0.5, 0, 0, 0]
    assert SamplerConfig(history_guidance=1.0).step_history_guidance() == [1.0] * 4
    with pytest.raises(ValueError, match="history_guidance"):
        SamplerConfig(history_guidance=float("nan"))

    base = SamplerConfig(guidance_scale=guidance, guidance_steps=1)
    world = tiny_world(sampler=dataclasses.replace(base, history_guidance=1.0))
    s = world.session(2, seed=0)
    s.reset()
    s.step([0, 1])
    m, B = world.denoiser, 2
    last = torch.as_tensor(s.frames)
    x = torch.randn(B, 1, *world.codec.encode(last).shape[1:])
    t, a = torch.full((B, 1), 0.75), torch.as_tensor([[1], [0]])
    with torch.inference_mode():
        short = s._last_frame_passes(eager_forward_kv(m), last)(x, t, a, torch.ones(B, 1, dtype=torch.bool), False).v
        ref = m(
            torch.cat([world.codec.encode(last)[:, None], x], 1),
            torch.cat([torch.zeros(B, 1), t], 1),
            torch.cat([torch.as_tensor(world.action_spec.null(B))[:, None], a], 1),
            torch.tensor([[False, True]] * B),
        ).v[:, -1:]
    # The engine's eager pass differs from the model's forward by ~1e-4 here (its attention
    # kernel); the whole history moves the velocity by ~2e-2.
    torch.testing.assert_close(short, ref, atol=1e-3, rtol=0)
    full = kv_passes(eager_forward_kv(m), s.cache.gather([0, 2] if guidance != 1.0 else [0, 1]))
    with torch.inference_mode():
        assert (full(x, t, a, torch.ones(B, 1, dtype=torch.bool), False).v - ref).abs().max() > 1e-2

    def rollout(sampler: SamplerConfig) -> np.ndarray:
        s = tiny_world(sampler=sampler).session(2, seed=0)
        s.reset()
        return np.stack([s.step([i % 2, 1]).frames for i in range(8)])

    off = rollout(base)
    assert np.array_equal(rollout(dataclasses.replace(base, history_guidance=0.0)), off)
    assert not np.array_equal(rollout(dataclasses.replace(base, history_guidance=4.0)), off)


def test_eta_mixes_fresh_and_implied_noise(tmp_path: Path) -> None:
    """``eta`` = 1 is the fresh-noise sampler (byte-identical to leaving it out), 0 is an Euler
    step of the flow (the re-noise slices are never read), and a checkpoint without the field loads
    with eta = 1; values outside [0, 1] are refused."""
    from worldsim.engine.sampler import cache_passes, commit_context

    f = _one_frame_runner()
    run, noise, B = f.run, f.noise, f.noise.shape[0]
    other = noise.clone()
    other[:, 1:] = torch.randn(B, 3, 4, 4, 4)  # the same start, other re-noise slices

    assert torch.equal(run(noise, eta=1.0), run(noise))
    assert not torch.equal(run(noise), run(other))  # fresh noise is read ...
    torch.testing.assert_close(run(noise, eta=0.0), run(other, eta=0.0))  # ... an Euler step never reads it
    half = run(noise, eta=0.5)
    assert not torch.allclose(half, run(noise)) and not torch.allclose(half, run(noise, eta=0.0))

    # the Euler step by hand: x <- x + (t' - t) v, the last prediction x0 = x - t v
    m, acts, K, schedule = f.model, f.actions, f.context.shape[1], f.schedule
    cache = KVCache(m.cfg, CacheConfig(window=4), batch=B)
    commit_context(m, cache, f.context, acts[:, :K])
    passes, x = cache_passes(m, cache), noise[:, :1]
    with torch.no_grad():
        for i, t in enumerate(schedule):
            v = passes(x, torch.full((B, 1), t), acts[:, K:], f.has, False).v
            x = x + ((schedule[i + 1] if i + 1 < len(schedule) else 0.0) - t) * v
    torch.testing.assert_close(run(noise, eta=0.0), x, atol=1e-5, rtol=1e-5)

    for bad in (-0.1, 1.5, True, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            SamplerConfig(eta=bad)  # type: ignore[arg-type]
    assert SamplerConfig().with_overrides(["eta=0"]).eta == 0

    from safetensors import safe_open
    from safetensors.torch import save_file

    world = tiny_world(sampler=SamplerConfig(eta=0.0))
    world.save(tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), "pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    assert config["sampler"].pop("eta") == 0.0  # self-describing: the file says how it samples
    save_file(world.state_tensors(), str(tmp_path / "old.safetensors"), metadata={**meta, "config": json.dumps(config)})
    assert WorldModel.load(tmp_path / "old.safetensors", device="cpu").config.sampler.eta == 1.0


def test_cache_noise_commits_generated_frames_renoised() -> None:
    """``cache_noise`` = 0 changes no byte; a level > 0 writes the generated frame into the cache
    re-noised to that level (one more noise slice a frame, drawn from the row's generator: the same
    seed replays the same rollout), which the next frames see; the first frame, which reads only
    the clean context, is unchanged. Bad levels, and a level with ``cache_pass=last_step``, are refused."""
    for bad in (-0.1, 1.0, True, "0.1"):
        with pytest.raises(ValueError, match="cache_noise"):
            SamplerConfig(cache_noise=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache_pass='clean'"):
        SamplerConfig(cache_noise=0.1, cache_pass="last_step")

    def rollout(sampler: SamplerConfig) -> np.ndarray:
        s = tiny_world(sampler=sampler).session(2, seed=0)
        s.reset()
        return np.stack([s.step([i % 2, 1]).frames for i in range(6)])

    base = SamplerConfig(guidance_scale=2.0, guidance_steps=1)
    off = rollout(base)
    assert np.array_equal(rollout(dataclasses.replace(base, cache_noise=0.0)), off)
    noisy = rollout(dataclasses.replace(base, cache_noise=0.5))
    assert np.array_equal(noisy, rollout(dataclasses.replace(base, cache_noise=0.5)))
    assert np.array_equal(noisy[0], off[0]) and not np.array_equal(noisy[1:], off[1:])


def test_renoise_scale_is_a_temperature_on_the_fresh_noise() -> None:
    """``renoise_scale`` = 1 changes no byte; s scales each re-noise slice by s (a session at s
    equals the same noise with slices 1+ scaled by hand), 0 never reads them; the starting slice is
    never scaled. Bad values are refused; the session carries it through (same seed, same frames)."""
    f = _one_frame_runner()
    run, noise = f.run, f.noise
    B = noise.shape[0]
    assert torch.equal(run(noise, renoise_scale=1.0), run(noise))
    by_hand = noise.clone()
    by_hand[:, 1:] *= 0.7
    torch.testing.assert_close(run(noise, renoise_scale=0.7), run(by_hand))
    assert not torch.allclose(run(noise, renoise_scale=0.7), run(noise))
    other = noise.clone()
    other[:, 1:] = torch.randn(B, 3, 4, 4, 4)
    torch.testing.assert_close(run(noise, renoise_scale=0.0), run(other, renoise_scale=0.0))
    start = noise.clone()
    start[:, :1] = torch.randn(B, 1, 4, 4, 4)
    assert not torch.allclose(run(noise, renoise_scale=0.0), run(start, renoise_scale=0.0))

    for bad in (-0.1, 1.5, True, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="renoise_scale"):
            SamplerConfig(renoise_scale=bad)  # type: ignore[arg-type]
    assert SamplerConfig().with_overrides(["renoise_scale=0.7"]).renoise_scale == 0.7

    def rollout(sampler: SamplerConfig) -> np.ndarray:
        s = tiny_world(sampler=sampler).session(2, seed=0)
        s.reset()
        return np.stack([s.step([i % 2, 1]).frames for i in range(4)])

    base = SamplerConfig(guidance_scale=2.0, guidance_steps=1)
    assert np.array_equal(rollout(dataclasses.replace(base, renoise_scale=1.0)), rollout(base))
    cool = rollout(dataclasses.replace(base, renoise_scale=0.5))
    assert np.array_equal(cool, rollout(dataclasses.replace(base, renoise_scale=0.5)))
    assert not np.array_equal(cool, rollout(base))


def test_eval_report_names_the_sampler_changes() -> None:
    """The eval's model line lists every sampler field that is not the default (a shipped file's
    ``renoise_scale`` must show in its report), and nothing for a default sampler."""
    from worldsim.eval.evaluate import sampler_changes

    assert sampler_changes(SamplerConfig(guidance_scale=2.0)) == []
    got = sampler_changes(SamplerConfig(guidance_scale=2.0, guidance_steps=1, renoise_scale=0.7))
    assert got == ["guidance_steps=1", "renoise_scale=0.7"]


@dataclasses.dataclass
class _OneFrame:
    """What ``_one_frame_runner`` built: ``run(noise, **sampler_kwargs)`` -> the next frame's x0
    (2, 1, 4, 4, 4) from a fresh cache each call, a noise tensor (2, 4, 4, 4, 4) to start from, and
    the parts it runs on (for a step computed by hand)."""

    run: Callable[..., torch.Tensor]
    noise: torch.Tensor
    model: Any
    context: torch.Tensor  # (B, K, C, h, w)
    actions: torch.Tensor  # (B, K + 1, ...)
    has: torch.Tensor  # (B, 1) bool
    schedule: list[float]


def _one_frame_runner() -> _OneFrame:
    """A tiny denoiser after 2 context frames, sampling one frame with 4 denoising steps."""
    from worldsim.engine.sampler import cache_passes, commit_context, denoise

    m, spec = tiny_denoiser()
    B, K, schedule = 2, 2, [1.0, 0.75, 0.5, 0.25]
    ctx, acts = torch.randn(B, K, 4, 4, 4), random_actions(spec, B, K + 1)
    has = torch.ones(B, 1, dtype=torch.bool)

    def run(z: torch.Tensor, **kw: Any) -> torch.Tensor:
        cache = KVCache(m.cfg, CacheConfig(window=4), batch=B)
        commit_context(m, cache, ctx, acts[:, :K])
        with torch.no_grad():
            return denoise(cache_passes(m, cache), acts[:, K:], has, z, schedule, **kw).x0

    return _OneFrame(run, torch.randn(B, 4, 4, 4, 4), m, ctx, acts, has, schedule)
