"""``worldsim eval <checkpoint ...> --world W``: world models against the real game.

    worldsim eval runs/cartpole/self-forcing/world.safetensors \\
        runs/cartpole/self-forcing-teacher/world.safetensors \\
        runs/cartpole/self-forcing-diffusion/world.safetensors \\
        --names self-forcing,teacher-forcing,diffusion-forcing --world cartpole --episodes 8 --horizon 200

Held-out episodes (``--split``, default test, topped up from val) give every model the same
context frames and the same actions; the N longest are used so long horizons have samples.
Writes ``report.md``, ``results.json``, per-metric plots and a filmstrip into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.engine.world import WorldModel

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", help="world checkpoints (or bundled world names)")
    parser.add_argument("--world", required=True, help="bundled world whose real game, data and state reader to use")
    parser.add_argument("--names", default=None, help="comma-separated model names for the table")
    parser.add_argument("--data", type=Path, default=None, help="recorded data (default data/<world>)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--horizons", default="1,10,50,200,1000")
    parser.add_argument("--no-control", action="store_true", help="skip the control probes")
    parser.add_argument("--out", type=Path, default=Path("eval"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def pick_episodes(data: Path, split: str, n: int) -> tuple[list[Any], list[int]]:
    from worldsim.data import action_spec, load_episodes
    from worldsim.train.data import align

    spec = action_spec(data)
    eps = load_episodes(data, split=split)
    if len(eps) < n and split == "test":
        eps += load_episodes(data, split="val")
    eps = sorted(eps, key=lambda e: (-len(e), e.episode_id))[:n]
    return [align(e, spec) for e in eps], [e.seed for e in eps]


def codec_features(world: WorldModel) -> Any:
    def f(frames: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = world.codec.encode(torch.from_numpy(np.ascontiguousarray(frames)).to(world.device)).float()
            z = torch.nn.functional.adaptive_avg_pool2d(z, 2)  # (N, C, 2, 2)
        return z.flatten(1).cpu().numpy().astype(np.float64)

    return f


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worldsim.eval.report import filmstrip, markdown, plot, summarize, write_json
    from worldsim.eval.rollout import control_probe, real_divergence, rollout
    from worldsim.worlds import get_world, world_path

    wd = get_world(args.world)
    data = args.data or Path("data") / args.world
    names = args.names.split(",") if args.names else [Path(c).parent.name or Path(c).stem for c in args.checkpoints]
    if len(names) != len(args.checkpoints):
        print("worldsim eval: --names must name every checkpoint", file=sys.stderr)
        return 2
    horizons = [int(h) for h in args.horizons.split(",")]
    eps, seeds = pick_episodes(data, args.split, args.episodes)
    models = {n: WorldModel.load(world_path(c), device=args.device) for n, c in zip(names, args.checkpoints)}
    features = codec_features(next(iter(models.values())))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rolls, results, control = {}, {}, {}
    bar = tqdm(total=args.horizon * len(models), desc="eval rollouts", unit="frame")
    for name, world in models.items():
        rolls[name] = rollout(world, eps, args.horizon, seed=args.seed, progress=bar)
        results[name] = summarize(
            rolls[name],
            wd.state_reader,
            wd.state_names,
            features,
            horizons,
            [(1, 10), (11, 50), (51, 200), (201, 1000)],
        )
    bar.close()
    if not args.no_control:
        for name, world in tqdm(models.items(), desc="control probes"):
            control[name] = control_probe(world, wd, eps, seeds)
    K = next(iter(models.values())).config.context_frames
    div = real_divergence(wd, eps, seeds, args.horizon, context=K)
    ref = {f"{n}_err": div[:, c].tolist() for c, n in enumerate(wd.state_names)} if div is not None else None
    meta = {
        "world": args.world,
        "episodes": len(eps),
        "split": args.split,
        "context": K,
        "horizon": args.horizon,
        "horizons": horizons,
        "checkpoints": dict(zip(names, args.checkpoints)),
        "command": "worldsim eval " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "worldsim eval",
    }
    plot(results, ref, out)
    filmstrip(rolls, [1, 10, 50, 200], out)
    (out / "report.md").write_text(markdown(results, meta, control, ref))
    write_json(out / "results.json", {"meta": meta, "models": results, "control": control, "real_divergence": ref})
    print(markdown(results, meta, control, ref).split("![psnr]")[0])
    log.info("wrote %s", out / "report.md")
    return 0
