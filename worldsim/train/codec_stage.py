"""Stage 1: the frame codec, trained by reconstruction on recorded frames.

Loss: MSE + 0.1 L1 in [-1, 1] pixel space, with a little Gaussian noise on the latents so the
decoder tolerates the small errors of generated latents. Afterwards the per-channel latent
mean/std are measured on training frames and stored in the codec, and held-out PSNR is
reported. The output is a world checkpoint whose denoiser is still untrained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worldsim.engine.world import WorldConfig, WorldModel
from worldsim.fidelity import psnr
from worldsim.model.codec import FrameCodec
from worldsim.model.denoiser import CausalDenoiser
from worldsim.train.data import AlignedEpisode
from worldsim.train.loop import Checkpointer, Dist, RunLog, optimizer_step

log = logging.getLogger(__name__)


@dataclass
class CodecTrainConfig:
    steps: int = 3000
    """Optimizer steps."""
    batch: int = 64
    """Frames per batch (per process)."""
    lr: float = 1e-3
    """AdamW learning rate (cosine decay to 5%)."""
    latent_noise: float = 0.05
    """Std of the noise added to raw latents during training (relative to their std)."""
    save_every: int = 500
    """Steps between resumable checkpoints."""
    fresh_denoiser: bool = False
    """With ``--init``: keep only its codec and start the teacher from a new, randomly initialised
    denoiser of the same shape (e.g. when the old world learned a recording bot's confounder that
    the new data should not inherit). Default: its denoiser is the teacher's starting point."""
    seed: int = 0


class FrameSampler:
    def __init__(self, eps: list[AlignedEpisode], seed: int) -> None:
        self.frames = np.concatenate([e.frames for e in eps])  # (F, H, W, 3) uint8
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> torch.Tensor:
        return torch.from_numpy(self.frames[self.rng.integers(len(self.frames), size=n)])


@torch.no_grad()
def evaluate(world: WorldModel, frames: np.ndarray, device: torch.device, n: int = 2048) -> float:
    idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(int)
    x = torch.from_numpy(frames[idx]).to(device)
    rec = torch.cat([world.codec.decode(world.codec.encode(x[i : i + 256])) for i in range(0, len(x), 256)])
    # PSNR of the MSE pooled over all frames (they are stacked into one tall frame), as the cards report it.
    w = x.shape[-2]
    return float(psnr(rec.cpu().numpy().reshape(-1, w, 3), x.cpu().numpy().reshape(-1, w, 3)))


@torch.no_grad()
def _latent_stats(codec: FrameCodec, sampler: FrameSampler, device: torch.device) -> None:
    """Per-channel latent mean/std on training frames, so the denoiser sees unit-variance latents."""
    x = codec.to_unit(sampler.sample(2048).to(device))
    z = torch.cat([codec.encode_unit(x[i : i + 256]) for i in range(0, len(x), 256)])
    codec.latent_mean.copy_(z.mean(dim=(0, 2, 3)))
    codec.latent_std.copy_(z.std(dim=(0, 2, 3)).clamp_min(1e-3))


def train_codec(
    cfg: CodecTrainConfig,
    world_cfg: WorldConfig,
    train_eps: list[AlignedEpisode],
    val_eps: list[AlignedEpisode],
    run_dir: Path,
    device: torch.device,
    d: Dist,
    resume: bool = False,
    init: WorldModel | None = None,
) -> tuple[WorldModel, dict[str, float]]:
    """Train the codec of a new world (or fine-tune ``init``'s for ``cfg.steps``: 0 keeps it as it is,
    latent statistics included, so ``init``'s denoiser still fits it)."""
    world = init.to(device) if init is not None else WorldModel(world_cfg).to(device)
    if init is not None and cfg.fresh_denoiser:
        log.info("codec.fresh_denoiser: keeping --init's codec, the teacher starts from a new denoiser")
        world.denoiser = CausalDenoiser(world.config.denoiser, world.config.action_space).to(device)
    codec = world.codec
    opt = torch.optim.AdamW(codec.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(s, cfg.steps) / max(cfg.steps, 1)))
    )
    sampler = FrameSampler(train_eps, cfg.seed + d.rank)
    ck = Checkpointer(run_dir / "state.pt", {"codec": codec}, {"opt": opt, "sched": sched}, {"data": sampler.rng})
    start = ck.restore() if resume else 0
    run = RunLog(run_dir, cfg.steps, start, "codec", d.main)
    for step in range(start, cfg.steps):
        x = codec.to_unit(sampler.sample(cfg.batch).to(device))
        z = codec.encode_unit(x)
        z = z + cfg.latent_noise * z.detach().std() * torch.randn_like(z)
        rec = codec.decode_unit(z)
        loss = F.mse_loss(rec, x) + 0.1 * F.l1_loss(rec, x)
        optimizer_step(loss, codec, opt, sched, d)
        run.advance()
        if step % 25 == 0 or step == cfg.steps - 1:
            run.log(step, loss=loss.item(), psnr_batch=10 * np.log10(4.0 / max(F.mse_loss(rec, x).item(), 1e-12)))
        if d.main and ((step + 1) % cfg.save_every == 0 or step == cfg.steps - 1):
            ck.save(step + 1)
    run.close()

    if init is None or cfg.steps > 0:
        _latent_stats(codec, sampler, device)
    val_frames = np.concatenate([e.frames for e in val_eps])
    metrics = {"codec_psnr_val": evaluate(world, val_frames, device)}
    log.info("codec: held-out PSNR %.2f dB on %d frames", metrics["codec_psnr_val"], min(2048, len(val_frames)))
    return world, metrics
