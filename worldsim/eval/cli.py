"""``worldsim eval <checkpoint ...> --world W``: world models against the real game.

    worldsim eval runs/cartpole/self-forcing/world.safetensors \\
        runs/cartpole/self-forcing-teacher/world.safetensors \\
        runs/cartpole/self-forcing-diffusion/world.safetensors \\
        --names sf,tf,df --world cartpole --data data/cartpole --episodes 8 --horizon 200

On held-out recorded episodes (``--split``, default test, topped up from val), the longest
first, every model gets the same real context frames with their actions and then the real
game's actions for ``--horizon`` frames. Per horizon: PSNR, SSIM, state error (the world's state
reader), FD on each checkpoint's codec latents per horizon bucket, episode ends and rewards;
control probes against the real game (restored by replay and branched); the real game's own
divergence under a tiny perturbation. Writes ``report.md``, ``results.json``, ``drift.png`` and
one PNG per metric, ``control.png`` and ``filmstrip.png`` into ``--out``, and prints the tables.
Deterministic given ``--seed``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="world checkpoints (.safetensors) or bundled world names")
    parser.add_argument(
        "--world",
        required=True,
        help="bundled world (its state reader scores positions; default data data/<world>), or any name with --data",
    )
    parser.add_argument("--names", default=None, help="comma-separated model names (default: checkpoint folder names)")
    parser.add_argument("--data", type=Path, default=None, help="recorded data set (default data/<world>)")
    parser.add_argument("--split", default="test", choices=("test", "val", "train"), help="held-out split")
    parser.add_argument("--episodes", type=int, default=8, help="episodes to roll out (the longest of the split)")
    parser.add_argument("--horizon", type=int, default=200, help="frames generated after the context")
    parser.add_argument("--horizons", default="1,10,50,200,1000", help="horizons summarised in the tables")
    parser.add_argument("--batch", type=int, default=16, help="episodes per batched session")
    parser.add_argument("--control-k", type=int, default=5, help="frames each action is held in the control probes")
    parser.add_argument("--probes", type=int, default=4, help="control probe states per episode")
    parser.add_argument("--control-actions", type=int, default=4, help="sampled actions per probe (non-Discrete)")
    parser.add_argument("--no-control", action="store_true", help="skip the control probes")
    parser.add_argument("--no-divergence", action="store_true", help="skip the real game's own divergence")
    parser.add_argument("--perturb", type=float, default=1e-4, help="state perturbation for the divergence")
    parser.add_argument("--tol", type=int, default=2, help="frames of tolerance for predicted episode ends")
    parser.add_argument("--control-states", type=int, default=32, help="control fidelity: real start states (0: skip)")
    parser.add_argument("--control-frames", type=int, default=6, help="control fidelity: frames each action is held")
    parser.add_argument(
        "--random-episodes", type=int, default=50, help="control fidelity: random-action episodes (0: skip)"
    )
    parser.add_argument("--random-frames", type=int, default=60, help="control fidelity: frames per random episode")
    parser.add_argument(
        "--closed-loop-episodes",
        type=int,
        default=16,
        help="closed-loop control fidelity: episodes per controller of the world (WorldDef.controllers; 0: skip)",
    )
    parser.add_argument(
        "--closed-loop-frames", type=int, default=250, help="closed-loop control fidelity: frames per episode (cap)"
    )
    parser.add_argument(
        "--only-control",
        action="store_true",
        help="only control fidelity against the real game (a bundled world; no recorded data needed)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default eval/<world>)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing report in the output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--noise-draws",
        type=int,
        default=1,
        help="rollouts of each held-out episode with other noise; the prediction numbers average over them "
        "(a PSNR @10 from one draw moves by ~2 dB with --seed)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float32 | bfloat16 | float16 (default: WORLDSIM_DTYPE, else fp32 on CPU, so that the cards' "
        "numbers reproduce on any CPU, and bf16 on CUDA)",
    )
    parser.add_argument(
        "--sampler",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override the worlds' sampler, e.g. cache_pass=last_step or 'timesteps=(1.0, 0.667, 0.333)'",
    )
    parser.add_argument(
        "--no-compile", action="store_true", help="run the step eager, without torch.compile (also: WORLDSIM_COMPILE=0)"
    )


def _names(args: argparse.Namespace) -> list[str]:
    if args.names:
        names = [n.strip() for n in args.names.split(",")]
    else:
        names = [Path(c).parent.name if Path(c).name == "world.safetensors" else Path(c).stem for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        raise ValueError(f"--names gives {len(names)} names for {len(args.checkpoints)} checkpoints")
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names} (use --names)")
    return names


def _command(args: argparse.Namespace) -> str:
    from worldsim.eval.report import default_out

    parts = ["worldsim eval", *map(str, args.checkpoints), f"--world {args.world}"]
    if args.names:
        parts.append(f"--names {args.names}")
    if args.data:
        parts.append(f"--data {args.data}")
    parts += [
        f"--split {args.split} --episodes {args.episodes} --horizon {args.horizon} --horizons {args.horizons}",
        f"--out {args.out or default_out(args.world)} --seed {args.seed}"
        + (f" --noise-draws {args.noise_draws}" if args.noise_draws != 1 else ""),
        f"--control-states {args.control_states} --control-frames {args.control_frames}"
        f" --random-episodes {args.random_episodes} --random-frames {args.random_frames}"
        f" --closed-loop-episodes {args.closed_loop_episodes} --closed-loop-frames {args.closed_loop_frames}",
    ]
    if args.only_control:
        parts.append("--only-control")
    if args.no_control:
        parts.append("--no-control")
    if args.no_divergence:
        parts.append("--no-divergence")
    parts += [f"--sampler '{item}'" for item in getattr(args, "sampler", [])]
    return " ".join(parts)


def main(args: argparse.Namespace) -> int:
    from worldsim.real import RealGameError

    try:
        return run(args)
    except (ValueError, FileNotFoundError, KeyError, RealGameError) as e:  # bad input: a message, not a traceback
        log.debug("worldsim eval failed", exc_info=True)
        print(f"worldsim eval: {e}", file=sys.stderr)
        return 2


def _config(args: argparse.Namespace, device: str, dtype: str) -> Any:
    from worldsim.eval.results import EvalConfig

    horizons = tuple(sorted({int(h) for h in str(args.horizons).split(",") if h.strip()}))
    if args.horizon < 1 or args.episodes < 1 or args.noise_draws < 1 or any(h < 1 for h in horizons):
        raise ValueError("--horizon, --episodes, --noise-draws and --horizons must be >= 1")
    counts = (args.control_states, args.random_episodes, args.closed_loop_episodes)
    if min(*counts, args.control_frames - 1, args.random_frames - 1, args.closed_loop_frames - 1) < 0:
        raise ValueError(
            "--control-states, --random-episodes and --closed-loop-episodes must be >= 0, "
            "--control-frames, --random-frames and --closed-loop-frames >= 1"
        )
    return EvalConfig(
        args.world, args.horizon, horizons, args.batch, args.seed, args.tol, not args.only_control,
        args.control_k, args.probes, args.control_actions, not args.no_control, not args.no_divergence,
        args.perturb, args.control_states, args.control_frames, args.random_episodes, args.random_frames,
        args.closed_loop_episodes, args.closed_loop_frames, _command(args), device, dtype, args.noise_draws,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from worldsim.engine.world import WorldModel, default_device, default_dtype, parse_dtype
    from worldsim.eval import markdown, report
    from worldsim.eval.episodes import load_eval_episodes
    from worldsim.eval.evaluate import Game, HeldOut, evaluate
    from worldsim.eval.report import default_out
    from worldsim.real import GameSpec
    from worldsim.worlds import get_world, world_path

    try:
        wd = get_world(args.world)
    except KeyError:
        # Your own game: pixels, rewards and episode ends are scored; control fidelity on pixels.
        if args.data is None:
            raise ValueError(f"{args.world!r} is not a bundled world: pass --data with its recording") from None
        wd = None
    device = torch.device(args.device) if args.device else default_device()
    # Measurements pin fp32 on CPU (the engine's default there depends on the CPU's bf16 support).
    dtype = parse_dtype(args.dtype) or default_dtype(device, cpu_bf16=False)
    config = _config(args, str(device), str(dtype).removeprefix("torch."))
    out = Path(args.out) if args.out is not None else default_out(args.world)
    report.check_out(out, args.force)  # before the work, not after it
    names = _names(args)
    paths = [world_path(c) for c in args.checkpoints]
    compile = False if args.no_compile else None
    worlds = {n: WorldModel.load(p, device=device, dtype=dtype, compile=compile) for n, p in zip(names, paths)}
    for w in worlds.values():
        w.config.sampler = w.config.sampler.with_overrides(args.sampler)
    held = None
    if not args.only_control:
        data = args.data or Path("data") / args.world
        eps, spec, manifest = load_eval_episodes(data, args.split, args.episodes)
        held = HeldOut(eps, spec, manifest, str(data), args.split)
    if wd is not None:
        game = Game.from_world(wd)
        if held is not None:  # replay the recording exactly as it was made
            game.spec = GameSpec.from_manifest(held.manifest)
    else:
        assert held is not None
        game = Game(GameSpec.from_manifest(held.manifest))
    ev = evaluate(config, worlds, held, game, {n: str(p) for n, p in zip(names, paths)})
    written = report.write(ev, out, force=args.force)
    print(markdown.tables(ev))
    for n in ev.notes:
        print(f"note: {n}")
    print(f"\nwrote {written[0]}, {written[1]} and plots ({ev.seconds} s)")
    return 0
