"""The compiled per-frame step (``worldsim.engine.compiled``) gives the eager step's frames.

Rollouts run longer than the cache (sink 1 + window 4), so both the filling and the full cache
are compared, at batch 1 and in a guided batch whose rows are at different fill states (one row
reset mid-rollout). Tolerance: frames within 2 of 255 levels (float reassociation in fused
kernels), rewards within 1e-3, the same episode ends. Then the fallback: a compile that fails
means one warning and the eager step, with the same frames.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.engine import compiled as compiled_mod
from worldsim.engine.world import WorldModel
from worldsim.testing import tiny_world


def _world(compile: bool, guidance: float = 1.0, guidance_steps: int | None = None, history: float = 0.0) -> WorldModel:
    w = tiny_world()
    w.config.sampler = dataclasses.replace(
        w.config.sampler, guidance_scale=guidance, guidance_steps=guidance_steps, history_guidance=history
    )
    return w.to_runtime(torch.device("cpu"), torch.float32, compile=compile)


def _rollout(world: WorldModel, batch: int, frames: int, reset_at: int | None = None) -> dict[str, np.ndarray]:
    sess = world.session(batch=batch, seed=3)
    sess.warmup()
    sess.reset(seed=3)
    rng = np.random.default_rng(0)
    out: dict[str, list[np.ndarray]] = {"frames": [], "rewards": [], "terminated": []}
    for i in range(frames):
        if reset_at is not None and i == reset_at:
            sess.reset(rows=[1], seed=11)  # row 1 refills its cache while the others stay full
        r = sess.step(rng.integers(0, 2, size=batch))
        out["frames"].append(r.frames)
        out["rewards"].append(r.rewards)
        out["terminated"].append(r.terminated)
    return {k: np.stack(v) for k, v in out.items()}


def _assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    diff = np.abs(a["frames"].astype(int) - b["frames"].astype(int))
    assert diff.max() <= 2, f"compiled frames differ from eager by up to {diff.max()} levels"
    assert diff.mean() < 0.01
    np.testing.assert_allclose(a["rewards"], b["rewards"], atol=1e-3)
    np.testing.assert_array_equal(a["terminated"], b["terminated"])


@pytest.mark.parametrize(
    ("batch", "guidance", "steps", "reset_at", "history"),
    [(1, 1.0, None, None, 0.0), (3, 2.0, None, 7, 0.0), (3, 2.0, 1, 7, 0.0), (3, 2.0, 1, 7, 1.0)],
)
def test_compiled_step_matches_eager(
    batch: int, guidance: float, steps: int | None, reset_at: int | None, history: float
) -> None:
    """``steps``: guidance on the first denoising step only (the later ones read half the cache rows);
    ``history``: history guidance (its short passes run over a one-slot cache)."""
    eager = _rollout(_world(False, guidance, steps, history), batch, 12, reset_at)
    world = _world(True, guidance, steps, history)
    fast = _rollout(world, batch, 12, reset_at)
    assert world.compiled is not None and world.compiled.active, "torch.compile fell back to eager"
    _assert_close(fast, eager)


def test_failed_compile_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    def broken_build(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setenv(compiled_mod.CACHE_ENV, str(tmp_path))  # nothing cached: a build is attempted
    monkeypatch.setattr(compiled_mod, "_build_package", broken_build)
    world = _world(True)
    with caplog.at_level(logging.WARNING, logger="worldsim.engine.compiled"):
        got = _rollout(world, 1, 8)
    assert world.compiled is not None and not world.compiled.active
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    failed = [m for m in warnings if "running eager" in m]
    assert len(failed) == 1, warnings  # one line, once: not per step
    assert "second line" not in failed[0]
    _assert_close(got, _rollout(_world(False), 1, 8))


@pytest.mark.parametrize(
    ("requested", "env", "device", "expected"),
    [
        (None, None, "cpu", True),
        (None, None, "cuda", False),
        (None, "0", "cpu", False),
        (None, "off", "cpu", False),
        (None, "1", "cuda", True),
        (False, "1", "cpu", False),
        (True, "0", "cpu", True),
    ],
)
def test_resolve(
    monkeypatch: pytest.MonkeyPatch, requested: bool | None, env: str | None, device: str, expected: bool
) -> None:
    if env is None:
        monkeypatch.delenv(compiled_mod.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(compiled_mod.ENV_VAR, env)
    assert compiled_mod.resolve(requested, torch.device(device)) is expected


@pytest.mark.parametrize(("cache_pass", "passes"), [("clean", 5), ("last_step", 4)])
def test_cache_pass_sets_the_passes_per_frame(cache_pass: str, passes: int) -> None:
    world = _world(False)
    world.config.sampler = world.config.sampler.with_overrides([f"cache_pass={cache_pass}"])
    assert world.config.sampler.passes_per_frame == passes
    history = world.config.sampler.with_overrides(["history_guidance=1.0", "guidance_steps=1"])
    assert history.passes_per_frame == passes + 2  # a short pass and the last frame's commit
    calls = []
    forward_kv = world.denoiser.forward_kv

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[0].shape[0])
        return forward_kv(*args, **kwargs)

    world.denoiser.forward_kv = counted  # type: ignore[method-assign]
    sess = world.session(batch=2, seed=0)
    sess.reset()
    for _ in range(6):  # past the cache's capacity (5): the ring rolls in both modes
        out = sess.step([0, 1])
        assert np.isfinite(out.rewards).all()
    assert len(calls) == 6 * passes
    assert sess.cache.count.tolist() == [2 + 6, 2 + 6]  # context + one write per frame


def test_sampler_overrides_name_the_fields() -> None:
    cfg = _world(False).config.sampler
    new = cfg.with_overrides(["timesteps=(1.0, 0.5)", "guidance_scale=2", "cache_pass=last_step"])
    assert new.timesteps == (1.0, 0.5) and new.guidance_scale == 2 and new.cache_pass == "last_step"
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        cfg.with_overrides(["steps=3"])
    with pytest.raises(ValueError, match="cache_pass must be one of"):
        cfg.with_overrides(["cache_pass=sometimes"])
    with pytest.raises(ValueError, match="guidance_scale must be a number"):
        cfg.with_overrides(["guidance_scale=strong"])
    with pytest.raises(ValueError, match=r"noise levels in \(0, 1\]"):
        cfg.with_overrides(["timesteps=(1.0, 0.0)"])


def test_sampler_command_bakes_values_in(
    tiny_world_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worldsim sampler W --set ...` writes a copy with the new sampler, the same weights and a
    provenance entry per change; a bad value writes nothing."""
    import json

    from worldsim import checkpoint as ckpt
    from worldsim.cli import main
    from worldsim.engine.world import WorldModel

    out = tmp_path / "tuned.safetensors"
    assert main(["sampler", str(tiny_world_path), "--set", "guidance_scale=1.5", "--out", str(out)]) == 0
    assert main(["sampler", str(out), "--set", "timesteps=(1.0, 0.5)"]) == 0  # in place, a second change
    w = WorldModel.load(out, device="cpu", compile=False)
    assert w.config.sampler.guidance_scale == 1.5 and w.config.sampler.timesteps == (1.0, 0.5)
    assert w.provenance["sampler"]["to"]["guidance_scale"] == 1.5 and "sampler-2" in w.provenance
    a, _ = ckpt.load_file(tiny_world_path)
    b, _ = ckpt.load_file(out)
    assert ckpt.tensor_digest(a) == ckpt.tensor_digest(b)
    capsys.readouterr()
    assert main(["sampler", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["guidance_scale"] == 1.5
    before = out.read_bytes()
    assert main(["sampler", str(out), "--set", "guidance_scale=strong"]) == 2
    assert "guidance_scale must be a number" in capsys.readouterr().err and out.read_bytes() == before


def test_a_corrupt_cached_package_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(compiled_mod.CACHE_ENV, str(tmp_path))
    world = _world(True)
    assert world.compiled is not None
    paths = [world.compiled.package_path(n, torch.device("cpu")) for n in ("forward_kv", "decode")]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"not a package")  # e.g. a copy cut short on another machine
    got = _rollout(world, 1, 3)
    assert world.compiled.active
    assert all(p.stat().st_size > 1000 for p in paths)  # rebuilt in place
    _assert_close(got, _rollout(_world(False), 1, 3))


def test_cache_window_command_and_its_own_package(
    tiny_world_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`worldsim sampler W --cache-window N` keeps N past frames (1 .. the trained window, which
    provenance remembers); the same weights with another window compile into a package of their own
    and run it compiled, with the eager frames."""
    from worldsim.cli import main

    monkeypatch.setenv(compiled_mod.CACHE_ENV, str(tmp_path / "cache"))
    small = tmp_path / "w2.safetensors"
    assert main(["sampler", str(tiny_world_path), "--cache-window", "2", "--out", str(small)]) == 0
    w = WorldModel.load(small, device="cpu", compile=False)
    assert w.config.cache.window == 2 and w.provenance["cache"]["trained_window"] == 4
    assert main(["sampler", str(small), "--cache-window", "5"]) == 2
    assert "must be in 1..4" in capsys.readouterr().err
    assert main(["sampler", str(small), "--cache-window", "4", "--out", str(tmp_path / "back.safetensors")]) == 0

    full = WorldModel.load(tiny_world_path, device="cpu", compile=True)
    fast = WorldModel.load(small, device="cpu", compile=True)
    got = _rollout(fast, 1, 8)
    assert fast.compiled is not None and fast.compiled.active
    assert full.compiled is not None
    cpu = torch.device("cpu")
    assert fast.compiled.package_path("forward_kv", cpu) != full.compiled.package_path("forward_kv", cpu)
    _assert_close(got, _rollout(WorldModel.load(small, device="cpu", compile=False), 1, 8))
    assert fast.session(batch=1).cache.k.shape[3] == 3  # sink 1 + window 2 slots (the trained world: 5)


def test_compiled_bf16_step_matches_eager() -> None:
    """A bf16 batch runs the matmul-attention package (its mask an additive bias): the eager
    twin's frames within bf16 tolerance, over a rollout past the cache's window, rows at
    different fill states."""
    worlds = []

    def rollout(compile: bool) -> dict[str, np.ndarray]:
        w = tiny_world()
        w.config.sampler = dataclasses.replace(w.config.sampler, guidance_scale=2.0, guidance_steps=1)
        worlds.append(w.to_runtime(torch.device("cpu"), torch.bfloat16, compile=compile))
        return _rollout(worlds[-1], 3, 8, reset_at=4)

    got, want = rollout(True), rollout(False)
    compiled = worlds[0].compiled
    assert compiled is not None and compiled.active
    assert compiled.package_path("forward_kv_math", torch.device("cpu")).exists()
    diff = np.abs(got["frames"].astype(int) - want["frames"].astype(int))
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 4, (diff.mean(), diff.max())
    np.testing.assert_array_equal(got["terminated"], want["terminated"])
