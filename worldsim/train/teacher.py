"""Stage 2: the teacher, a many-step causal denoiser trained with Diffusion Forcing.

Every frame of a clip gets its own noise level (some frames exactly clean, as the engine's
cache passes are); the block-causal transformer predicts each frame's velocity from the
(noisy) frames before it and its action. Whole clips lose their actions with probability
``action_dropout`` so classifier-free guidance on the action works. The reward and termination
heads are trained on the clean frames. The teacher is the "real score" of Self Forcing's DMD
loss and the initialisation of the student and the critic.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from worldsim.data.diagnostic import MIN_FREE_SHARE
from worldsim.engine.world import WorldModel
from worldsim.train.compile import TrainForward
from worldsim.train.data import POLICY_ACTIONS, Batch, ClipSampler, conditioned_on
from worldsim.train.loop import Checkpointer, Dist, RunLog, cosine_warmup, ema_update, optimizer_step
from worldsim.train.losses import add_noise, bcast, flow_loss, head_loss, motion_weight
from worldsim.train.own_context import OwnContextClips

log = logging.getLogger(__name__)


@dataclass
class TeacherTrainConfig:
    steps: int = 4000
    """Optimizer steps."""
    batch: int = 16
    """Clips per batch (per process)."""
    clip_len: int = 8
    """Frames per clip; cover the engine's cache capacity + 1 so every position is trained."""
    lr: float = 4e-4
    """AdamW peak learning rate (linear warm-up, cosine decay to 10%)."""
    warmup: int = 200
    """Warm-up steps."""
    clean_prob: float = 0.2
    """Probability that a frame is exactly clean (t = 0), like the context the engine caches."""
    action_dropout: float = 0.1
    """Probability that a whole clip is trained with the null action (for guidance)."""
    policy_actions: str = "null"
    """What the recording policy's own (not free, :attr:`worldsim.data.Episode.free`) actions do:
    ``null`` (default): they are replaced by the null action, so the model learns what actions do
    from free (random, exploratory) actions alone and the policy's choices only through the frames
    they lead to; ``condition``: like free ones. A bot's action also tells what it saw; learned
    from, it teaches a confounder (CartPole's balancing bot pushes right *because* the pole falls
    right: a world trained on its play with ``condition`` moved the pole the way it was pushed).
    Recordings without the free mark (before 2026-12-02) count every action as free."""
    head_weight: float = 0.1
    """Weight of the reward/termination head loss."""
    term_boost: float = 0.1
    """Share of clips sampled to end on a terminal frame (episode ends are rare)."""
    motion_weight: float = 0.0
    """Weight the flow loss towards latent elements that changed since the clip's previous frame
    (:func:`~worldsim.train.losses.motion_weight`; 0 = the plain mean)."""
    motion_frames: str = "all"
    """Where ``motion_weight`` applies: ``all`` frames, or only ``free`` ones (frames that follow a
    free action, :attr:`worldsim.data.Episode.free`: a random push's own effect); the others keep
    the plain mean. On CartPole the weight on every frame sharpened the pushes and made the
    upright pole in the bot's balanced play drift (PSNR @10 -4 dB, the card's 2026-12-07 section);
    on free frames only it timed more episode ends in a third of the steps and still cost 3-4 dB at
    weights 0.5-2 (the card's 2026-12-09 section)."""
    noise_levels: str = "uniform"
    """Where a noisy frame's level t comes from: ``uniform`` in (0, 1) (every level the flow
    has), or ``sampler``: only the levels the world's few-step sampler visits (its
    :meth:`~worldsim.engine.sampler.SamplerConfig.schedule`, e.g. 1, 0.75, 0.5, 0.25), so the
    capacity goes where the engine queries it. Clean frames (``clean_prob``) either way. Measured
    on CartPole (its card, 2026-12-15): worse on every count (PSNR @10 -1.5 dB against the same
    fine-tune with ``uniform``, the pole's error at frame 10 +37%, fewer ends timed); the flow
    between the sampler's levels is what the few-step rollout leans on. Kept for measuring."""
    ema: float = 0.0
    """EMA decay of the exported weights (0 = off: the last step's). With it, the stage keeps an
    exponential moving average of the denoiser after every step (resumable with the rest) and the
    world it writes holds the average. Measured on CartPole (its card, 2026-12-15): 0.995 over a
    1,200-step fine-tune gave frames 4-10 ~1 dB more (PSNR @10 22.9 against the same run's raw
    22.1) and a pole that falls a little later (ends read off the frames 70.2% against 72.8%);
    0.998 over 3,600 steps, PSNR @10 24.1 against 21.6-22.9 at the same timing (2026-12-16; its
    half-way blend with the file it started from is the CartPole shipped since)."""
    own_context: float = 0.0
    """Share of each batch's clips scored with the world's *own* rollout as their context
    (:mod:`worldsim.train.own_context`): the world generates ``own_context_rollout`` frames after a
    recorded context with its sampler, and learns the recorded frames given them. 0 = off (plain
    Diffusion Forcing on recorded frames). Costs a rollout per step (no gradient): 0.5 made a
    CartPole fine-tune step 3.7x slower. Measured on CartPole (its card, 2026-12-19): 400 steps at
    0.5 damped the world (the pole fell late in 56-64% of random-play episodes, frame 1 -1.9 to
    -2.7 dB; with ``sampler.cache_noise`` 0.1 marking its frames, PSNR @10 +2 dB by that damping);
    off in the bundled worlds."""
    own_context_rollout: int = 8
    """Frames an own-context clip generates after the world's ``context_frames`` (its clips come
    from episodes of at least ``context_frames + own_context_rollout`` frames); with 8 and
    ``clip_len`` 8 a window can hold nothing but generated frames, as a session's does from frame
    ``cache.window`` + 1 on."""
    save_every: int = 500
    """Steps between resumable checkpoints."""
    seed: int = 0


NOISE_LEVELS = ("uniform", "sampler")


@dataclass
class FinetuneConfig(TeacherTrainConfig):
    """``worldsim train --stage finetune --init WORLD``: the teacher's loss on a finished world,
    which keeps its few-step sampler and guidance (the loss trains every noise level, the few-step
    schedule's included). What DIAMOND does between rounds: fine-tune the world on new real
    episodes (an agent's play, exploration) instead of training again from the start."""

    steps: int = 800
    """Optimizer steps."""
    lr: float = 1.5e-4
    """AdamW peak learning rate: a fraction of the teacher's, so the world moves, not restarts."""
    warmup: int = 30
    """Warm-up steps."""


def _motion(cfg: TeacherTrainConfig, b: Batch) -> torch.Tensor | None:
    """The flow loss's element weights (``motion_weight`` on ``motion_frames``), or None."""
    if not cfg.motion_weight:
        return None
    w = motion_weight(b.x, cfg.motion_weight)
    if cfg.motion_frames == "free" and b.free is not None:
        w = torch.where(bcast(b.free, w), w, torch.ones_like(w))
    return w


def sample_df_timesteps(
    B: int, T: int, clean_prob: float, device: torch.device, levels: torch.Tensor | None = None
) -> torch.Tensor:
    """(B, T) independent noise levels (Diffusion Forcing): ``clean_prob`` of them 0, the rest
    uniform in (0, 1), or drawn uniformly from ``levels`` (1-D, on ``device``) when given."""
    if levels is None:
        t = torch.rand(B, T, device=device)
    else:
        t = levels[torch.randint(len(levels), (B, T), device=levels.device)]
    return torch.where(torch.rand(B, T, device=device) < clean_prob, torch.zeros_like(t), t)


def train_teacher(
    cfg: TeacherTrainConfig,
    world: WorldModel,
    sampler: ClipSampler,
    run_dir: Path,
    device: torch.device,
    d: Dist,
    resume: bool = False,
    compile_model: bool = False,
) -> dict[str, float]:
    if cfg.policy_actions not in POLICY_ACTIONS:
        raise ValueError(f"teacher.policy_actions is 'condition' or 'null', got {cfg.policy_actions!r}")
    if cfg.motion_frames not in ("all", "free"):
        raise ValueError(f"teacher.motion_frames is 'all' or 'free', got {cfg.motion_frames!r}")
    if cfg.noise_levels not in NOISE_LEVELS:
        raise ValueError(f"teacher.noise_levels is 'uniform' or 'sampler', got {cfg.noise_levels!r}")
    levels = torch.tensor(world.config.sampler.schedule(), device=device) if cfg.noise_levels == "sampler" else None
    if levels is not None:
        log.info("noise levels: the sampler's %s", [round(float(x), 4) for x in levels])
    free_share = sampler.free_share()
    if cfg.policy_actions == "null" and free_share < MIN_FREE_SHARE:
        log.warning(
            "only %.1f%% of the recorded actions are free (chosen without looking at the game): with "
            "teacher.policy_actions=null the world learns little of what actions do; record with --explore / "
            "random play, or --set teacher.policy_actions=condition",
            100 * free_share,
        )
    model = world.denoiser
    model.train().requires_grad_(True)
    forward = TrainForward(model, compile_model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.01)
    sched = cosine_warmup(opt, cfg.steps, cfg.warmup)
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"teacher.ema is a decay in [0, 1) (0 = off), got {cfg.ema}")
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.ema else None
    modules: dict[str, torch.nn.Module] = {"denoiser": model}
    if ema is not None:
        modules["ema"] = ema
    own = OwnContextClips.create(
        cfg.own_context, cfg.own_context_rollout, cfg.batch, cfg.clip_len, sampler, world,
        policy_actions=cfg.policy_actions, action_dropout=cfg.action_dropout,
    )  # fmt: skip
    rngs = {"data": sampler.rng} if own is None else {"data": sampler.rng, "own_data": own.clips.rng}
    ck = Checkpointer(run_dir / "state.pt", modules, {"opt": opt, "sched": sched}, rngs)
    start = ck.restore() if resume else 0
    run = RunLog(run_dir, cfg.steps, start, "teacher", d.main)
    metrics: dict[str, float] = {}
    for step in range(start, cfg.steps):
        b = sampler.sample(cfg.batch - (own.rows if own else 0)).to(device)
        B, T = b.has_action.shape
        t = sample_df_timesteps(B, T, cfg.clean_prob, device, levels)
        eps = torch.randn_like(b.x)
        xt = add_noise(b.x, t, eps)
        drop = torch.rand(B, 1, device=device) < cfg.action_dropout
        cond = conditioned_on(b, cfg.policy_actions) & ~drop
        out = forward(xt, t, b.action, cond)
        fl = flow_loss(out.v, b.x, eps, t > 0, _motion(cfg, b))
        hl, hm = head_loss(out, b.reward, b.terminated, (t == 0) & b.has_action)
        if own is not None:  # the two kinds of clip, weighted by their rows
            fl = (fl * B + own.loss(forward, device) * own.rows) / (B + own.rows)
        loss = fl + cfg.head_weight * hl
        gn = optimizer_step(loss, model, opt, sched, d)
        if ema is not None:
            ema_update(ema, model, cfg.ema)
        run.advance()
        if step % 20 == 0 or step == cfg.steps - 1:
            metrics = {"loss": fl.item(), "grad_norm": gn.item(), "lr": float(sched.get_last_lr()[0]), **hm}
            run.log(step, **metrics)
        if d.main and ((step + 1) % cfg.save_every == 0 or step == cfg.steps - 1):
            ck.save(step + 1)
    run.close()
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    model.eval().requires_grad_(False)
    return {f"teacher_{k}": v for k, v in metrics.items()}
