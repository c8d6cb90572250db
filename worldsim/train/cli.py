"""``worldsim train <world> --stage codec|teacher|student|self-forcing``.

Stages chain through their run folders (``--runs``, default ``runs/``)::

    runs/<world>/codec/world.safetensors         codec trained, denoiser untrained
    runs/<world>/teacher/world.safetensors       + Diffusion Forcing teacher (many-step sampler)
    runs/<world>/student/world.safetensors       + few-step student (ODE regression)
    runs/<world>/self-forcing/world.safetensors  + Self Forcing (DMD) + heads re-fit; --export copies it into envs/

``--stage heads`` re-fits the reward/termination heads of a finished Self Forcing run in place
(frozen backbone; see ``worldsim.train.heads``); Self Forcing runs it at its end anyway.

Budgets: ``--steps N`` sets the step count of the stage it runs; with ``--stage all`` of every
stage (``--set codec.steps=N`` etc. set one stage's). ``--stage all`` skips a stage whose
``world.safetensors`` exists; ``--force`` retrains every stage from scratch (its run folder is
replaced), ``--runs OTHER`` keeps the old runs beside the new ones.

Naming: the world's name (stored in the checkpoint; ``worldsim serve``, the client, the player and
``worldsim.gym.register_checkpoint`` use it) is the ``world`` argument; without one it is the
recorded game's id, lower-cased, without namespace and version (:func:`name_from_env_id`:
``Pendulum-v1`` -> ``pendulum``, ``ALE/Pong-v5`` -> ``pong``). Frame rate, frameskip and the
keyboard controls (``--keys``/``--idle``/``--key-magnitude``, else a bundled world's, else
:func:`worldsim.keys.default_keymap`) are stored in the world too; fps and frameskip come from
the recording's manifest for a non-bundled world.

Config: defaults live in each stage's dataclass; a bundled world's ``WorldDef.train`` overrides
them; ``--set section.field=value`` overrides both (sections: model.codec, model.denoiser,
model.cache, model.sampler, codec, teacher, student, self_forcing, heads). Multi-process:
``torchrun --nproc-per-node 2 -m worldsim.train <world> --stage teacher``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.checkpoint import provenance_key, to_jsonable
from worldsim.engine.cache import CacheConfig
from worldsim.engine.sampler import SamplerConfig
from worldsim.engine.world import WorldModel, default_device
from worldsim.train.args import add_arguments
from worldsim.train.codec_stage import train_codec
from worldsim.train.compile import resolve as resolve_compile
from worldsim.train.data import ClipSampler, load_aligned, mirror_episodes, same_game
from worldsim.train.dreams import ClosedLoop, heads_episodes
from worldsim.train.guidance import GuidanceDistillError, train_guidance
from worldsim.train.heads import HeadFitConfig, fit_heads
from worldsim.train.latents import encode_episodes
from worldsim.train.loop import init_distributed, seed_everything
from worldsim.train.recipe import (
    STAGE_CONFIGS,
    STAGES,
    build_config,
    name_from_env_id,
    parse_mirror,
    parse_sets,
    world_config,
)
from worldsim.train.self_forcing import train_self_forcing
from worldsim.train.student import train_student
from worldsim.train.teacher import train_teacher

__all__ = ["add_arguments", "main", "name_from_env_id", "start_clips"]

log = logging.getLogger(__name__)


def _resolve_name(args: argparse.Namespace) -> None:
    """``args.world`` from the recording's game id when it is not given."""
    if args.world:
        return
    if not args.data or not (args.data[0] / "manifest.json").exists():
        raise SystemExit("name the world (`worldsim train NAME --data DIR ...`) or give --data DIR with a recording")
    args.world = name_from_env_id(json.loads((args.data[0] / "manifest.json").read_text())["env_id"])
    log.info("world name %r (from the recorded game's id; name it with `worldsim train NAME`)", args.world)


def main(args: argparse.Namespace) -> int:
    _resolve_name(args)
    if args.stage == "all":
        return _run_all(args)
    return _run_stage(args)


def _run_all(args: argparse.Namespace) -> int:
    """The whole recipe; a stage whose world.safetensors exists is skipped (so a killed run resumes)."""
    modes = ["self"] + (["teacher", "diffusion"] if args.baselines else [])
    plan = [(st, "self") for st in STAGES[:-1]] + [("self-forcing", m) for m in modes]
    for stage, mode in plan:
        name = stage if stage != "self-forcing" or mode == "self" else f"self-forcing-{mode}"
        done = args.runs / args.world / name / "world.safetensors"
        if done.exists() and not getattr(args, "force", False):
            log.info(
                "skipping %s: %s exists (--force retrains every stage, --runs OTHER_DIR trains beside it)", name, done
            )
            continue
        if getattr(args, "force", False) and (args.runs / args.world / name).exists():
            log.info("--force: replacing %s", args.runs / args.world / name)
            shutil.rmtree(args.runs / args.world / name)
        sub = argparse.Namespace(
            **{
                **vars(args),
                "stage": stage,
                "mode": mode,
                "run_name": None,
                "steps": args.steps,
                # --init starts the recipe (its codec stage); later stages chain on the recipe's own runs
                "init": getattr(args, "init", None) if stage == "codec" else None,
                "teacher": None,
                "resume": True,
                "export": args.export and stage == "self-forcing" and mode == "self",
            }
        )
        _run_stage(sub)
    return 0


def _game(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[Path], dict[str, int]]:
    """(bundled WorldDef or None, its training recipe, the data folders, {"fps", "frameskip"}).

    A bundled world's fps and frameskip come from its definition, any other's from the manifest
    of its recording (``worldsim record`` stores the game's ``render_fps`` / frameskip there)."""
    from worldsim.worlds import get_world

    world_def, recipe = None, {}
    try:
        world_def = get_world(args.world)
        recipe = dict(world_def.train)
    except KeyError:
        if not args.data:
            raise SystemExit(f"unknown world {args.world!r}: pass --data for your own recording") from None
    data = list(args.data or [Path("data") / args.world])
    try:
        manifest = same_game(data, args.world)
    except ValueError as e:
        raise SystemExit(f"worldsim train: {e}") from None
    if world_def is not None:
        return world_def, recipe, data, {"fps": int(world_def.fps), "frameskip": int(world_def.frameskip)}
    timing = {"fps": int(round(manifest.get("fps") or 15)), "frameskip": int(manifest.get("frameskip") or 1)}
    return world_def, recipe, data, timing


def _controls(args: argparse.Namespace, spec: Any, stored: dict[str, Any], world_def: Any) -> dict[str, Any]:
    """The keyboard controls stored in the world (``--keys``/``--idle``/``--key-magnitude`` over the
    stored ones over a bundled world's over the defaults), checked by building a tracker."""
    from worldsim.keys import KeyTracker, controls_for

    try:
        flags = [getattr(args, k, None) for k in ("keys", "idle", "key_magnitude")]
        ctl = controls_for(spec, stored, world_def, *flags)
        KeyTracker(ctl["keymap"], spec, ctl["idle"], ctl["magnitude"])
    except ValueError as e:
        raise SystemExit(f"worldsim train: {e}") from None
    return ctl


@dataclass
class _Stage:
    """What every stage of one ``worldsim train`` process shares."""

    args: argparse.Namespace
    d: Any  # worldsim.train.loop.Dist
    device: torch.device
    sets: dict[str, dict[str, Any]]
    world_def: Any
    recipe: dict[str, Any]
    data: list[Path]
    timing: dict[str, int]
    cfg: Any  # the stage's config dataclass
    root: Path
    sf_name: str
    run_dir: Path
    train_eps: list[Any]
    val_eps: list[Any]
    spec: Any
    compiled: bool = False  # the training forward through torch.compile (worldsim.train.compile)


def _run_stage(args: argparse.Namespace) -> int:
    d = init_distributed()
    device = torch.device(args.device) if args.device else default_device()
    if d.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", d.rank % torch.cuda.device_count())
    sets = parse_sets(args.set)
    world_def, recipe, data, timing = _game(args)
    stage_key = args.stage.replace("-", "_")
    stage_cfg = build_config(
        STAGE_CONFIGS[stage_key],
        recipe.get(stage_key, {}),
        sets.get(stage_key, {}),
        {"steps": args.steps} if args.steps else {},
    )
    root = args.runs / args.world
    sf_name = "self-forcing" if args.mode == "self" else f"self-forcing-{args.mode}"
    run_name = args.run_name or (args.stage if args.stage not in ("self-forcing", "heads") else sf_name)
    seed_everything(getattr(stage_cfg, "seed", 0) + d.rank)
    t0 = time.time()
    train_eps, spec = load_aligned(data, "train")
    val_eps, _ = load_aligned(data, "val")
    if args.mirror:
        train_eps = train_eps + mirror_episodes(train_eps, parse_mirror(args.mirror), spec)
        log.info("with mirrored copies: %d train episodes", len(train_eps))
    st = _Stage(
        args, d, device, sets, world_def, recipe, data, timing, stage_cfg, root, sf_name, root / run_name,
        train_eps, val_eps, spec, resolve_compile(getattr(args, "compile", None)),
    )  # fmt: skip
    world, metrics, provenance = _codec_stage(st) if args.stage == "codec" else _later_stage(st)
    _save(st, world, metrics, provenance, time.time() - t0)
    return 0


def _codec_stage(st: _Stage) -> tuple[WorldModel, dict[str, float], dict[str, Any]]:
    args, provenance = st.args, {}
    wcfg = world_config(args.world, st.spec, st.timing["fps"], st.recipe, st.sets)
    wcfg.frameskip = st.timing["frameskip"]
    wcfg.controls = _controls(args, st.spec, {}, st.world_def)
    init = None
    if getattr(args, "init", None) is not None:
        init = WorldModel.load(args.init, device=st.device, dtype=torch.float32, compile=False)
        if init.config.action_space != st.spec:
            raise SystemExit(f"--init {args.init} acts in {init.config.action_space}, the data in {st.spec}")
        provenance["init"] = {"path": str(args.init), "provenance": init.provenance}
    world, metrics = train_codec(st.cfg, wcfg, st.train_eps, st.val_eps, st.run_dir, st.device, st.d, args.resume, init)
    world.start_frames, world.start_actions = start_clips(st.val_eps + st.train_eps, wcfg.context_frames)
    return world, metrics, provenance


def _stage_input(st: _Stage) -> WorldModel:
    """The world a later stage starts from: the previous stage's (``--init`` for guidance), set up for it."""
    args = st.args
    prev = {"teacher": "codec", "student": "teacher", "self-forcing": "student", "heads": st.run_dir.name}
    src = st.root / prev.get(args.stage, st.sf_name) / "world.safetensors"
    if args.stage in ("guidance", "finetune", "self-forcing", "heads") and getattr(args, "init", None) is not None:
        src = args.init
    if not Path(src).exists():
        raise SystemExit(f"{args.stage} needs {src}: train that stage first (or give --init WORLD.safetensors)")
    world = WorldModel.load(src, device=st.device, dtype=torch.float32, compile=False)
    if world.config.action_space != st.spec:
        raise SystemExit(f"{src} acts in {world.config.action_space}, the data in {st.spec}: not the same game")
    if any(getattr(args, k, None) is not None for k in ("keys", "idle", "key_magnitude")):
        world.config.controls = _controls(args, st.spec, world.config.controls, st.world_def)
    if args.stage == "student":
        # The teacher checkpoint carries its many-step sampler; the student gets the few-step one.
        world.config.sampler = build_config(
            SamplerConfig, st.recipe.get("model.sampler", {}), st.sets.get("model.sampler", {})
        )
    if "model.cache" in st.sets:
        world.config.cache = build_config(
            CacheConfig, dataclasses.asdict(world.config.cache), st.sets.get("model.cache", {})
        )
    return world


def _later_stage(st: _Stage) -> tuple[WorldModel, dict[str, float], dict[str, Any]]:
    args, cfg, d, device = st.args, st.cfg, st.d, st.device
    world = _stage_input(st)
    provenance = dict(world.provenance)
    if args.stage == "heads":
        return world, _heads_stage(st, world), provenance
    lat_train = encode_episodes(world.codec, st.train_eps, device)
    sampler = ClipSampler(lat_train, cfg.clip_len, seed=cfg.seed + d.rank, term_boost=getattr(cfg, "term_boost", 0.0))
    if args.stage == "finetune":  # the world keeps its sampler (few steps, guidance)
        metrics = train_teacher(cfg, world, sampler, st.run_dir, device, d, args.resume, st.compiled)
    elif args.stage == "teacher":
        metrics = train_teacher(cfg, world, sampler, st.run_dir, device, d, args.resume, st.compiled)
        world.config.sampler = SamplerConfig(timesteps=tuple(i / 16 for i in range(16, 0, -1)), guidance_scale=1.5)
    elif args.stage == "guidance":
        try:
            metrics = train_guidance(cfg, world, sampler, st.run_dir, device, d, args.resume, st.compiled)
        except GuidanceDistillError as e:
            raise SystemExit(f"worldsim train --stage guidance: {e}") from None
    elif args.stage == "student":
        metrics = train_student(cfg, world, sampler, st.run_dir, device, d, args.resume, compile_model=st.compiled)
    else:
        teacher_path = getattr(args, "teacher", None) or st.root / "teacher" / "world.safetensors"
        if not Path(teacher_path).exists():
            raise SystemExit(f"self-forcing needs a teacher at {teacher_path}: train it or give --teacher WORLD")
        teacher = WorldModel.load(teacher_path, device=device, dtype=torch.float32, compile=False)
        if teacher.config.action_space != st.spec:
            raise SystemExit(f"--teacher {teacher_path} acts in {teacher.config.action_space}, the data in {st.spec}")
        metrics = train_self_forcing(
            cfg, world, teacher, sampler, st.run_dir, device, d, args.resume, args.mode, st.compiled
        )
        if cfg.refit_heads and d.main:
            heads_cfg = build_config(HeadFitConfig, st.recipe.get("heads", {}), st.sets.get("heads", {}))
            lat_val = encode_episodes(world.codec, st.val_eps, device)
            metrics.update(
                fit_heads(heads_cfg, world.denoiser, lat_train, lat_val, device, world.config.context_frames)
            )
    return world, metrics, provenance


def _heads_stage(st: _Stage, world: WorldModel) -> dict[str, float]:
    """Re-fit the heads on the recordings, or (``heads.source=dreams``) on the world's own dreams of them."""
    try:
        loop = ClosedLoop.of(st.world_def, st.cfg.closed_loop) if st.cfg.closed_loop else None
        train_eps, val_eps = heads_episodes(world, st.cfg, st.train_eps, st.val_eps, loop)
    except ValueError as e:
        raise SystemExit(f"worldsim train --stage heads: {e}") from None
    lat_train, lat_val = (encode_episodes(world.codec, e, st.device) for e in (train_eps, val_eps))
    return fit_heads(st.cfg, world.denoiser, lat_train, lat_val, st.device, world.config.context_frames)


def _save(st: _Stage, world: WorldModel, metrics: dict[str, float], provenance: dict[str, Any], wall: float) -> None:
    """The stage's world with its provenance, its summary, and (``--export``) the bundled copy."""
    args = st.args
    base = args.stage if args.mode == "self" or args.stage != "self-forcing" else f"{args.stage}-{args.mode}"
    provenance[provenance_key(provenance, base)] = {
        "config": to_jsonable(st.cfg),
        "wall_seconds": round(wall, 1),
        "processes": st.d.world_size,
        "device": str(st.device),
        "data": [str(p) for p in st.data],
        "train_frames": sum(len(e) for e in st.train_eps),
        "mirror": args.mirror,
        "compiled": st.compiled,
        **({"teacher": str(args.teacher)} if getattr(args, "teacher", None) and args.stage == "self-forcing" else {}),
        "metrics": metrics,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
    }
    if not st.d.main:
        return
    out = st.run_dir / "world.safetensors"
    world.save(out, provenance)
    summary = "summary.json" if args.stage != "heads" else "summary-heads.json"
    (st.run_dir / summary).write_text(json.dumps({"wall_seconds": wall, **metrics}, indent=2))
    log.info("%s done in %.1f min: %s -> %s", args.stage, wall / 60, json.dumps(metrics), out)
    if args.export:
        if st.world_def is None:
            raise SystemExit("--export needs a bundled world")
        shutil.copyfile(out, st.world_def.checkpoint)
        log.info("exported to %s", st.world_def.checkpoint)


def start_clips(eps: list[Any], K: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first K frames of up to n episodes: how the real game starts."""
    chosen = [e for e in eps if len(e) >= K][:n]
    frames = torch.from_numpy(np.stack([e.frames[:K] for e in chosen]))
    actions = torch.from_numpy(np.stack([e.actions[:K] for e in chosen]))
    return frames, actions


if __name__ == "__main__":  # torchrun entry point
    from worldsim.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
