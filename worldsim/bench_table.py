"""The table ``worldsim bench`` prints from its result dict (the same dict it writes as JSON)."""

from __future__ import annotations

from typing import Any


def memory_line(mem: dict[str, Any]) -> str:
    s = mem["samples"]
    return (
        f"memory: KV cache {mem['kv_cache_mb']:.1f} MB; RSS {mem.get('rss_mb_at_1000', float('nan')):.0f} MB at frame "
        f"{min(1000, int(mem['frames']))}, {mem['rss_mb_at_end']:.0f} MB at frame {int(mem['frames'])}; "
        f"growth after frame {s[0]['frame']}: {mem['rss_growth_mb']:+.1f} MB (peak {mem['rss_peak_growth_mb']:+.1f}, "
        f"{'flat' if mem['flat'] else 'GROWING'}); ms/frame {s[0]['ms_per_frame']:.1f} first segment, "
        f"{s[-1]['ms_per_frame']:.1f} last; finite: {bool(mem['all_finite'])}"
    )


def print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"\nworldsim bench: {r['world']} ({r['params_m']:.2f} M params) on {m['device']} {m['dtype']}, "
        f"{m['threads']} threads, torch {m['torch']}"
    )
    print(
        f"{'mode':>9} {'variant':>16} {'batch':>6} {'frames/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'compile s':>10}"
        f" {'% matmul':>9} {'ceiling':>8}"
    )
    for row in r["latency"]:
        pct = f"{row['pct_of_matmul']:>9.0f}" if "pct_of_matmul" in row else f"{'':>9}"
        if "ceiling_frames_per_s" in row:
            pct += f" {row['ceiling_frames_per_s']:>8.0f}"
        print(
            f"{row.get('mode', 'eager'):>9} {row.get('variant', 'default'):>16} {row['batch']:>6} "
            f"{row['frames_per_s']:>10.1f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row.get('compile_s', 0):>10.1f} {pct}"
        )
    print(
        "% matmul: the row's GFLOP/s against a 1024^3 matmul in the world's dtype timed just before and after "
        "it (0.3 s each; this machine's matmul rate drifts between rows); ceiling: the frames/s at 100% of that "
        "rate (an absolute target above it needs fewer FLOPs per frame, not a faster step)"
    )
    print(
        f"FLOPs/frame {r['flops_per_frame'] / 1e6:.0f} M; achieved {r['achieved_gflops_b1']:.1f} GFLOP/s at batch 1, "
        f"{r['achieved_gflops_best']:.1f} best = {r['pct_of_matmul_best']:.0f}% of a 1024^3 matmul in "
        f"{str(r['machine']['dtype']).removeprefix('torch.')} ({r['matmul_gflops']:.0f} GFLOP/s; "
        f"fp32 {r.get('matmul_gflops_fp32', r['matmul_gflops']):.0f})"
    )
    print(memory_line(r["memory"]))
    if "profile_ms_per_step_b1" in r:
        print("one batch-1 step (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["profile_ms_per_step_b1"].items()))
    for mode, ff in r.get("first_frame", {}).items():
        print(
            f"first frame ({mode}, fresh process, load -> frame): cold {ff['cold']['load_to_first_frame_s']:.1f} s, "
            f"warm {ff['warm']['load_to_first_frame_s']:.1f} s (import torch {ff['warm']['import_s']:.1f} s)"
        )
    if "vector_env_steps_per_s" in r:
        print("VectorEnv steps/s: " + ", ".join(f"N={n}: {v:.0f}" for n, v in r["vector_env_steps_per_s"].items()))
    if "grpc" in r:
        for k, v in r["grpc"].items():
            print(
                f"gRPC {k}: in-process {v['in_process']['frames_per_s']:.0f} f/s (p50 {v['in_process']['p50_ms']:.1f} ms), "
                f"loopback {v['grpc']['frames_per_s']:.0f} f/s (p50 {v['grpc']['p50_ms']:.1f} ms, of it "
                f"{v['grpc'].get('server_p50_ms', float('nan')):.1f} in the server; p99 {v['grpc']['p99_ms']:.1f}), "
                f"{v['throughput_ratio']:.0%} of in-process (median of {len(v.get('round_ratios', [0]))} side-by-side "
                "pairs), clients in " + ("their own process" if v.get("client_process") else "the server's process")
            )
