"""Stage 3: the few-step student, regressed onto the teacher's ODE trajectories (CausVid's init).

The teacher integrates the probability-flow ODE (Euler, classifier-free guidance on the action)
from noise to a clean frame for every frame of a clip, given the ground-truth frames before it
(one forward per ODE step, in the paired teacher-forcing layout). The states it passes at the
student's timesteps (1.0, 0.75, 0.5, 0.25 by default) become inputs, its end point the target:
the student learns to jump from any of its timesteps straight to the teacher's clean frame.
Then Self Forcing (stage 4) removes the student's exposure bias.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from worldsim.engine.world import WorldModel
from worldsim.model.denoiser import CausalDenoiser
from worldsim.train.compile import TrainForward
from worldsim.train.data import Batch, ClipSampler
from worldsim.train.loop import Checkpointer, Dist, RunLog, cosine_warmup, optimizer_step
from worldsim.train.losses import head_loss, x0_from_v

log = logging.getLogger(__name__)


@dataclass
class StudentTrainConfig:
    steps: int = 800
    """Optimizer steps."""
    batch: int = 16
    """Clips per batch (per process)."""
    clip_len: int = 8
    """Frames per clip."""
    lr: float = 2e-4
    """AdamW peak learning rate."""
    warmup: int = 50
    """Warm-up steps."""
    teacher_steps: int = 8
    """Euler steps of the teacher's ODE (the student's timesteps are added to the grid)."""
    guidance_scale: float = 1.5
    """Classifier-free guidance on the action for the teacher's trajectories."""
    ode_batches: int = 32
    """Batches of ODE trajectories computed up front and reused (each with fresh timestep draws)."""
    head_weight: float = 0.1
    """Weight of the reward/termination head loss (on the clean context frames)."""
    save_every: int = 200
    """Steps between resumable checkpoints."""
    seed: int = 0


def paired_inputs(
    x_ctx: torch.Tensor, t_ctx: torch.Tensor, x_q: torch.Tensor, t_q: torch.Tensor, b: Batch, drop_actions: bool = False
) -> tuple[torch.Tensor, ...]:
    """Inputs of the paired layout [context frames, query frames] (see ``CausalDenoiser.paired_context``)."""
    has = b.has_action & ~torch.tensor(drop_actions, device=b.has_action.device)
    return (
        torch.cat([x_ctx, x_q], 1),
        torch.cat([t_ctx, t_q], 1),
        torch.cat([b.action, b.action], 1),
        torch.cat([has, has], 1),
    )


@torch.no_grad()
def teacher_trajectories(
    teacher: CausalDenoiser, b: Batch, student_ts: list[float], steps: int, guidance_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (x at each student timestep (B, T, K, C, h, w), teacher end point x0 (B, T, C, h, w))."""
    B, T = b.has_action.shape
    grid = sorted({round(1 - i / steps, 6) for i in range(steps)} | {round(t, 6) for t in student_ts}, reverse=True)
    ctx = teacher.paired_context(T, b.x.device)
    zeros = torch.zeros(B, T, device=b.x.device)
    x = torch.randn_like(b.x)
    states: dict[float, torch.Tensor] = {}
    for i, t in enumerate(grid):
        if any(abs(t - s) < 1e-6 for s in student_ts):
            states[t] = x.clone()
        tq = torch.full((B, T), t, device=b.x.device)
        v_c = teacher(*paired_inputs(b.x, zeros, x, tq, b), ctx=ctx).v[:, T:]
        v_u = teacher(*paired_inputs(b.x, zeros, x, tq, b, drop_actions=True), ctx=ctx).v[:, T:]
        v = v_u + guidance_scale * (v_c - v_u)
        t_next = grid[i + 1] if i + 1 < len(grid) else 0.0
        x = x + (t_next - t) * v
    xs = torch.stack([states[min(states, key=lambda k: abs(k - s))] for s in student_ts], dim=2)
    return xs, x


def train_student(
    cfg: StudentTrainConfig,
    world: WorldModel,
    sampler: ClipSampler,
    run_dir: Path,
    device: torch.device,
    d: Dist,
    resume: bool = False,
    teacher: CausalDenoiser | None = None,
    compile_model: bool = False,
) -> dict[str, float]:
    """Regress ``world``'s denoiser onto ``teacher``'s ODE (default: a frozen copy of itself)."""
    student = world.denoiser
    teacher = copy.deepcopy(student if teacher is None else teacher).eval().requires_grad_(False)
    ts = world.config.sampler.schedule()
    log.info("student timesteps %s; computing %d batches of teacher ODE trajectories", ts, cfg.ode_batches)
    data_state = sampler.rng.bit_generator.state
    pairs = []
    for _ in range(cfg.ode_batches):
        b = sampler.sample(cfg.batch).to(device)
        pairs.append((b, *teacher_trajectories(teacher, b, ts, cfg.teacher_steps, cfg.guidance_scale)))
    sampler.rng.bit_generator.state = data_state  # the pairs are a function of the seed, not of resumes
    del teacher

    student.train().requires_grad_(True)
    forward = TrainForward(student, compile_model)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    sched = cosine_warmup(opt, cfg.steps, cfg.warmup)
    pick = torch.Generator().manual_seed(cfg.seed + d.rank)
    ck = Checkpointer(run_dir / "state.pt", {"denoiser": student}, {"opt": opt, "sched": sched}, {"data": sampler.rng})
    start = ck.restore() if resume else 0
    run = RunLog(run_dir, cfg.steps, start, "student", d.main)
    tvec = torch.tensor(ts, device=device)
    metrics: dict[str, float] = {}
    for step in range(start, cfg.steps):
        b, xs, x0_t = pairs[int(sampler.rng.integers(len(pairs)))]
        B, T = b.has_action.shape
        k = torch.randint(len(ts), (B, T), generator=pick).to(device)
        xq = torch.gather(xs, 2, k.view(B, T, 1, 1, 1, 1).expand(-1, -1, 1, *xs.shape[3:])).squeeze(2)
        tq = tvec[k]
        out = forward(
            *paired_inputs(b.x, torch.zeros(B, T, device=device), xq, tq, b), ctx=student.paired_context(T, device)
        )
        x0_pred = x0_from_v(xq, tq, out.v[:, T:])
        reg = (x0_pred - x0_t).pow(2).mean()
        ctx_out = type(out)(
            v=out.v[:, :T], reward=out.reward[:, :T], term_logit=out.term_logit[:, :T], pooled=out.pooled[:, :T]
        )
        hl, hm = head_loss(ctx_out, b.reward, b.terminated, b.has_action)
        loss = reg + cfg.head_weight * hl
        gn = optimizer_step(loss, student, opt, sched, d)
        run.advance()
        if step % 20 == 0 or step == cfg.steps - 1:
            metrics = {"loss": reg.item(), "grad_norm": gn.item(), **hm}
            run.log(step, **metrics)
        if d.main and ((step + 1) % cfg.save_every == 0 or step == cfg.steps - 1):
            ck.save(step + 1)
    run.close()
    student.eval().requires_grad_(False)
    return {f"student_{k}": v for k, v in metrics.items()}
