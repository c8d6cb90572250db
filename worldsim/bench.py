"""``worldsim bench``: how fast a world runs on this machine.

    worldsim bench cartpole --json bench.json
    worldsim bench --config default --frames 500 --batch-sizes 1,16,64 --vector --grpc

Measures, decode included: batch-1 frames/s and p50/p99 latency per frame over ``--frames``
frames after ``--warmup``; throughput at larger batches; resident memory at frame 1,000 and at
frame ``--long-frames`` with the KV cache size; FLOPs per frame (counted by
``torch.utils.flop_counter`` on one step) and the achieved GFLOP/s against a 1024^3 matmul in the
world's dtype measured in the same run (and a fp32 one beside it), per row against the matmul
timed just before and after that row (a shared VM's matmul rate moved 3x between runs minutes
apart, 2026-12-13); where one step's time goes (torch.profiler, by op family). Optional:
VectorEnv steps/s (``--vector``) and gRPC overhead (``--grpc``). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.bench_modes import MODES, VARIANTS, configured, first_frame, matmul_gflops, parse_list
from worldsim.bench_table import memory_line, print_table
from worldsim.engine.world import WorldConfig, WorldModel, parse_dtype
from worldsim.threads import on_torch_thread

log = logging.getLogger(__name__)


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(
    target: str | None, config: str, device: torch.device, dtype: torch.dtype | None, compile: bool | None = None
) -> WorldModel:
    if target:
        from worldsim.worlds import world_path

        return WorldModel.load(world_path(target), device=device, dtype=dtype, compile=compile)
    import gymnasium as gym

    from worldsim.spaces import ActionSpec

    if config == "tiny":
        from worldsim.testing import tiny_world

        return tiny_world().to_runtime(device, dtype or torch.float32)
    world = WorldModel(WorldConfig(action_space=ActionSpec.from_space(gym.spaces.Discrete(2))))
    s = world.config.codec.image_size
    world.start_frames = torch.full((1, world.config.context_frames, s, s, 3), 255, dtype=torch.uint8)
    world.start_actions = torch.zeros(1, world.config.context_frames, dtype=torch.long)
    from worldsim.engine.world import default_dtype

    return world.to_runtime(device, dtype or default_dtype(device))


def _actions(world: WorldModel, batch: int, rng: np.random.Generator) -> np.ndarray:
    spec = world.action_spec
    space = spec.to_space()
    space.seed(int(rng.integers(2**31)))
    return spec.validate([space.sample() for _ in range(batch)])


def latency(world: WorldModel, batch: int, frames: int, warmup: int) -> dict[str, Any]:
    sess = world.session(batch=batch, seed=0)
    compile_s = sess.warmup()  # compiled worlds: compile for this batch before timing
    sess.reset()
    rng = np.random.default_rng(0)
    for _ in range(warmup):
        sess.step(_actions(world, batch, rng))
    lat = []
    t0 = time.perf_counter()
    for _ in range(frames):
        t = time.perf_counter()
        sess.step(_actions(world, batch, rng))
        lat.append((time.perf_counter() - t) * 1e3)
    wall = time.perf_counter() - t0
    return {
        "batch": batch,
        "steps": frames,
        "frames_per_s": frames * batch / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "compile_s": compile_s,
    }


def _cpu_sdpa_flops(q: Any, k: Any, v: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return int(sdpa_flop_count(q, k, v))


def flops_per_frame(world: WorldModel) -> float:
    """FLOPs of one batch-1 step, attention included: torch's counter has no formula for SDPA's CPU
    kernel (``_scaled_dot_product_flash_attention_for_cpu``), so it is given the GPU kernels' one
    (until 2026-12-05 the CPU count left attention out: 1.23 of 1.93 GFLOP for CartPole)."""
    from torch.utils.flop_counter import FlopCounterMode

    sess = world.session(batch=1, seed=0)
    sess.reset()
    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = FlopCounterMode(display=False, custom_mapping={cpu_sdpa: _cpu_sdpa_flops})
    with counter:
        sess.step(_actions(world, 1, np.random.default_rng(0)))
    return float(counter.get_total_flops())


def profile_step(world: WorldModel, steps: int = 20) -> dict[str, float]:
    """Share of one step's wall time by op family (self CPU time), the rest is Python/dispatch."""
    from torch.profiler import ProfilerActivity, profile

    sess = world.session(batch=1, seed=0)
    sess.reset()
    rng = np.random.default_rng(0)
    for _ in range(5):
        sess.step(_actions(world, 1, rng))
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            sess.step(_actions(world, 1, rng))
    wall_us = (time.perf_counter() - t) * 1e6
    families = {
        "attention": ("attention", "sdpa", "_flash", "bmm", "baddbmm"),
        "linear (matmul)": ("addmm", "aten::mm", "linear", "matmul"),
        "conv (decoder)": ("conv", "mkldnn", "upsample"),
        "norm / rope / elementwise": (
            "norm",
            "mul",
            "add",
            "cat",
            "silu",
            "gelu",
            "sin",
            "cos",
            "neg",
            "sub",
            "div",
            "rsqrt",
            "mean",
            "pow",
            "where",
            "copy",
            "index",
            "clamp",
        ),
    }
    out = dict.fromkeys(families, 0.0)
    total_self = 0.0
    for evt in prof.key_averages():
        name = evt.key.lower()
        self_us = evt.self_cpu_time_total
        total_self += self_us
        for fam, keys in families.items():
            if any(k in name for k in keys):
                out[fam] += self_us
                break
    ms = {k: v / steps / 1e3 for k, v in out.items()}
    ms["other ops"] = max(0.0, (total_self - sum(out.values())) / steps / 1e3)
    ms["python / dispatch / profiler overhead"] = max(0.0, (wall_us - total_self) / steps / 1e3)
    return ms


def memory_over_rollout(world: WorldModel, frames: int, samples: int = 20) -> dict[str, Any]:
    """The soak: one batch-1 rollout of ``frames`` frames, RSS and ms/frame sampled ``samples`` times.

    The rolling KV cache makes memory per frame constant, so after a warm-up (the first sample,
    at 1/``samples`` of the rollout: allocator pools, cache fill) resident memory must stay flat:
    ``rss_growth_mb`` is the change from that sample to the end, ``flat`` says it is within
    ``max(8 MB, 2%)`` (allocator noise), and ``ms_per_frame`` per segment shows time stays flat too.
    """
    sess = world.session(batch=1, seed=0)
    sess.reset()
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"kv_cache_mb": sess.cache.nbytes / 2**20}
    every = max(1, frames // max(1, samples))
    points: list[tuple[int, float, float]] = []  # (frame, RSS MB, ms per frame over the segment)
    finite = True
    t = time.perf_counter()
    for i in range(1, frames + 1):
        res = sess.step(_actions(world, 1, rng))
        finite &= bool(np.isfinite(res.rewards).all())
        if i == min(1000, frames):
            out["rss_mb_at_1000"] = rss_mb()
        if i % every == 0 or i == frames:
            now = time.perf_counter()
            points.append((i, rss_mb(), (now - t) * 1e3 / (i - (points[-1][0] if points else 0))))
            log.info("soak: frame %d of %d, RSS %.0f MB, %.1f ms/frame", i, frames, points[-1][1], points[-1][2])
            t = now
    out["frames"] = frames
    out["rss_mb_at_end"] = rss_mb()
    out["all_finite"] = float(finite)
    out["samples"] = [{"frame": f, "rss_mb": m, "ms_per_frame": ms} for f, m, ms in points]
    base = points[0][1]
    out["rss_growth_mb"] = out["rss_mb_at_end"] - base
    out["rss_peak_growth_mb"] = max(m for _, m, _ in points) - base
    out["flat"] = bool(out["rss_peak_growth_mb"] <= max(8.0, 0.02 * base))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", nargs="?", default=None, help="checkpoint or bundled world (default: --config)")
    parser.add_argument("--config", choices=("default", "tiny"), default="default", help="random weights at this size")
    parser.add_argument("--frames", type=int, default=500, help="timed frames at batch 1")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument(
        "--long-frames", type=int, default=2000, help="soak: rollout length of the memory check (e.g. 100000)"
    )
    parser.add_argument("--soak-only", action="store_true", help="only the --long-frames memory soak")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--vector", action="store_true", help="also VectorEnv steps/s at N = 1, 16, 64")
    parser.add_argument("--grpc", action="store_true", help="also gRPC loopback vs in-process (see --grpc-clients)")
    parser.add_argument(
        "--grpc-clients", default="1,16", metavar="N,N", help="with --grpc: streaming clients per measurement"
    )
    parser.add_argument(
        "--grpc-client-threads",
        action="store_true",
        help="with --grpc: run the clients as threads of the bench process (sharing the server's GIL) "
        "instead of a process of their own",
    )
    parser.add_argument(
        "--modes", default="eager,compiled", help="comma-separated: eager, compiled (torch.compile), side by side"
    )
    parser.add_argument(
        "--variants",
        default="default",
        help=f"sampler variants timed in the last mode: {', '.join(VARIANTS)} (comma-separated)",
    )
    parser.add_argument(
        "--first-frame", action="store_true", help="also seconds to the first frame in a fresh process, cold and warm"
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="only training steps/s: the teacher and Self Forcing stages, per --modes, on random latents of the "
        "world's shapes with its recipe's batch and clip length (--train-steps timed after 3 warm-up steps)",
    )
    parser.add_argument("--train-steps", type=int, default=20, help="with --training: timed steps per stage and mode")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def main(args: argparse.Namespace) -> int:
    """Every measurement on one thread (``worldsim.threads.torch_thread``), the gRPC one's client
    from this one: torch must run on a single thread of a process to keep its speed."""
    spec = str(getattr(args, "grpc_clients", "1,16"))
    clients = tuple(int(n) for n in spec.split(",") if n.strip().isdigit() and int(n) > 0)
    if len(clients) != len(spec.split(",")):
        raise SystemExit(f"--grpc-clients takes positive client counts like 1,16,64, got {spec!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if getattr(args, "training", False):
        return _training(args)
    out = on_torch_thread(_measure, args)
    if isinstance(out, int):
        return out
    res, world = out
    if args.grpc:
        from worldsim.serve.bench import bench_grpc

        res["grpc"] = bench_grpc(
            world,
            clients=clients,
            frames=max(200, 4 * max(clients)),
            client_process=not getattr(args, "grpc_client_threads", False),
        )
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        log.info("wrote %s", args.json)
    return 0


def _measure(args: argparse.Namespace) -> int | tuple[dict[str, Any], WorldModel]:
    from worldsim.engine.world import default_device

    device = torch.device(args.device) if args.device else default_device()
    dtype = parse_dtype(args.dtype)
    for flag in ("frames", "long_frames"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    world = load(args.target, args.config, device, dtype)
    if args.soak_only:
        return _soak(args, world)
    n_params = sum(p.numel() for p in world.parameters())
    res: dict[str, Any] = {
        "world": args.target or f"random {args.config} config",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(device),
            "dtype": str(world.dtype),
        },
        "params_m": n_params / 1e6,
        "matmul_gflops": matmul_gflops(dtype=world.dtype, device=device.type),
        "matmul_gflops_fp32": matmul_gflops(device=device.type),
    }
    batches = [int(b) for b in args.batch_sizes.split(",")]
    modes = parse_list(args.modes, MODES, "--modes")
    variants = parse_list(args.variants, list(VARIANTS), "--variants")
    res["latency"] = []
    for mode in modes:
        for variant in variants if mode == modes[-1] else ["default"]:
            with configured(world, mode, variant):
                for b in batches:
                    frames = args.frames if b == 1 else max(10, args.frames // b * 2)
                    log.info("%s %s, batch %d: %d steps", mode, variant, b, frames)
                    ref = matmul_gflops(dtype=world.dtype, device=device.type, seconds=0.3)
                    row = latency(world, b, frames, args.warmup if b == 1 else max(3, args.warmup // b))
                    ref = (ref + matmul_gflops(dtype=world.dtype, device=device.type, seconds=0.3)) / 2
                    res["latency"].append({"mode": mode, "variant": variant, **row, "matmul_gflops_around": ref})
    with configured(world, "eager"):
        fl = flops_per_frame(world)  # the counter sees eager ops only; compiling changes no FLOPs
    b1 = max((r for r in res["latency"] if r["batch"] == 1), key=lambda r: r["frames_per_s"], default=None)
    res["flops_per_frame"] = fl
    res["achieved_gflops_b1"] = fl * b1["frames_per_s"] / 1e9 if b1 else float("nan")
    best = max((r for r in res["latency"] if r["variant"] == "default"), key=lambda r: r["frames_per_s"])
    res["achieved_gflops_best"] = fl * best["frames_per_s"] / 1e9
    res["pct_of_matmul_best"] = 100 * res["achieved_gflops_best"] / res["matmul_gflops"]
    for row in res["latency"]:  # against the matmul rate measured just before and after the row
        if row["variant"] == "default":
            row["pct_of_matmul"] = 100 * fl * row["frames_per_s"] / 1e9 / row["matmul_gflops_around"]
            # the frames/s this machine allows if every FLOP ran at its matmul rate: an absolute target
            # above it cannot be met here by any change to the step, only by fewer FLOPs per frame
            row["ceiling_frames_per_s"] = row["matmul_gflops_around"] * 1e9 / fl
    with configured(world, modes[-1]):
        res["memory"] = memory_over_rollout(world, args.long_frames)
        if not args.no_profile:
            res["profile_ms_per_step_b1"] = profile_step(world)
    if args.first_frame and args.target:
        from worldsim.worlds import world_path

        res["first_frame"] = {
            m: first_frame(str(world_path(args.target)), torch.get_num_threads(), m == "compiled") for m in modes
        }
    if args.vector:
        from worldsim.gym.vector import vector_env_steps_per_second

        res["vector_env_steps_per_s"] = {
            n: vector_env_steps_per_second(world, n, steps=max(10, 200 // n)) for n in (1, 16, 64)
        }
    return res, world


def _training(args: argparse.Namespace) -> int:
    """``--training``: the denoiser stages' steps/s, eager and compiled (``worldsim.train.throughput``)."""
    from worldsim.train.throughput import bench_training, print_training

    world = load(args.target, args.config, torch.device("cpu"), torch.float32, compile=False)
    recipe: dict[str, Any] = {}
    if args.target:
        from worldsim.worlds import get_world

        try:
            recipe = dict(get_world(args.target).train)
        except KeyError:
            pass  # a checkpoint of one's own: the stage defaults
    rows = bench_training(world, recipe, parse_list(args.modes, MODES, "--modes"), args.train_steps)
    print_training(rows)
    if args.json:
        args.json.write_text(json.dumps({"world": args.target, "threads": torch.get_num_threads(), "training": rows}))
        log.info("wrote %s", args.json)
    return 0


def _soak(args: argparse.Namespace, world: WorldModel) -> int:
    mem = memory_over_rollout(world, args.long_frames)
    print(memory_line(mem))
    if args.json:
        args.json.write_text(
            json.dumps({"world": args.target or f"random {args.config} config", "memory": mem}, indent=2)
        )
        log.info("wrote %s", args.json)
    return 0 if mem["flat"] else 1
