"""The few-step sampler: one new frame per call, through the KV cache.

Flow matching, x_t = (1 - t) x0 + t eps. For each new frame: start from noise at t_0 = 1, and at
each step predict x0 = x_t - t v and re-noise it to the next t with *fresh* noise (the DMD2-style
sampler Self Forcing uses, not an Euler step). The last prediction is the frame. Then one pass
of the clean frame at t = 0 writes its K/V into the cache and gives the reward and termination
heads' outputs.

The same two functions run inference (``Session.step``) and Self Forcing training (which passes
``exit_step`` so that exactly one denoising step carries gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.engine.cache import KVCache
from worldsim.model.denoiser import CausalDenoiser, DenoiserOutput


@dataclass
class SamplerConfig:
    timesteps: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    """Noise levels visited for every frame, before the shift; 4 steps by default."""
    shift: float = 1.0
    """Timestep shift t' = s t / (1 + (s - 1) t); > 1 spends more steps at high noise."""
    cfg_scale: float = 1.0
    """Classifier-free guidance on the action (1.0 = off; the distilled student needs none)."""

    def schedule(self) -> list[float]:
        s = self.shift
        return [s * t / (1 + (s - 1) * t) for t in self.timesteps]


def denoise_frame(
    model: CausalDenoiser,
    cache: KVCache,
    action: torch.Tensor,
    has_action: torch.Tensor,
    noise: torch.Tensor,
    schedule: list[float],
    cfg_scale: float = 1.0,
    exit_step: int | None = None,
) -> torch.Tensor:
    """Generate one frame per row; returns x0 (B, 1, C, h, w).

    action (B, 1, ...); has_action (B, 1); noise (B, S, C, h, w) with S >= len(schedule) (slice
    0 starts the chain, slice i re-noises before step i). With ``cfg_scale != 1`` the cache holds
    2B rows: [0, B) conditional, [B, 2B) with the null action.

    ``exit_step`` (training): stop after that step; only it runs with gradient.
    """
    B = noise.shape[0]
    if abs(schedule[0] - 1.0) > 1e-6:
        raise ValueError(f"the first timestep must be 1.0 (pure noise), got {schedule[0]}")
    x = noise[:, :1]  # (B, 1, C, h, w): at t = 1, x_t is pure noise
    last = len(schedule) - 1 if exit_step is None else exit_step
    x0 = x
    for i in range(last + 1):
        t = schedule[i]
        with torch.set_grad_enabled(torch.is_grad_enabled() and (exit_step is None or i == exit_step)):
            ctx = cache.context(write=False)
            t_b = torch.full((x.shape[0], 1), t, device=x.device, dtype=x.dtype)
            if cfg_scale != 1.0:
                out = model(
                    torch.cat([x, x]),
                    torch.cat([t_b, t_b]),
                    torch.cat([action, action]),
                    torch.cat([has_action, torch.zeros_like(has_action)]),
                    ctx,
                )
                v_c, v_u = out.v[:B], out.v[B:]
                v = v_u + cfg_scale * (v_c - v_u)
            else:
                v = model(x, t_b, action, has_action, ctx).v
            x0 = x - t * v
        if i < last:
            t_next = schedule[i + 1]
            x = (1 - t_next) * x0.detach() + t_next * noise[:, i + 1 : i + 2]
    return x0


def commit_frame(
    model: CausalDenoiser,
    cache: KVCache,
    x0: torch.Tensor,
    action: torch.Tensor,
    has_action: torch.Tensor,
    t: float | torch.Tensor = 0.0,
    cfg: bool = False,
) -> DenoiserOutput:
    """The clean pass: write a frame's K/V into the cache (no gradient) and return head outputs.

    x0 (B, 1, C, h, w). ``t`` > 0 commits a noisy frame (Diffusion Forcing context). ``cfg``: the
    cache has 2B rows (see :func:`denoise_frame`) and both halves are written.
    """
    with torch.no_grad():
        x = x0.detach()
        if cfg:
            x, action = torch.cat([x, x]), torch.cat([action, action])
            has_action = torch.cat([has_action, torch.zeros_like(has_action)])
        if isinstance(t, torch.Tensor):
            tt = t.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 1)
        else:  # a fill kernel, not a host-to-device copy (CUDA graph capture allows none)
            tt = torch.full((x.shape[0], 1), float(t), device=x.device, dtype=x.dtype)
        return model(x, tt, action, has_action, cache.context(write=True))
