"""Metrics on known inputs, and `worldsim eval` end to end on a tiny world and short episodes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from worldsim.eval.metrics import (
    PSNR_CAP,
    correlation,
    end_precision_recall,
    frechet_distance,
    psnr,
    sign_agreement,
    ssim,
)


def _frames(seed: int = 0, n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


def test_psnr_known_values() -> None:
    a = _frames()
    assert np.all(psnr(a, a) == PSNR_CAP)
    b = np.clip(a.astype(int) + 5, 0, 255).astype(np.uint8)
    mse = ((a.astype(float) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255**2 / mse))
    flat = np.zeros((1, 64, 64, 3), np.uint8)
    np.testing.assert_allclose(psnr(flat, flat + 10), 10 * np.log10(255**2 / 100))


def test_ssim_known_values() -> None:
    a = _frames()
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-12)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert np.all(ssim(a, noisy) < 0.9)
    shifted = np.roll(a, 3, axis=2)  # a known shift lowers structure similarity of noise images to ~0
    assert np.all(np.abs(ssim(a, shifted)) < 0.1)
    assert ssim(a, a[::-1]).shape == (3,)


def test_frechet_distance_known_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 4))
    assert abs(frechet_distance(x, x)) < 1e-6
    mu = np.array([1.0, 2.0, 0.0, -1.0])
    assert frechet_distance(x, x + mu) == pytest.approx(float((mu**2).sum()), rel=1e-6)
    y = rng.normal(size=(4000, 4)) * 2  # var 4 vs 1: trace term = 4 * (1 + 4 - 2*2) = 4
    assert frechet_distance(x, y) == pytest.approx(4.0, abs=0.4)


def test_control_and_end_metrics() -> None:
    assert sign_agreement(np.array([1.0, -2, 3]), np.array([2.0, -1, -1])) == pytest.approx(2 / 3)
    assert correlation(np.arange(5.0), 2 * np.arange(5.0)) == pytest.approx(1.0)
    pred = np.array([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]], bool)
    real = np.array([[0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
    p, r = end_precision_recall(pred, real, np.ones_like(pred))
    assert p == pytest.approx(0.5) and r == pytest.approx(1.0)


def test_eval_end_to_end(tmp_path: Path, tiny_world_path: Path) -> None:
    from worldsim.data.record import RecordConfig, config_for, record
    from worldsim.eval.cli import main

    args = argparse.Namespace(
        out=tmp_path / "data", episodes=3, policy="scripted", seed=0, max_steps=30, frameskip=None
    )
    cfg: RecordConfig = config_for("cartpole", args)
    record(cfg, progress=False)
    out = tmp_path / "eval"
    ns = argparse.Namespace(
        checkpoints=[str(tiny_world_path), str(tiny_world_path)],
        world="cartpole",
        names="a,b",
        data=tmp_path / "data",
        split="test",
        episodes=2,
        horizon=12,
        horizons="1,10",
        no_control=False,
        out=out,
        seed=0,
        device="cpu",
    )
    assert main(ns) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"a", "b"}
    assert len(res["models"]["a"]["curves"]["psnr"]) == 12
    assert res["models"]["a"]["curves"]["psnr"] == res["models"]["b"]["curves"]["psnr"]  # same model, same seed
    assert "pole_angle" in res["control"]["a"]
    for f in ("report.md", "psnr.png", "ssim.png", "filmstrip.png", "pole_angle_err.png"):
        assert (out / f).stat().st_size > 0, f
