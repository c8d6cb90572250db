"""What makes training cheaper without changing it: the latent cache and the compiled training forward."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.testing import FixedSampler, tiny_world, toy_episodes
from worldsim.train import latents
from worldsim.train.compile import TrainForward
from worldsim.train.data import ClipSampler
from worldsim.train.latents import encode_episodes
from worldsim.train.loop import Dist, seed_everything
from worldsim.train.teacher import TeacherTrainConfig, train_teacher

CPU = torch.device("cpu")


@pytest.fixture()
def cache_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WORLDSIM_CACHE", str(tmp_path))
    monkeypatch.setenv(latents.ENV_VAR, "1")
    return tmp_path / "latents"


def test_latents_are_cached_by_codec_and_frames(cache_on: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    codec = tiny_world().codec
    eps = toy_episodes(n=3)
    first = encode_episodes(codec, eps, CPU)
    assert [len(e) for e in first] == [len(e) for e in eps]
    assert first[0].frames.dtype == np.float32 and first[0].frames.ndim == 4
    assert len(list(cache_on.glob("*.npy"))) == 1
    # Per-episode encoding (what training did before the cache) gives the same latents.
    alone = codec.encode(torch.from_numpy(eps[1].frames)).numpy()
    np.testing.assert_allclose(first[1].frames, alone, atol=1e-5)

    def no_encoding(*a: object, **k: object) -> None:
        raise AssertionError("encoded although the cache had the latents")

    monkeypatch.setattr(latents, "_encode_all", no_encoding)
    again = encode_episodes(codec, eps, CPU)
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(first, again))
    assert all(np.array_equal(a.actions, b.actions) for a, b in zip(eps, again))
    # Other frames, or another codec: another key, so encoded anew (here: refused by the patch).
    other = toy_episodes(n=3, seed=1)
    with pytest.raises(AssertionError, match="encoded"):
        encode_episodes(codec, other, CPU)
    changed = copy.deepcopy(codec)
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    with pytest.raises(AssertionError, match="encoded"):
        encode_episodes(changed, eps, CPU)


def test_corrupt_latent_cache_is_encoded_again(cache_on: Path, caplog: pytest.LogCaptureFixture) -> None:
    codec = tiny_world().codec
    eps = toy_episodes(n=2)
    first = encode_episodes(codec, eps, CPU)
    (path,) = cache_on.glob("*.npy")
    path.write_bytes(b"not a numpy file")
    with caplog.at_level(logging.WARNING, logger="worldsim.train.latents"):
        again = encode_episodes(codec, eps, CPU)
    assert "encoding again" in caplog.text
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(first, again))
    assert np.load(path).shape[0] == sum(len(e) for e in eps)  # rewritten


def test_latent_cache_off_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLDSIM_CACHE", str(tmp_path))
    monkeypatch.setenv(latents.ENV_VAR, "0")
    encode_episodes(tiny_world().codec, toy_episodes(n=1), CPU)
    assert not (tmp_path / "latents").exists()


def _teacher_run(tmp_path: Path, compiled: bool) -> tuple[list[torch.Tensor], torch.nn.Module]:
    world = tiny_world()
    sampler = ClipSampler(encode_episodes(world.codec, toy_episodes(), CPU), clip_len=6, seed=0)
    seed_everything(0)
    cfg = TeacherTrainConfig(steps=3, batch=4, clip_len=6, lr=3e-3, warmup=1, save_every=1000)
    train_teacher(cfg, world, FixedSampler(sampler, 4), tmp_path, CPU, Dist(), compile_model=compiled)  # type: ignore[arg-type]
    return [p.detach().clone() for p in world.denoiser.parameters()], world.denoiser


def test_compiled_teacher_steps_match_eager(tmp_path: Path) -> None:
    """Three optimizer steps through torch.compile land on the eager steps' weights."""
    eager, _ = _teacher_run(tmp_path / "eager", compiled=False)
    comp, _ = _teacher_run(tmp_path / "compiled", compiled=True)
    worst = max((a - b).abs().max().item() for a, b in zip(eager, comp))
    assert worst < 1e-4, worst


def test_training_forward_falls_back_to_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_world().denoiser

    def broken(module: torch.nn.Module, **kwargs: object):  # type: ignore[no-untyped-def]
        def run(*a: object, **k: object) -> None:
            raise RuntimeError("no C++ compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    fwd = TrainForward(model, enabled=True)
    B, T, C, s = 2, 3, model.cfg.latent_channels, model.cfg.latent_size
    args = (
        torch.randn(B, T, C, s, s),
        torch.rand(B, T),
        torch.zeros(B, T, dtype=torch.long),
        torch.ones(B, T, dtype=torch.bool),
    )
    with caplog.at_level(logging.WARNING, logger="worldsim.train.compile"):
        out = fwd(*args)
    assert "training continues eager" in caplog.text and not fwd.is_compiled
    torch.testing.assert_close(out.v, model(*args).v)


def test_training_throughput_bench_runs_the_real_stages(tmp_path: Path) -> None:
    from worldsim.cli import main

    out = tmp_path / "train.json"
    assert (
        main(["bench", "--config", "tiny", "--training", "--modes", "eager", "--train-steps", "2", "--json", str(out)])
        == 0
    )

    rows = json.loads(out.read_text())["training"]
    assert [(r["stage"], r["mode"]) for r in rows] == [("teacher", "eager"), ("self-forcing", "eager")]
    assert all(r["steps_per_s"] > 0 and r["s_per_step"] > 0 for r in rows)
    assert rows[0]["batch"] == 16 and rows[1]["batch"] == 8  # the stage defaults (no bundled recipe)


def test_training_throughput_refuses_what_it_cannot_measure() -> None:
    from worldsim.train.throughput import stage_throughput

    with pytest.raises(ValueError, match="teacher, self-forcing"):
        stage_throughput(tiny_world(), "codec", False, 2, 1, {})
    with pytest.raises(ValueError, match="steps >= 2"):
        stage_throughput(tiny_world(), "teacher", False, 1, 1, {})
