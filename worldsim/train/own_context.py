"""Own-context clips: the denoising loss on recorded frames, with the world's own rollout as context.

A world trained with Diffusion Forcing only ever sees recorded frames (clean or noised) as
history; at inference, a few frames after a session starts, its window holds nothing but frames it
made itself. On CartPole every fine-tune lost its prediction exactly there (the card: from frame 6,
when the last real frame leaves the 7-frame window), i.e. the world reads the pole's velocity off
its own frames worse than off real ones.

An own-context clip fixes the inputs to what inference sees and keeps the loss the teacher's:

1. a clip of ``context + rollout`` recorded frames; the world, exactly as a session runs it (its
   sampler: steps, guidance, eta; its rolling cache), starts from the first ``context`` frames and
   generates the rest under the recorded actions, without gradient;
2. a window of ``clip_len`` frames is cut from [real context, generated frames] (its offset
   uniform, so the window holds 0 to ``context`` real frames), and scored in the teacher-forcing
   layout (``CausalDenoiser.paired_context``): query frame i is the *recorded* frame i noised to a
   level in (0, 1), and it attends to the own-context frames before it.

So the world learns the distribution of the real next frame given what it generated itself (the
exposure-bias fix of scheduled sampling, for a diffusion model), meant to keep every real outcome
the frames allow, unlike a squared error on the rollout (the card's 2026-12-09 "rollout loss", mean
seeking: a pole that never falls) or DMD (mode seeking: it fell late). Measured on CartPole (its
card, 2026-12-19) it did not: half the clips so for 400 steps damped the world (the pole fell late
in 56-64% of random-play episodes, frame 1 lost 2-3 dB); off in the bundled worlds.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from worldsim.engine.cache import CacheConfig, KVCache
from worldsim.engine.sampler import SamplerConfig, cache_passes, cache_rows, commit_context, commit_generated, denoise
from worldsim.engine.world import WorldModel
from worldsim.model.denoiser import CausalDenoiser
from worldsim.train.compile import TrainForward
from worldsim.train.data import Batch, ClipSampler, conditioned_on
from worldsim.train.losses import add_noise, flow_loss

log = logging.getLogger(__name__)


def check_sampler(sampler: SamplerConfig) -> None:
    """Own-context rollouts run the sampler's plain path; refuse what they would silently skip."""
    if sampler.history_guidance or sampler.cache_pass != "clean":
        raise ValueError(
            "own-context rollouts support the clean cache pass without history guidance; "
            "set sampler.history_guidance=0 and sampler.cache_pass=clean (worldsim sampler), or own_context=0"
        )


@torch.no_grad()
def own_rollout(
    model: CausalDenoiser,
    b: Batch,
    context: int,
    sampler: SamplerConfig,
    cache_cfg: CacheConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Frames ``context..T-1`` of each clip as the world generates them: (B, T - context, C, h, w).

    The first ``context`` recorded frames are committed as a session's reset does (the first one
    without an action), then each frame is denoised with the sampler (guidance, eta) under the
    recorded action and committed (re-noised to ``sampler.cache_noise``, as a session does); the
    cache rolls as at inference. Returns the clean frames. ``generator``: where the noise comes
    from (a one-row session seeded alike draws the same, frame for frame).
    """
    B, T = b.has_action.shape
    x = b.x.float()
    schedule, guided = sampler.schedule(), sampler.guided
    cache = KVCache(model.cfg, cache_cfg, len(cache_rows(range(B), guided)), x.device, x.dtype)
    commit_context(model, cache, x[:, :context], b.action[:, :context], guided=guided)
    has = torch.ones(B, 1, dtype=torch.bool, device=x.device)
    out = []
    for i in range(context, T):
        passes = cache_passes(model, cache)
        a = b.action[:, i : i + 1]
        noise = torch.randn(B, sampler.noise_slots, *x.shape[2:], generator=generator, device=x.device, dtype=x.dtype)
        x0 = denoise(
            passes,
            a,
            has,
            noise,
            schedule,
            sampler.step_guidance(),
            eta=float(sampler.eta),
            renoise_scale=float(sampler.renoise_scale),
        ).x0
        commit_generated(passes, x0, a, has, noise, float(sampler.cache_noise), guided)
        out.append(x0)
    return torch.cat(out, dim=1)


def own_context_loss(
    forward: TrainForward,
    b: Batch,
    generated: torch.Tensor,
    cond: torch.Tensor,
    clip_len: int,
    offset: int,
    context_noise: float = 0.0,
) -> torch.Tensor:
    """The flow loss of the recorded frames of window ``[offset, offset + clip_len)`` of the clip,
    each given the [real context, generated] frames before it (the paired layout).

    b.x (B, T, C, h, w) recorded latents; generated (B, G, C, h, w) frames ``T - G .. T-1``;
    cond (B, T) the frames whose action the model is given. ``context_noise``: the level the
    generated frames are re-noised to and marked with (the sampler's ``cache_noise``: the world
    then tells its own frames from real ones, at inference as here); real frames stay clean.
    """
    B, T = cond.shape
    sl = slice(offset, offset + clip_len)
    x_real = b.x.float()
    K = T - generated.shape[1]
    t_ctx = torch.zeros(B, T, device=x_real.device)
    t_ctx[:, K:] = context_noise
    gen = add_noise(generated, t_ctx[:, K:], torch.randn_like(generated)) if context_noise else generated
    x_ctx = torch.cat([x_real[:, :K], gen], 1)[:, sl]  # (B, W, C, h, w)
    t_ctx = t_ctx[:, sl]
    x0 = x_real[:, sl]
    t = torch.rand(B, clip_len, device=x0.device).clamp_min(1e-3)  # queries: every level in (0, 1)
    eps = torch.randn_like(x0)
    xq = add_noise(x0, t, eps)
    c = cond[:, sl]
    model = forward.module
    assert isinstance(model, CausalDenoiser)
    out = forward(
        torch.cat([x_ctx, xq], 1),
        torch.cat([t_ctx, t], 1),
        torch.cat([b.action[:, sl], b.action[:, sl]], 1),
        torch.cat([c, c], 1),
        model.paired_context(clip_len, x0.device),
    )
    return flow_loss(out.v[:, clip_len:], x0, eps)


class OwnContextClips:
    """The own-context share of a stage's batches: its own clip sampler (``context + rollout``
    frames, so the window can hold nothing but generated frames), the world's sampler and cache
    settings, and the loss of one batch of them."""

    def __init__(
        self,
        clips: ClipSampler,
        world: WorldModel,
        rows: int,
        clip_len: int,
        policy_actions: str,
        action_dropout: float,
    ) -> None:
        check_sampler(world.config.sampler)
        self.clips, self.rows, self.clip_len = clips, rows, clip_len
        self.context = world.config.context_frames
        self.sampler, self.cache_cfg = world.config.sampler, world.config.cache
        self.policy_actions, self.action_dropout = policy_actions, action_dropout
        if clips.T < clip_len or clips.T <= self.context:
            raise ValueError(f"own-context clips of {clips.T} frames: need >= clip_len ({clip_len}) and > context")

    @classmethod
    def create(
        cls, share: float, rollout: int, batch: int, clip_len: int, sampler: ClipSampler, world: WorldModel, **kw: Any
    ) -> OwnContextClips | None:
        """``round(share * batch)`` own-context rows per batch (None when that is 0)."""
        rows = round(share * batch)
        if not 0.0 <= share < 1.0 or rows >= batch or rollout < 1:
            raise ValueError(
                f"own_context is a share in [0, 1) that leaves plain clips in a batch of {batch}, and "
                f"own_context_rollout >= 1; got {share} ({rows} rows) and {rollout}: lower own_context"
            )
        if rows == 0:
            return None
        K = world.config.context_frames
        clips = ClipSampler(
            sampler.eps, K + rollout, seed=int(sampler.rng.integers(2**31)), term_boost=sampler.term_boost
        )
        log.info("own context: %d of %d clips a batch, %d real + %d generated frames", rows, batch, K, rollout)
        return cls(clips, world, rows, clip_len, **kw)

    def loss(self, forward: TrainForward, device: torch.device) -> torch.Tensor:
        model = forward.module
        assert isinstance(model, CausalDenoiser)
        b = self.clips.sample(self.rows).to(device)
        generated = own_rollout(model, b, self.context, self.sampler, self.cache_cfg)
        drop = torch.rand(self.rows, 1, device=device) < self.action_dropout
        cond = conditioned_on(b, self.policy_actions) & ~drop
        offset = int(self.clips.rng.integers(self.clips.T - self.clip_len + 1))
        return own_context_loss(forward, b, generated, cond, self.clip_len, offset, float(self.sampler.cache_noise))
