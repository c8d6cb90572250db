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
import hashlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
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
    parser.add_argument("--out", type=Path, default=Path("eval"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


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
    parts = ["worldsim eval", *map(str, args.checkpoints), f"--world {args.world}"]
    if args.names:
        parts.append(f"--names {args.names}")
    if args.data:
        parts.append(f"--data {args.data}")
    parts += [
        f"--split {args.split} --episodes {args.episodes} --horizon {args.horizon} --horizons {args.horizons}",
        f"--out {args.out} --seed {args.seed}",
    ]
    if args.no_control:
        parts.append("--no-control")
    if args.no_divergence:
        parts.append("--no-divergence")
    return " ".join(parts)


def codec_fingerprint(world: Any) -> str:
    h = hashlib.sha1()
    for k, v in sorted(world.codec.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def codec_features(world: Any, chunk: int = 256) -> Any:
    """frames (N, 64, 64, 3) uint8 -> (N, C*4): the checkpoint's own codec latents, mean-pooled to 2x2."""

    def f(frames: np.ndarray) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), chunk):
                x = torch.from_numpy(np.ascontiguousarray(frames[i : i + chunk])).to(world.device)
                z = torch.nn.functional.adaptive_avg_pool2d(world.codec.encode(x).float(), 2)
                out.append(z.flatten(1).cpu().numpy().astype(np.float64))
        return np.concatenate(out)

    return f


def reconstruct(world: Any, frames: np.ndarray, mask: np.ndarray, chunk: int = 256) -> np.ndarray:
    """The masked frames of (E, H, 64, 64, 3) through the checkpoint's codec (encode, decode); zeros elsewhere."""
    out = np.zeros_like(frames)
    sel = frames[mask]
    rec = []
    with torch.inference_mode():
        for i in range(0, len(sel), chunk):
            x = torch.from_numpy(np.ascontiguousarray(sel[i : i + chunk])).to(world.device)
            rec.append(world.codec.decode(world.codec.encode(x)).cpu().numpy())
    if rec:
        out[mask] = np.concatenate(rec)
    return out


def _read(reader: Any, frames: np.ndarray, mask: np.ndarray, n_state: int) -> np.ndarray:
    """reader over the masked frames of (E, H, ...) -> (E, H, S), NaN elsewhere."""
    out = np.full((*mask.shape, n_state), np.nan)
    if mask.any():
        out[mask] = reader(frames[mask])
    return out


def main(args: argparse.Namespace) -> int:
    try:
        return run(args)
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input: a message, not a traceback
        log.debug("worldsim eval failed", exc_info=True)
        print(f"worldsim eval: {e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worldsim.engine.world import WorldModel, default_device
    from worldsim.eval import report
    from worldsim.eval.rollout import (
        Generated,
        RealGame,
        at_frames,
        control_probe,
        load_eval_episodes,
        pick_probes,
        probe_actions,
        real_control,
        real_divergence,
        reference,
        rollout,
    )
    from worldsim.worlds import get_world, world_path

    t_start = time.time()
    try:
        wd = get_world(args.world)
        reader, state_names, true_state = wd.state_reader, tuple(wd.state_names), wd.true_state
    except KeyError:
        # Your own game: pixels, rewards and episode ends are scored; no state reader, no control probes.
        if args.data is None:
            raise ValueError(f"{args.world!r} is not a bundled world: pass --data with its recording") from None
        reader, state_names, true_state = None, (), None
    names = _names(args)
    horizons = sorted({int(h) for h in str(args.horizons).split(",") if h.strip()})
    if args.horizon < 1 or args.episodes < 1 or any(h < 1 for h in horizons):
        raise ValueError("--horizon, --episodes and --horizons must be >= 1")
    data = args.data or Path("data") / args.world
    device = torch.device(args.device) if args.device else default_device()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ models and episodes
    paths = [world_path(c) for c in args.checkpoints]
    models = {n: WorldModel.load(p, device=device) for n, p in zip(names, paths)}
    eps, spec, manifest = load_eval_episodes(data, args.split, args.episodes)
    for n, w in models.items():
        if w.action_spec != spec:
            raise ValueError(f"{n}: the checkpoint's actions ({w.action_spec}) are not the data's ({spec})")
    start = max(w.config.context_frames for w in models.values())
    eps = [e for e in eps if len(e) > start]
    if not eps:
        raise ValueError(f"no episode of {data} is longer than the {start} context frames")
    H = args.horizon
    S = len(state_names)
    ref = reference(eps, start, H, args.tol)
    n_per_h = ref.valid.sum(0)
    real_state = _read(reader, ref.frames, ref.valid, S) if reader is not None else None
    strip_frames = [h for h in horizons if h <= int(ref.valid[0].sum())] or [1]  # frames episode 0 has
    strip_real = ref.frames[0, [h - 1 for h in strip_frames]]
    meta: dict[str, Any] = {
        "world": args.world,
        "command": _command(args),
        "data": str(data),
        "split": args.split,
        "splits": ", ".join(f"{s}: {sum(e.split == s for e in eps)}" for s in dict.fromkeys(e.split for e in eps)),
        "episodes": len(eps),
        "episode_ids": [e.episode_id for e in eps],
        "episode_lengths": [len(e) for e in eps],
        "start": start,
        "horizon": H,
        "horizons": horizons,
        "seed": args.seed,
        "tol": args.tol,
        "control_k": args.control_k,
        "state_names": list(state_names),
        "filmstrip_frames": strip_frames,
        "device": str(device),
        "torch": torch.__version__,
        "models": {},
    }
    for n, p in zip(names, paths):
        w = models[n]
        meta["models"][n] = {
            "checkpoint": str(p),
            "context_frames": w.config.context_frames,
            "sampler_steps": len(w.config.sampler.timesteps),
            "cfg_scale": w.config.sampler.guidance_scale,
            "cache_window": w.config.cache.window,
            "cache_sink": w.config.cache.sink,
            "codec_fingerprint": codec_fingerprint(w),
            "stages": [k for k in w.provenance if isinstance(w.provenance.get(k), dict)],
        }

    # ------------------------------------------------------------ rollouts
    results: dict[str, dict[str, Any]] = {}
    strips: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    meta["timings_s"] = timings
    with tqdm(total=len(models) * len(eps) * H, desc="eval rollouts", unit="frame", dynamic_ncols=True) as bar:
        for n, w in models.items():
            bar.set_postfix(model=n)
            t0 = time.perf_counter()
            gen = rollout(w, eps, H, start=start, seed=args.seed, batch=args.batch, tol=args.tol, progress=bar)
            gen_state = _read(reader, gen.frames, ref.valid, S) if reader is not None else None
            results[n] = report.summarize(
                ref,
                gen,
                real_state,
                gen_state,
                state_names,
                codec_features(w),
                horizons,
                report.buckets_for(horizons, H),
                args.tol,
            )
            strips[n] = gen.frames[0, [h - 1 for h in strip_frames]].copy()
            del gen
            timings[f"rollout+summary {n}"] = round(time.perf_counter() - t0, 1)

    # ------------------------------------------------------------ codec reconstructions: the floor
    floors: dict[str, dict[str, Any]] = {}
    by_codec: dict[str, str] = {}
    for n in models:
        by_codec.setdefault(meta["models"][n]["codec_fingerprint"], n)
    for n in by_codec.values():
        label = "codec reconstruction" if len(by_codec) == 1 else f"codec reconstruction ({n})"
        rec = Generated(reconstruct(models[n], ref.frames, ref.valid), ref.rewards, ref.terminated, ref.valid)
        rec_state = _read(reader, rec.frames, ref.valid, S) if reader is not None else None
        full = report.summarize(
            ref, rec, real_state, rec_state, state_names, None, horizons, report.buckets_for(horizons, H), args.tol
        )
        floors[label] = {k: full[k] for k in ("curves", "at", "buckets")}

    # ------------------------------------------------------------ control and the real game
    extra: dict[str, Any] = {"n": n_per_h, "floors": floors}
    game = None
    if reader is not None and (not args.no_control or not args.no_divergence):
        game = RealGame.from_manifest(manifest, spec, true_state)
    deltas: dict[str, np.ndarray] = {}
    if game is not None and reader is not None and not args.no_control:
        probes = pick_probes(eps, start - 1, args.control_k, args.probes, seed=args.seed)
        actions = probe_actions(spec, args.control_actions, seed=args.seed)
        if probes:
            t0 = time.perf_counter()
            with tqdm(total=len(probes), desc="control: real game", unit="state", dynamic_ncols=True) as bar:
                real_d, held, checks = real_control(game, eps, probes, actions, reader, args.control_k, progress=bar)
            extra["control_real_checks"] = checks
            timings["control: real game"] = round(time.perf_counter() - t0, 1)
            t0 = time.perf_counter()
            if checks["replay_ok"] < len(probes):
                log.warning(
                    "the real game reproduced only %d/%d recorded states on replay", checks["replay_ok"], len(probes)
                )
            jobs = len(probes) * len(actions)
            with tqdm(total=jobs * len(models), desc="control: models", unit="probe", dynamic_ncols=True) as bar:
                for n, w in models.items():
                    every = control_probe(
                        w, eps, probes, actions, reader, args.control_k, args.seed, 4 * args.batch, bar
                    )
                    d = at_frames(every, held)
                    deltas[n] = d
                    results[n]["control"] = report.control_summary(d, real_d, state_names)
            timings["control: models"] = round(time.perf_counter() - t0, 1)
            extra["control_raw"] = {
                "probes": probes,
                "actions": actions,
                "real": real_d,
                "frames_held": held,
                "models": deltas,
            }
    div = None
    if game is not None and not args.no_divergence and game.can_perturb:
        t0 = time.perf_counter()
        with tqdm(total=len(eps), desc="real game's own divergence", unit="ep", dynamic_ncols=True) as bar:
            div = real_divergence(game, eps, start, H, reader, args.perturb, args.seed, bar)
        timings["real game's divergence"] = round(time.perf_counter() - t0, 1)
        if div is not None:
            # The pixel-read divergence stays 0 until the difference moves a pixel: the target
            # compares with the true-state divergence when the game exposes its state.
            div["target_source"] = "true" if div["true"] is not None else "read"
            ref_curve = div[div["target_source"]]
            for n in results:
                results[n]["target"] = {
                    c: report.target_check(
                        np.asarray(results[n]["curves"][f"{c}_err"], float), ref_curve[:, i], div["n"]
                    )
                    for i, c in enumerate(state_names)
                }
    extra["real_divergence"] = div
    if game is not None:
        game.close()

    # ------------------------------------------------------------ outputs
    report.plot_curves(results, div, state_names, out, floors)
    report.filmstrip(strip_real, strips, strip_frames, out)
    if deltas:
        report.plot_control(deltas, extra["control_raw"]["real"], state_names, out)
    meta["seconds"] = round(time.time() - t_start, 1)
    (out / "report.md").write_text(report.markdown(results, meta, extra))
    report.write_json(
        out / "results.json",
        {
            "meta": meta,
            "n_per_horizon": n_per_h,
            "models": results,
            "codec_reconstruction": floors,
            "real_divergence": div,
            "control_real_checks": extra.get("control_real_checks"),
            "control_raw": extra.get("control_raw"),
        },
    )
    print(report.tables(results, meta, extra))
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'} and plots ({meta['seconds']} s)")
    return 0
