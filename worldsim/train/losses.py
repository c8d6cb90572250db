"""Losses shared by the stages: flow matching, the reward/termination heads, and DMD.

Flow matching: x_t = (1 - t) x0 + t eps, target velocity v = eps - x0, x0 = x_t - t v.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worldsim.model.denoiser import HeadOutputs


def bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t (B, T) -> broadcastable to x (B, T, C, h, w)."""
    return t.view(*t.shape, *([1] * (x.ndim - t.ndim)))


def add_noise(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    tt = bcast(t, x0)
    return (1 - tt) * x0 + tt * eps


def x0_from_v(xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return xt - bcast(t, xt) * v


def motion_weight(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-element loss weights (B, T, C, h, w) that favour what moved: 1 + ``strength`` x the
    element's change from the clip's previous frame, relative to that frame's mean change (the
    first frame of a clip: 1). In CartPole the pole is a few latent cells of 64, so an unweighted
    loss spends almost nothing on where it went; its motion is the dynamics the world must learn."""
    w = torch.ones_like(x0)
    if strength > 0 and x0.shape[1] > 1:
        d = (x0[:, 1:] - x0[:, :-1]).abs()  # (B, T-1, C, h, w)
        w[:, 1:] = 1 + strength * d / d.flatten(2).mean(-1).clamp_min(1e-6)[..., None, None, None]
    return w


def flow_loss(
    v: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared velocity error over the frames where ``frame_mask`` (B, T) is True; with
    ``weight`` (like x0, e.g. :func:`motion_weight`) a weighted mean within each frame."""
    return frame_mse(v, eps - x0, frame_mask, weight)


def frame_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared error of ``pred`` against ``target`` (B, T, C, h, w): the mean within each frame
    (weighted by ``weight`` when given), then over the frames where ``frame_mask`` (B, T) is True."""
    sq = (pred - target).pow(2)
    if weight is None:
        err = sq.flatten(2).mean(-1)  # (B, T)
    else:
        err = (sq * weight).flatten(2).sum(-1) / weight.flatten(2).sum(-1)
    if frame_mask is None:
        return err.mean()
    return (err * frame_mask).sum() / frame_mask.sum().clamp_min(1)


def head_loss(
    out: HeadOutputs, reward: torch.Tensor, terminated: torch.Tensor, mask: torch.Tensor, pos_weight: float = 10.0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reward MSE + termination BCE (terminal frames are rare: up-weighted) on frames in ``mask`` (B, T)."""
    m = mask.float()
    n = m.sum().clamp_min(1)
    r = ((out.reward - reward.float()).pow(2) * m).sum() / n
    bce = F.binary_cross_entropy_with_logits(
        out.term_logit, terminated.float(), pos_weight=torch.tensor(pos_weight, device=m.device), reduction="none"
    )
    b = (bce * m).sum() / n
    return r + b, {"reward_mse": r.item(), "term_bce": b.item()}


def dmd_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Distribution matching (DMD): push samples x toward the real score, away from the fake one.

    grad = (fake - real) / mean|x - real| per sample, applied as 0.5 * MSE(x, stopgrad(x - grad))
    over the frames in ``frame_mask`` (B, T) (generated frames; the given context is excluded).
    """
    with torch.no_grad():
        m = bcast(frame_mask.float(), x)
        norm = ((x - x0_real).abs() * m).flatten(1).sum(1) / (m.expand_as(x).flatten(1).sum(1)).clamp_min(1)
        grad = (x0_fake - x0_real) / bcast(norm.clamp_min(1e-6).view(-1, 1), x)
        grad = torch.nan_to_num(grad)
        target = x - grad
    err = (x - target).pow(2) * m
    return 0.5 * err.sum() / m.expand_as(x).sum().clamp_min(1)
