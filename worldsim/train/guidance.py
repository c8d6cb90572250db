"""Stage ``guidance``: distil classifier-free action guidance into the denoiser (one row per row).

A world sampled with action guidance (``sampler.guidance_scale`` g != 1) runs every row twice,
with and without its actions, and mixes the two predictions: ``v = v_u + g (v_c - v_u)``. That
doubles the engine's work per frame. This stage trains the denoiser to predict the guided
velocity directly from the conditional input (Meng et al. 2023, "On distillation of guided
diffusion models", stage one), with a frozen copy of itself as the target: the same noisy clips,
per-frame noise levels drawn mostly from the world's own few-step schedule (the levels it is
sampled at), the context mostly clean (as the engine caches it). The reward and termination
heads are matched to the frozen copy's (conditional) heads on the clean frames, so episode ends
and rewards stay what they were. The result samples with ``guidance_scale = 1``: half the rows.

No labels are used, only the recorded frames and actions as inputs: any recording of the game
works, and the world's behaviour is kept, not re-learned.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from worldsim.engine.world import WorldModel
from worldsim.train.compile import TrainForward
from worldsim.train.data import ClipSampler
from worldsim.train.loop import Checkpointer, Dist, RunLog, cosine_warmup, optimizer_step
from worldsim.train.losses import add_noise

log = logging.getLogger(__name__)


@dataclass
class GuidanceDistillConfig:
    steps: int = 600
    """Optimizer steps."""
    batch: int = 16
    """Clips per batch (per process)."""
    clip_len: int = 8
    """Frames per clip."""
    lr: float = 1e-4
    """AdamW peak learning rate (linear warm-up, cosine decay to 10%): a fine-tune, keep it low."""
    warmup: int = 30
    """Warm-up steps."""
    guidance_scale: float = 0.0
    """The guidance to distil; 0: the world's own ``sampler.guidance_scale``."""
    clean_prob: float = 0.5
    """Probability that a frame is exactly clean (t = 0), like the context the engine caches."""
    schedule_prob: float = 0.8
    """Probability that a noisy frame's level is one of the sampler's timesteps (else uniform in (0, 1])."""
    head_weight: float = 1.0
    """Weight of matching the frozen copy's reward and termination outputs on clean frames."""
    save_every: int = 100
    """Steps between resumable checkpoints."""
    seed: int = 0


class GuidanceDistillError(ValueError):
    """The world cannot be guidance-distilled as asked."""


def _timesteps(cfg: GuidanceDistillConfig, levels: torch.Tensor, B: int, T: int, device: torch.device) -> torch.Tensor:
    """(B, T) per-frame noise levels: 0, one of ``levels``, or uniform."""
    pick = levels[torch.randint(len(levels), (B, T), device=device)]
    t = torch.where(torch.rand(B, T, device=device) < cfg.schedule_prob, pick, torch.rand(B, T, device=device))
    return torch.where(torch.rand(B, T, device=device) < cfg.clean_prob, torch.zeros_like(t), t)


def train_guidance(
    cfg: GuidanceDistillConfig,
    world: WorldModel,
    sampler: ClipSampler,
    run_dir: Path,
    device: torch.device,
    d: Dist,
    resume: bool = False,
    compile_model: bool = False,
) -> dict[str, float]:
    """Distil ``world``'s guided sampler into its denoiser, in place; the world then samples unguided."""
    g = cfg.guidance_scale or world.config.sampler.guidance_scale
    if g == 1.0:
        raise GuidanceDistillError(
            "nothing to distil: the world samples without guidance (sampler.guidance_scale = 1); "
            "pass --set guidance.guidance_scale=G for the guidance to distil"
        )
    model = world.denoiser
    target = copy.deepcopy(model).eval().requires_grad_(False)  # the guided world, frozen
    levels = torch.tensor([t for t in world.config.sampler.timesteps if t > 0], device=device, dtype=torch.float32)
    model.train().requires_grad_(True)
    forward, target_forward = TrainForward(model, compile_model), TrainForward(target, compile_model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    sched = cosine_warmup(opt, cfg.steps, cfg.warmup)
    ck = Checkpointer(run_dir / "state.pt", {"denoiser": model}, {"opt": opt, "sched": sched}, {"data": sampler.rng})
    start = ck.restore() if resume else 0
    run = RunLog(run_dir, cfg.steps, start, "guidance", d.main)
    metrics: dict[str, float] = {}
    for step in range(start, cfg.steps):
        b = sampler.sample(cfg.batch).to(device)
        B, T = b.has_action.shape
        t = _timesteps(cfg, levels, B, T, device)
        xt = add_noise(b.x, t, torch.randn_like(b.x))
        with torch.no_grad():
            cond = target_forward(xt, t, b.action, b.has_action)
            uncond = target_forward(xt, t, b.action, torch.zeros_like(b.has_action))
            v_guided = uncond.v.lerp(cond.v, g)  # (B, T, C, h, w)
        out = forward(xt, t, b.action, b.has_action)
        noisy, clean = (t > 0).float(), ((t == 0) & b.has_action).float()
        vl = ((out.v - v_guided).pow(2).flatten(2).mean(-1) * noisy).sum() / noisy.sum().clamp_min(1)
        p_end = torch.sigmoid(cond.term_logit)  # the frozen heads' end probability, a soft target
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.term_logit, p_end, reduction="none")
        head = (out.reward - cond.reward).pow(2) + bce  # (B, T)
        hl = (head * clean).sum() / clean.sum().clamp_min(1)
        loss = vl + cfg.head_weight * hl
        gn = optimizer_step(loss, model, opt, sched, d)
        run.advance()
        if step % 20 == 0 or step == cfg.steps - 1:
            metrics = {
                "loss": vl.item(),
                "head_loss": hl.item(),
                "grad_norm": gn.item(),
                "lr": float(sched.get_last_lr()[0]),
            }
            run.log(step, **metrics)
        if d.main and ((step + 1) % cfg.save_every == 0 or step == cfg.steps - 1):
            ck.save(step + 1)
    run.close()
    model.eval().requires_grad_(False)
    world.config.sampler = dataclasses.replace(world.config.sampler, guidance_scale=1.0)
    return {f"guidance_{k}": v for k, v in {**metrics, "distilled_scale": g}.items()}
