"""What every training stage shares: run folders, resumable state, logs, seeds, DDP.

A stage writes into its run folder::

    runs/<world>/<stage>/
        state.pt          resumable training state (weights, optimizers, EMA, RNG, step), atomic
        log.jsonl         one JSON line per logged step
        world.safetensors the stage's output as a loadable world checkpoint

``state.pt`` is loaded with ``torch.load(weights_only=True)``: tensors and plain containers
only, nothing is unpickled. Multi-process training goes through ``torchrun``: every process
computes gradients on its own batch and :func:`sync_grads` averages them (gloo on CPU, nccl on
CUDA) before the optimizer step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); no-op otherwise."""
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size())


def sync_grads(params: Iterator[torch.nn.Parameter] | list[torch.nn.Parameter], d: Dist) -> None:
    """Average gradients over processes (data parallel)."""
    if d.world_size <= 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= d.world_size


def optimizer_step(
    loss: torch.Tensor, module: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, d: Dist, max_norm: float = 1.0
) -> torch.Tensor:
    """One step of every stage: backward, average gradients across processes, clip to ``max_norm``,
    step the optimizer and its schedule. Returns the gradient norm before clipping."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = list(module.parameters())
    sync_grads(params, d)
    gn = torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    sched.step()
    return gn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(json.dumps(_np_state()).encode(), dtype=np.uint8).copy()),
        "python": torch.from_numpy(np.frombuffer(json.dumps(random.getstate()).encode(), dtype=np.uint8).copy()),
    }


def _np_state() -> Any:
    s: Any = np.random.get_state()
    return [s[0], s[1].tolist(), s[2], s[3], s[4]]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    s = json.loads(bytes(state["numpy"].numpy()).decode())
    np.random.set_state((s[0], np.array(s[1], dtype=np.uint32), s[2], s[3], s[4]))
    py = json.loads(bytes(state["python"].numpy()).decode())
    random.setstate((py[0], tuple(py[1]), py[2]))


def generator_state(g: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(json.dumps(g.bit_generator.state).encode(), dtype=np.uint8).copy())


def set_generator_state(g: np.random.Generator, t: torch.Tensor) -> None:
    g.bit_generator.state = json.loads(bytes(t.numpy()).decode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"training state {path} could not be read ({e}); delete it to start over") from e


class RunLog:
    """JSONL log + a tqdm progress bar (main process only)."""

    def __init__(self, run_dir: Path, total: int, start: int, desc: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.t0 = time.perf_counter()
        self.start = start
        self.bar = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, dynamic_ncols=True, mininterval=2.0)

    def log(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        rec = {
            "step": step,
            "time": round(time.perf_counter() - self.t0, 2),
            **{k: float(v) for k, v in metrics.items()},
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1 - decay)


def cosine_warmup(
    opt: torch.optim.Optimizer, steps: int, warmup: int, floor: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` x the peak at ``steps``."""

    def f(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        p = min(1.0, (s - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


class Checkpointer:
    """Resumable training state: modules, optimizers/schedulers, data generators, global RNG."""

    def __init__(
        self,
        path: Path,
        modules: dict[str, torch.nn.Module],
        optimizers: dict[str, Any],
        generators: dict[str, np.random.Generator],
    ) -> None:
        self.path, self.modules, self.optimizers, self.generators = path, modules, optimizers, generators

    def save(self, step: int) -> None:
        state = {
            "step": step,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "generators": {k: generator_state(g) for k, g in self.generators.items()},
            "rng": rng_state(),
        }
        atomic_torch_save(state, self.path)

    def restore(self) -> int:
        """Load the last saved state if there is one; returns the step to continue from."""
        if not self.path.exists():
            log.info("no training state at %s: starting from step 0", self.path)
            return 0
        state = load_state(self.path)
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, g in self.generators.items():
            set_generator_state(g, state["generators"][k])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", self.path, state["step"])
        return int(state["step"])
