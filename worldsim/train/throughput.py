"""Training steps per second of the denoiser stages, eager and compiled (``worldsim bench --training``).

Throughput does not depend on what the frames show, so the stages run here on random latents of
the world's own shapes (episodes of 64 frames, random actions of its action space): the real
``train_teacher`` / ``train_self_forcing`` loops with the world's recipe (a bundled world's
``WorldDef.train``, else the stage defaults), each for ``warmup`` steps (the compile happens in the
first) and ``steps`` timed steps, read off the stage's own ``log.jsonl``. The world is copied;
nothing is saved.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.train.data import AlignedEpisode, ClipSampler
from worldsim.train.loop import Dist, seed_everything
from worldsim.train.recipe import build_config
from worldsim.train.self_forcing import SelfForcingConfig, train_self_forcing
from worldsim.train.teacher import TeacherTrainConfig, train_teacher

log = logging.getLogger(__name__)

STAGES = ("teacher", "self-forcing")


def random_latent_episodes(world: WorldModel, n: int = 16, length: int = 64, seed: int = 0) -> list[AlignedEpisode]:
    """``n`` episodes of random latents shaped like ``world``'s, random actions, an end at the last frame."""
    rng = np.random.default_rng(seed)
    den, spec = world.config.denoiser, world.config.action_space
    space = spec.to_space()
    space.seed(seed)
    eps = []
    for _ in range(n):
        z = rng.standard_normal((length, den.latent_channels, den.latent_size, den.latent_size)).astype(np.float32)
        acts = spec.validate(np.stack([np.asarray(space.sample()) for _ in range(length)]))
        has = np.ones(length, bool)
        has[0] = False
        term = np.zeros(length, bool)
        term[-1] = True
        eps.append(AlignedEpisode(z, acts, has, np.ones(length, np.float32), term))
    return eps


class _TimedSampler:
    """A ClipSampler that notes the time of every batch it hands out (one or more per step)."""

    def __init__(self, sampler: ClipSampler) -> None:
        self.sampler, self.rng = sampler, sampler.rng
        self.times: list[float] = []

    def sample(self, batch: int) -> Any:
        self.times.append(time.perf_counter())
        return self.sampler.sample(batch)

    def free_share(self) -> float:
        return self.sampler.free_share()


def stage_throughput(
    world: WorldModel, stage: str, compiled: bool, steps: int, warmup: int, recipe: dict[str, Any]
) -> dict[str, Any]:
    """One stage, one mode: steps/s after warm-up, and the seconds the warm-up took (compile included)."""
    if stage not in STAGES:
        raise ValueError(f"training throughput is measured for {', '.join(STAGES)}, not {stage!r}")
    seed_everything(0)
    device = torch.device("cpu")
    w = copy.deepcopy(world).to(device)  # the copy trains; the caller's world is untouched
    key = stage.replace("-", "_")
    cls = TeacherTrainConfig if stage == "teacher" else SelfForcingConfig
    if warmup < 1 or steps < 2:
        raise ValueError(f"training throughput needs warmup >= 1 and steps >= 2, got {warmup} and {steps}")
    cfg = build_config(cls, recipe.get(key, {}), {"steps": warmup + steps, "save_every": 10**9})
    sampler = _TimedSampler(ClipSampler(random_latent_episodes(w), cfg.clip_len, seed=0))
    per_step = 1 if stage == "teacher" else max(1, cfg.critic_steps)  # batches drawn per step
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        if stage == "teacher":
            train_teacher(cfg, w, sampler, run_dir, device, Dist(), compile_model=compiled)  # type: ignore[arg-type]
        else:
            teacher = copy.deepcopy(w)
            train_self_forcing(cfg, w, teacher, sampler, run_dir, device, Dist(), compile_model=compiled)  # type: ignore[arg-type]
    starts = sampler.times[::per_step]  # the start of every step
    sps = (starts[-1] - starts[warmup]) / (len(starts) - 1 - warmup)
    warm_s = starts[warmup] - t0
    return {
        "stage": stage,
        "mode": "compiled" if compiled else "eager",
        "batch": cfg.batch,
        "clip_len": cfg.clip_len,
        "steps_per_s": 1.0 / sps,
        "s_per_step": sps,
        "warmup_s": warm_s,
        "wall_s": time.perf_counter() - t0,
    }


def bench_training(
    world: WorldModel, recipe: dict[str, Any], modes: list[str], steps: int, warmup: int = 3
) -> list[dict[str, Any]]:
    """Every stage of :data:`STAGES` in every mode (``eager``, ``compiled``), one after the other."""
    rows = []
    for stage in STAGES:
        for mode in modes:
            log.info("training throughput: %s, %s, %d + %d steps", stage, mode, warmup, steps)
            rows.append(stage_throughput(world, stage, mode == "compiled", steps, warmup, recipe))
    return rows


def print_training(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'stage':>13} {'mode':>9} {'batch x clip':>13} {'steps/s':>9} {'s/step':>8} {'warm-up s':>10} {'vs eager':>9}"
    )
    eager = {r["stage"]: r["steps_per_s"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        ratio = r["steps_per_s"] / eager[r["stage"]] if r["stage"] in eager else float("nan")
        print(
            f"{r['stage']:>13} {r['mode']:>9} {str(r['batch']) + ' x ' + str(r['clip_len']):>13} "
            f"{r['steps_per_s']:>9.2f} {r['s_per_step']:>8.2f} {r['warmup_s']:>10.1f} {ratio:>8.2f}x"
        )
