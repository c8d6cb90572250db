"""Stage 4: Self Forcing, and its Teacher Forcing / Diffusion Forcing baselines.

The student rolls a clip out autoregressively *during training*, exactly as the engine does at
inference: the given context frames are committed to a KV cache, then every new frame is
denoised in a few steps through the cache and its clean pass is committed. Per frame a random
exit step is drawn and only that denoising step runs with gradient (gradient truncation); the
cache is written without gradient, so context K/V carries none.

The whole generated clip is scored by distribution matching (DMD): the real score is the
teacher with classifier-free guidance on the actions, the fake score a critic initialised from
the teacher and trained online (flow matching) on the student's own samples, ``critic_steps``
critic updates per student update (AdamW with beta1 = 0). The exported weights are an EMA of
the student.

Optionally (``rollout_weight``) the rollout is also scored frame by frame against the recorded
clip it started from: the student rolled out from the clip's context with the clip's actions, so
in a deterministic game the recorded frames are where its own frames should be, drift included.
With ``dmd_weight = 0`` that is the only loss, and no critic is trained.

``mode`` selects what the student's context is while it rolls out, everything else (loss,
data, budget) equal:

- ``self``: its own generated frames (Self Forcing);
- ``teacher``: the ground-truth clean frames (Teacher Forcing);
- ``diffusion``: ground-truth frames noised to a random level (Diffusion Forcing).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from worldsim.engine.cache import KVCache
from worldsim.engine.sampler import commit_context, commit_frame, denoise_frame
from worldsim.engine.world import WorldModel
from worldsim.model.denoiser import CausalDenoiser
from worldsim.train.compile import TrainForward
from worldsim.train.data import POLICY_ACTIONS, Batch, ClipSampler, conditioned_on
from worldsim.train.loop import Checkpointer, Dist, RunLog, ema_update, sync_grads
from worldsim.train.losses import add_noise, dmd_loss, flow_loss, frame_mse, head_loss, motion_weight, x0_from_v

log = logging.getLogger(__name__)


@dataclass
class SelfForcingConfig:
    steps: int = 400
    """Student (generator) updates."""
    batch: int = 8
    """Clips per batch (per process)."""
    clip_len: int = 8
    """Frames per clip: ``context`` given + the rest generated."""
    context: int = 2
    """Ground-truth frames given before the rollout (as the engine's reset)."""
    lr: float = 5e-5
    """Student AdamW learning rate (betas 0, 0.999 as the reference)."""
    critic_lr: float = 1e-4
    """Critic AdamW learning rate."""
    critic_steps: int = 2
    """Critic updates per student update; the first reuses the student's rollout."""
    guidance_scale: float = 2.0
    """Guidance on the action in the real (teacher) score."""
    t_min: float = 0.02
    """DMD noise levels are drawn from [t_min, t_max]."""
    t_max: float = 0.98
    ema: float = 0.99
    """EMA decay of the exported student weights."""
    head_weight: float = 0.1
    """Weight of the head loss (heads re-fit on ground-truth frames; backbone not touched)."""
    term_boost: float = 0.1
    """Share of clips sampled to end on a terminal frame."""
    dmd_weight: float = 1.0
    """Weight of the DMD loss (0: none, and no critic is trained)."""
    rollout_weight: float = 0.0
    """Weight of the rollout loss: each generated frame (its exit step's x0) against the clip's
    recorded frame, the student having rolled out from the clip's context with the clip's actions
    over its own frames. In a deterministic game the recorded future is the one right answer, so
    this scores the dynamics over the whole rollout, drift included (DMD scores the distribution
    of clips, not where a given push takes the pole). 0: off (the Self Forcing of the paper)."""
    rollout_motion_weight: float = 0.0
    """Weights the rollout loss towards what moved (:func:`~worldsim.train.losses.motion_weight` of
    the recorded clip; 0: the plain mean)."""
    policy_actions: str = "condition"
    """What the recording policy's own (not free) actions do in the rollout: ``condition`` (as
    in the paper) or ``null`` (replaced by the null action, as ``teacher.policy_actions`` does).
    Use ``null`` with ``rollout_weight`` on a bot's recording: from its own drifted frames the
    student cannot see the real state, and a bot's action tells it (CartPole's balancing bot
    pushes right *because* the pole falls right), so the rollout loss teaches that confounder.
    Measured: 200 steps of the rollout loss alone with ``condition`` on the CartPole recipe's data
    turned every push around (sign agreement 0.00, the pole never falls). DMD scores against the
    teacher's causal prediction, so ``condition`` is safe there."""
    refit_heads: bool = True
    """After training, re-fit the reward/termination heads on the frozen EMA backbone (``worldsim.train.heads``)."""
    save_every: int = 50
    """Steps between resumable checkpoints."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy_actions not in POLICY_ACTIONS:
            raise ValueError(f"self_forcing.policy_actions must be 'condition' or 'null', got {self.policy_actions!r}")
        if self.dmd_weight <= 0 and self.rollout_weight <= 0:
            raise ValueError("self_forcing: dmd_weight and rollout_weight are both 0, so nothing trains; set one > 0")


def rollout(
    student: CausalDenoiser,
    cache: KVCache,
    b: Batch,
    context: int,
    schedule: list[float],
    mode: str = "self",
    grad: bool = True,
) -> torch.Tensor:
    """Generate frames context..T-1 of the clip autoregressively; returns (B, T - context, C, h, w).

    With ``grad``, each frame's exit step (uniform over the schedule) carries gradient and the
    output of that step is the frame; without, every frame runs the full schedule.
    """
    B, T = b.has_action.shape
    commit_context(student, cache, b.x[:, :context], b.action[:, :context], b.has_action[:, :context])
    outs = []
    S = len(schedule)
    for i in range(context, T):
        a, h = b.action[:, i : i + 1], b.has_action[:, i : i + 1]
        noise = torch.randn(B, S, *b.x.shape[2:], device=b.x.device)
        exit_step = int(torch.randint(S, (1,))) if grad else None
        with torch.set_grad_enabled(grad):
            x0 = denoise_frame(student, cache, a, h, noise, schedule, exit_step=exit_step)
        outs.append(x0)
        if mode == "self":
            commit_frame(student, cache, x0, a, h)
        elif mode == "teacher":
            commit_frame(student, cache, b.x[:, i : i + 1], a, h)
        elif mode == "diffusion":
            tc = torch.rand(B, 1, device=b.x.device)
            noisy = add_noise(b.x[:, i : i + 1], tc, torch.randn_like(b.x[:, i : i + 1]))
            commit_frame(student, cache, noisy, a, h, t=tc)
        else:
            raise ValueError(f"unknown mode {mode!r}: self, teacher or diffusion")
    return torch.cat(outs, dim=1)


def _score_inputs(
    x_full: torch.Tensor, context: int, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noise generated frames (>= context) at per-sample level t (B,); context stays clean."""
    B, T = x_full.shape[:2]
    tt = t.view(B, 1).expand(B, T).clone()
    tt[:, :context] = 0
    eps = torch.randn_like(x_full)
    return add_noise(x_full, tt, eps), tt, eps


def conditioned(cfg: SelfForcingConfig, b: Batch) -> Batch:
    """``b`` as the student rolls it out: with ``policy_actions = "null"`` the recording policy's
    own actions (not free) are the null action (``has_action`` False); frames stay valid."""
    mask = conditioned_on(b, cfg.policy_actions)
    return b if mask is b.has_action else dataclasses.replace(b, has_action=mask)


def _warn_confounder(cfg: SelfForcingConfig, sampler: ClipSampler) -> None:
    """The rollout loss on a bot's recording with the bot's actions conditioned learns the bot."""
    if cfg.rollout_weight > 0 and cfg.policy_actions == "condition" and sampler.free_share() < 1:
        log.warning(
            "self_forcing.rollout_weight with policy_actions=condition on a recording where %.0f%% of the actions "
            "are the bot's own: the rollout loss can learn the bot's choices as the actions' effect; "
            "set self_forcing.policy_actions=null",
            100 * (1 - sampler.free_share()),
        )


def _student_loss(
    cfg: SelfForcingConfig,
    gen: torch.Tensor,
    b: Batch,
    valid: torch.Tensor,
    teacher_fwd: TrainForward,
    critic_fwd: TrainForward,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The generator's loss on its rollout ``gen`` (B, T - K, ...) of clip ``b`` (as
    :func:`conditioned`): DMD on the whole clip and / or the rollout loss against the recorded
    frames over the ``valid`` (B, T) ones (see the config's weights)."""
    K = cfg.context
    B, T = b.has_action.shape
    x_full = torch.cat([b.x[:, :K], gen], dim=1)
    gen_mask = torch.zeros(B, T, dtype=torch.bool, device=gen.device)
    gen_mask[:, K:] = True
    loss, out = gen.new_zeros(()), {}
    if cfg.dmd_weight > 0:
        with torch.no_grad():
            t = cfg.t_min + (cfg.t_max - cfg.t_min) * torch.rand(B, device=gen.device)
            xt, tt, _ = _score_inputs(x_full.detach(), K, t)
            v_c = teacher_fwd(xt, tt, b.action, b.has_action).v
            v_u = teacher_fwd(xt, tt, b.action, torch.zeros_like(b.has_action)).v
            x0_real = x0_from_v(xt, tt, v_u + cfg.guidance_scale * (v_c - v_u))
            x0_fake = x0_from_v(xt, tt, critic_fwd(xt, tt, b.action, b.has_action).v)
        dmd = dmd_loss(x_full, x0_real, x0_fake, gen_mask)
        loss, out["dmd"] = loss + cfg.dmd_weight * dmd, dmd.item()
    if cfg.rollout_weight > 0:
        # Frames after a clip's end (no action) are padding: not scored.
        w = motion_weight(b.x, cfg.rollout_motion_weight)[:, K:] if cfg.rollout_motion_weight else None
        ro = frame_mse(gen, b.x[:, K:], valid[:, K:], w)
        loss, out["rollout"] = loss + cfg.rollout_weight * ro, ro.item()
    return loss, out


def _critic_updates(
    cfg: SelfForcingConfig,
    critic: CausalDenoiser,
    critic_fwd: TrainForward,
    opt_c: torch.optim.Optimizer,
    first: tuple[Batch, torch.Tensor],
    rollout_fn: Callable[[Batch], torch.Tensor],
    sampler: ClipSampler,
    d: Dist,
) -> float:
    """``critic_steps`` flow-matching updates of the critic on the student's samples (the first
    on the student update's own rollout ``first``); returns the mean loss."""
    K, device = cfg.context, first[1].device
    losses = []
    for j in range(cfg.critic_steps):
        if j == 0:
            b, fake = first[0], first[1].detach()
        else:
            b = conditioned(cfg, sampler.sample(cfg.batch).to(device))
            with torch.no_grad():
                fake = rollout_fn(b)
        B, T = b.has_action.shape
        gen_mask = torch.zeros(B, T, dtype=torch.bool, device=device)
        gen_mask[:, K:] = True
        xf = torch.cat([b.x[:, :K], fake], dim=1)
        tc = torch.rand(B, T, device=device)
        tc[:, :K] = 0
        eps = torch.randn_like(xf)
        out = critic_fwd(add_noise(xf, tc, eps), tc, b.action, b.has_action)
        c_loss = flow_loss(out.v, xf, eps, gen_mask)
        opt_c.zero_grad(set_to_none=True)
        c_loss.backward()
        sync_grads(list(critic.parameters()), d)
        torch.nn.utils.clip_grad_norm_(critic.parameters(), 1.0)
        opt_c.step()
        losses.append(c_loss.item())
    return sum(losses) / len(losses)


def train_self_forcing(
    cfg: SelfForcingConfig,
    world: WorldModel,
    teacher_world: WorldModel,
    sampler: ClipSampler,
    run_dir: Path,
    device: torch.device,
    d: Dist,
    resume: bool = False,
    mode: str = "self",
    compile_model: bool = False,
) -> dict[str, float]:
    _warn_confounder(cfg, sampler)
    student = world.denoiser
    teacher = teacher_world.denoiser.eval().requires_grad_(False)
    critic = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    student.train().requires_grad_(True)
    # Whole-clip forwards (compiled with --compile); the rollout runs frame by frame through the cache.
    teacher_fwd, critic_fwd, student_fwd = (TrainForward(m, compile_model) for m in (teacher, critic, student))
    schedule = world.config.sampler.schedule()
    opt_g = torch.optim.AdamW(student.parameters(), lr=cfg.lr, betas=(0.0, 0.999), weight_decay=0.01)
    opt_c = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, betas=(0.0, 0.999), weight_decay=0.01)
    ck = Checkpointer(
        run_dir / "state.pt",
        {"student": student, "critic": critic, "ema": ema},
        {"opt_g": opt_g, "opt_c": opt_c},
        {"data": sampler.rng},
    )
    start = ck.restore() if resume else 0
    run = RunLog(run_dir, cfg.steps, start, f"self-forcing[{mode}]", d.main)
    cache = KVCache(student.cfg, world.config.cache, cfg.batch, device)
    if cfg.clip_len > world.config.cache.capacity + 1:
        log.warning(
            "clip_len %d exceeds cache capacity + 1 (%d): the rollout rolls the cache",
            cfg.clip_len,
            world.config.cache.capacity + 1,
        )
    metrics: dict[str, float] = {}
    for step in range(start, cfg.steps):
        # ---- student update: rollout with truncated gradient, scored on the whole clip
        b = sampler.sample(cfg.batch).to(device)
        rb = conditioned(cfg, b)
        B, T = b.has_action.shape
        gen = rollout(student, cache, rb, cfg.context, schedule, mode, grad=True)  # (B, T-K, ...)
        g_loss, gm = _student_loss(cfg, gen, rb, b.has_action, teacher_fwd, critic_fwd)
        # Heads: re-fit on ground truth with the backbone's features detached.
        with torch.no_grad():
            pooled = student_fwd(b.x, torch.zeros(B, T, device=device), b.action, b.has_action).pooled
        h_loss, hm = head_loss(student.head_outputs(pooled), b.reward, b.terminated, b.has_action)
        opt_g.zero_grad(set_to_none=True)
        (g_loss + cfg.head_weight * h_loss).backward()
        sync_grads(list(student.parameters()), d)
        g_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt_g.step()
        ema_update(ema, student, cfg.ema)
        if cfg.dmd_weight > 0:  # ---- the critic follows the student's samples
            gm["critic"] = _critic_updates(
                cfg,
                critic,
                critic_fwd,
                opt_c,
                (rb, gen),
                lambda bb: rollout(student, cache, bb, cfg.context, schedule, mode, grad=False),
                sampler,
                d,
            )
        run.advance()
        if step % 5 == 0 or step == cfg.steps - 1:
            metrics = {**gm, "grad_norm": g_norm.item(), **hm}
            run.log(step, **metrics)
        if d.main and ((step + 1) % cfg.save_every == 0 or step == cfg.steps - 1):
            ck.save(step + 1)
    run.close()
    # Export the EMA weights.
    student.load_state_dict(ema.state_dict())
    student.eval().requires_grad_(False)
    return {f"sf_{k}": v for k, v in metrics.items()}
