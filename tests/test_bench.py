"""`worldsim bench` runs end to end on a tiny world and writes valid JSON (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

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
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert [row["batch"] for row in r["latency"]] == [1, 4]
    assert all(row["frames_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in r["latency"])
    assert r["flops_per_frame"] > 0 and r["matmul_gflops"] > 0
    assert r["memory"]["all_finite"] == 1.0
    assert set(r["vector_env_steps_per_s"]) == {"1", "16", "64"}
    assert r["grpc"]["clients_16"]["grpc"]["frames_per_s"] > 0
    assert "attention" in r["profile_ms_per_step_b1"]
