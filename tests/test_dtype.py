"""Dtype decided once at load (argument, WORLDSIM_DTYPE, the hardware); bf16 passes and their math
attention."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worldsim.testing import tiny_world


def test_dtype_is_decided_at_load_by_argument_or_worldsim_dtype(
    tiny_world_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worldsim.engine.world import WorldModel, cpu_has_native_bf16, parse_dtype

    monkeypatch.delenv("WORLDSIM_DTYPE", raising=False)
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype("auto") is None and parse_dtype(None) is None
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        parse_dtype("int8")
    want = torch.bfloat16 if cpu_has_native_bf16() else torch.float32  # the hardware's default
    assert WorldModel.load(tiny_world_path, device="cpu", compile=False).dtype == want
    monkeypatch.setenv("WORLDSIM_DTYPE", "bfloat16")
    w = WorldModel.load(tiny_world_path, device="cpu", compile=False)
    assert w.dtype == torch.bfloat16
    out = w.session(batch=2, seed=0)
    out.reset()
    step = out.step([0, 1])
    assert step.frames.shape == (2, 64, 64, 3) and step.frames.dtype == np.uint8 and np.isfinite(step.rewards).all()
    # an explicit argument beats the environment
    assert WorldModel.load(tiny_world_path, device="cpu", dtype=torch.float32, compile=False).dtype == torch.float32


@pytest.mark.parametrize(
    "space",
    [gym.spaces.Box(-2.0, 2.0, (1,), np.float32), gym.spaces.MultiBinary(3), gym.spaces.MultiDiscrete([3, 2])],
    ids=["box", "multi_binary", "multi_discrete"],
)
def test_every_action_space_steps_in_bfloat16(space: gym.spaces.Space) -> None:
    world = tiny_world(space).to_runtime(torch.device("cpu"), torch.bfloat16, compile=False)
    sess = world.session(batch=2, seed=0)
    sess.reset()
    out = sess.step(np.stack([space.sample(), space.sample()]))
    assert out.frames.shape == (2, 64, 64, 3) and np.isfinite(out.rewards).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_math_attention_matches_sdpa(dtype: torch.dtype, tol: float) -> None:
    from worldsim.model.attention import additive_mask, attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 8, 16, generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(3, 1, 1, 8, dtype=torch.bool)
    mask[1, ..., :5] = False  # a row whose first slots are empty, as in a filling cache
    for m in (None, mask):
        torch.testing.assert_close(attend(q, k, v, m, math=True), attend(q, k, v, m), atol=tol, rtol=tol)
    bias = additive_mask(mask, dtype)  # what bf16 passes get (the compiled softmax is faster over it)
    assert bias.dtype == dtype and bool((bias[1, ..., :5] == float("-inf")).all()) and bool((bias[0] == 0).all())
    torch.testing.assert_close(attend(q, k, v, bias, math=True), attend(q, k, v, mask), atol=tol, rtol=tol)


def test_bf16_passes_use_math_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine picks matmul attention for bf16 CPU passes at every batch size, never in fp32."""
    from worldsim.model import attention

    calls: list[int] = []
    real = attention.math_attention

    def counting(q: torch.Tensor, *args: object) -> torch.Tensor:
        calls.append(q.shape[0])
        return real(q, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(attention, "math_attention", counting)
    world = tiny_world().to_runtime(torch.device("cpu"), torch.bfloat16, compile=False)
    for batch in (1, 8):
        s = world.session(batch, seed=0)
        s.reset()
        s.step([0] * batch)
    assert set(calls) == {1, 8}
    calls.clear()
    fp32 = tiny_world().to_runtime(torch.device("cpu"), torch.float32, compile=False)
    s = fp32.session(8, seed=0)
    s.reset()
    s.step([0] * 8)
    assert calls == []


def test_default_dtype_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 where it is native (CUDA, a CPU with AVX512-BF16 / AMX), else fp32; WORLDSIM_DTYPE wins."""
    from worldsim.engine import world as world_mod

    assert isinstance(world_mod.cpu_has_native_bf16(), bool)  # the real probe runs on any CPU
    monkeypatch.delenv(world_mod.DTYPE_ENV, raising=False)
    cpu = torch.device("cpu")
    for native, want in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(world_mod, "cpu_has_native_bf16", lambda native=native: native)
        assert world_mod.default_dtype(cpu) == want
    assert world_mod.default_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setenv(world_mod.DTYPE_ENV, "fp32")
    monkeypatch.setattr(world_mod, "cpu_has_native_bf16", lambda: True)
    assert world_mod.default_dtype(cpu) == torch.float32


def test_sigmoid_gelu_is_the_tanh_gelu() -> None:
    """The compiled passes' GELU (``x * sigmoid(2 z)``) is ``F.gelu(approximate="tanh")`` to float
    rounding, alone and through a whole cached pass."""
    from worldsim.model.denoiser import gelu_tanh_as_sigmoid

    x = torch.linspace(-8, 8, 10_001)
    torch.testing.assert_close(gelu_tanh_as_sigmoid(x), F.gelu(x, approximate="tanh"), atol=2e-6, rtol=1e-5)
    world = tiny_world()
    sess = world.session(batch=2, seed=0)
    sess.reset()
    f = sess.cache.frame_kv("always")
    den = world.denoiser
    g = torch.Generator().manual_seed(0)
    c = world.config.denoiser
    x = torch.randn(2, 1, c.latent_channels, c.latent_size, c.latent_size, generator=g)
    args = (x, torch.full((2, 1), 0.5), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool))
    a = den.forward_kv(*args, f.q_cos, f.q_sin, f.mask, f.k, f.v)
    b = den.forward_kv(*args, f.q_cos, f.q_sin, f.mask, f.k, f.v, sigmoid_gelu=True)
    torch.testing.assert_close(a[0].v, b[0].v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=1e-5)
