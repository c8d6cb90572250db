"""What ``worldsim bench`` compares side by side: eager vs compiled, sampler variants, first frame.

- **modes**: ``eager`` (``CausalDenoiser.forward_kv`` as written) and ``compiled`` (the same
  function under ``torch.compile``, see ``worldsim.engine.compiled``), on one loaded world;
- **variants** of the sampler that change the work per frame (each needs ``worldsim eval`` to
  show it loses nothing before a world ships with it): ``default`` (the world's own),
  ``3-step`` (three denoising steps), ``last-step-cache`` (the last denoising pass writes the
  KV cache: no separate clean pass) and ``unguided`` (``guidance_scale = 1``: one row per world
  row instead of two; the speed of the world after ``worldsim train --stage guidance`` distils
  its guidance, which has the same network) and ``guided-first-step`` (``guidance_steps = 1``:
  the later steps read only the action's rows; scale 2.0, the measured CartPole setting, shipped
  since 2026-12-04) and ``guided-every-step`` (guidance 1.5 on every step, CartPole's sampler
  until 2026-12-04) and ``history-guided`` (``history_guidance = 1.0`` on the world's guided
  steps: a short pass and the last frame's commit more; measured, not shipped, 2026-12-13);
- **first frame**: a fresh process loads the world, opens a session and produces one frame, on
  an empty compile cache (cold) and again on the one it filled (warm);
- the **matmul reference** each row's GFLOP/s is compared with (:func:`matmul_gflops`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from worldsim.engine.compiled import CACHE_ENV, ENV_VAR, Compiled
from worldsim.engine.world import WorldModel

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "3-step": {"timesteps": (1.0, 2 / 3, 1 / 3)},
    "last-step-cache": {"cache_pass": "last_step"},
    "unguided": {"guidance_scale": 1.0},
    "guided-first-step": {"guidance_scale": 2.0, "guidance_steps": 1},
    "guided-every-step": {"guidance_scale": 1.5, "guidance_steps": None},
    "history-guided": {"history_guidance": 1.0},
}
MODES = ("eager", "compiled")


def matmul_gflops(
    n: int = 1024, reps: int = 20, dtype: torch.dtype = torch.float32, device: str = "cpu", seconds: float = 0.0
) -> float:
    """GFLOP/s of an n^3 matmul: at least ``reps`` products and at least ``seconds`` of them."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    done, t = 0, time.perf_counter()
    while done < reps or time.perf_counter() - t < seconds:
        a @ b
        done += 1
        if device == "cuda" and done % 10 == 0:
            torch.cuda.synchronize()
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * done / (time.perf_counter() - t) / 1e9


def parse_list(value: str, allowed: tuple[str, ...] | list[str], flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{flag}: unknown {bad or value!r}; choose from {', '.join(allowed)}")
    return items


@contextmanager
def configured(world: WorldModel, mode: str, variant: str = "default") -> Iterator[WorldModel]:
    """The world run in ``mode`` with sampler ``variant`` for the duration (restored after)."""
    saved_compiled, saved_sampler = world.compiled, world.config.sampler
    try:
        if mode == "compiled":
            world.compiled = saved_compiled or Compiled(world.denoiser, world.codec, world.config.cache.capacity)
        else:
            world.compiled = None
        world.config.sampler = dataclasses.replace(saved_sampler, **VARIANTS[variant])
        yield world
    finally:
        world.compiled, world.config.sampler = saved_compiled, saved_sampler


_FIRST_FRAME = """
import json, sys, time
t0 = time.perf_counter()
import torch
from worldsim.engine.world import WorldModel
torch.set_num_threads({threads})
t1 = time.perf_counter()
world = WorldModel.load({path!r}, device="cpu")
sess = world.session(batch=1, seed=0)
sess.reset()
warm = sess.warmup()
sess.step(world.action_spec.null(1))
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_to_first_frame_s": t2 - t1, "compile_s": warm,
                  "compiled": bool(world.compiled is not None and world.compiled.active)}}))
"""


def first_frame(path: str, threads: int, compile: bool = True) -> dict[str, Any]:
    """Seconds to the first frame in fresh processes: on an empty compile cache, then warm."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="worldsim-inductor-") as cache:
        # Both worldsim's packages and inductor's own caches start empty: a cold start is cold.
        env = {
            **os.environ,
            CACHE_ENV: cache,
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
            ENV_VAR: "1" if compile else "0",
        }
        for label in ("cold", "warm"):
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", _FIRST_FRAME.format(path=str(path), threads=threads)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"first-frame probe failed: {proc.stderr.strip().splitlines()[-1:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["process_s"] = time.perf_counter() - t
            out[label] = res
    return out
