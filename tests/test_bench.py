"""`worldsim bench` runs end to end on a tiny world and writes valid JSON (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worldsim.cli import main


def test_bench_tiny_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--config",
            "tiny",
            "--frames",
            "5",
            "--warmup",
            "2",
            "--batch-sizes",
            "1,4",
            "--long-frames",
            "20",
            "--vector",
            "--grpc",
            "--grpc-clients",
            "2,5",
            "--modes",
            "eager,compiled",
            "--variants",
            "default,last-step-cache",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    rows = [(row["mode"], row["variant"], row["batch"]) for row in r["latency"]]
    assert rows == [
        ("eager", "default", 1),
        ("eager", "default", 4),
        ("compiled", "default", 1),
        ("compiled", "default", 4),
        ("compiled", "last-step-cache", 1),
        ("compiled", "last-step-cache", 4),
    ]
    assert all(row["frames_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in r["latency"])
    assert r["flops_per_frame"] > 0 and r["matmul_gflops"] > 0
    # Each row's share of the matmul rate is against a matmul timed around that row.
    assert all(row["matmul_gflops_around"] > 0 for row in r["latency"])
    assert all(("pct_of_matmul" in row) == (row["variant"] == "default") for row in r["latency"])
    # The ceiling is the frames/s at 100% of that matmul rate: the share is the row's rate against it.
    for row in (row for row in r["latency"] if row["variant"] == "default"):
        assert row["pct_of_matmul"] == pytest.approx(100 * row["frames_per_s"] / row["ceiling_frames_per_s"])
    assert r["memory"]["all_finite"] == 1.0
    assert set(r["vector_env_steps_per_s"]) == {"1", "16", "64"}
    assert r["grpc"]["clients_5"]["grpc"]["frames_per_s"] > 0
    assert "attention" in r["profile_ms_per_step_b1"]


def test_soak_memory_is_flat_and_a_leak_is_caught(tmp_path: Path) -> None:
    """The `--long-frames` soak on a tiny world: flat RSS over 120 frames; a leaking step is flagged."""
    import mmap

    from worldsim.bench import memory_over_rollout
    from worldsim.testing import tiny_world

    out = tmp_path / "soak.json"
    assert main(["bench", "--config", "tiny", "--soak-only", "--long-frames", "20", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["memory"]["frames"] == 20  # the CLI path

    world = tiny_world()
    mem = memory_over_rollout(world, 120, samples=6)
    assert mem["frames"] == 120 and [s["frame"] for s in mem["samples"]] == list(range(20, 121, 20))
    assert mem["flat"] is True and mem["all_finite"] == 1.0
    assert all(s["ms_per_frame"] > 0 for s in mem["samples"])

    make_session, kept = world.session, []

    def leaky_session(*args, **kwargs):  # type: ignore[no-untyped-def]
        sess = make_session(*args, **kwargs)
        step = sess.step

        def leaky_step(*a, **k):  # type: ignore[no-untyped-def]
            # 1 MiB per frame, never freed; fresh anonymous pages (a heap block could reuse memory that
            # earlier tests in the same process freed, and RSS would not move)
            block = mmap.mmap(-1, 1 << 20)
            block.write(b"\x01" * (1 << 20))
            kept.append(block)
            return step(*a, **k)

        sess.step = leaky_step
        return sess

    world.session = leaky_session  # type: ignore[method-assign]
    leak = memory_over_rollout(world, 48, samples=6)
    assert leak["flat"] is False and leak["rss_growth_mb"] > 30


def test_flops_per_frame_count_attention() -> None:
    """The FLOP count includes attention on CPU (torch's counter has no formula for SDPA's CPU
    kernel): a world keeping fewer past frames does fewer FLOPs, by exactly the attention it skips."""
    import dataclasses

    import torch

    from worldsim.bench import flops_per_frame
    from worldsim.testing import tiny_world

    counts = {}
    for window in (4, 2):
        w = tiny_world()
        w.config.cache = dataclasses.replace(w.config.cache, window=window)
        counts[window] = flops_per_frame(w.to_runtime(torch.device("cpu"), torch.float32, compile=False))
    cfg = tiny_world().config.denoiser
    per_slot = 4 * cfg.heads * cfg.tokens * cfg.tokens * cfg.head_dim * cfg.depth  # q k^T and p v, one row-pass
    passes = (counts[4] - counts[2]) / (2 * per_slot)  # two slots fewer
    assert passes >= 5 and passes == int(passes), passes  # 4 denoising steps + the cache pass (+ guidance rows)
