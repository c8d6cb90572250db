"""Re-fit the reward and termination heads on a frozen backbone.

The heads read the pooled features of a committed (clean) frame. The teacher and the student
train them alongside the backbone, but Self Forcing moves the backbone with DMD at a small learning
rate, and heads re-fit along the way lag behind: on CartPole the termination head ended Self Forcing
at chance (BCE 0.46 against the student's 0.002) and a dreamed episode never ended. So after Self
Forcing (and as ``worldsim train <world> --stage heads`` for an existing checkpoint) the backbone is
frozen, its features are computed once over the recorded episodes, and only the two small heads are
trained on them. Held-out (``val``) metrics are measured before and after; the new heads are kept
only if they are better there.

Features come from a full causal forward over windows of ``clip_len`` clean frames: the same
attention pattern as the engine's commit pass (each frame sees itself and the frames before it).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from worldsim.model.denoiser import CausalDenoiser, HeadOutputs, head_outputs
from worldsim.train.data import AlignedEpisode
from worldsim.train.losses import head_loss

log = logging.getLogger(__name__)
SOURCES = ("recordings", "dreams")


@dataclass
class HeadFitConfig:
    steps: int = 1500
    """Optimizer steps on the cached features (each a random minibatch)."""
    batch: int = 2048
    """Frames per minibatch."""
    lr: float = 1e-3
    clip_len: int = 8
    """Window length of the feature forward (clean frames, causal attention)."""
    forward_batch: int = 32
    """Windows per backbone forward."""
    max_windows: int = 6000
    """Cap on the training windows (every window that ends an episode is always kept)."""
    pos_weight: float = 10.0
    """Up-weighting of terminal frames in the BCE (as in the teacher and student stages)."""
    threshold: float = 0.5
    """Termination probability above which a frame counts as an episode end (for the metrics)."""
    min_history: int = -1
    """Also judge every window's last frame from shorter histories, of ``min_history + 1`` to
    ``clip_len - 1`` frames (-1: the world's ``context_frames``; 0: off). A session starts from
    that many real frames anywhere in an episode, while windows that tile an episode from its reset
    only ever show an end after a full window: heads fitted on those alone learned that nothing
    ends within ``clip_len - context_frames`` frames of a reset (CartPole: never before frame 4)."""
    which: str = "both"
    """The heads to fit: ``both``, ``termination`` or ``reward`` (the other keeps its weights)."""
    source: str = "recordings"
    """What the heads are fitted on: ``recordings`` (the recorded frames) or ``dreams`` (the world's
    own rollouts, with its own sampler, from recorded states under the recorded actions, labelled
    with the recorded rewards and ends: see ``worldsim.train.dreams``). Val is the same kind."""
    dream_frames: int = 16
    """Longest dream (frames after the context); dreams that reach an episode's end are shorter."""
    dream_rollouts: int = 2000
    """Dreams from the train episodes (val: a tenth as many, at least 64)."""
    dream_batch: int = 64
    """Dreams stepped together in one session."""
    closed_loop: str = ""
    """A controller of the world (``WorldDef.controllers``, e.g. CartPole's ``balance``) that also
    plays the world from recorded states, each dream labelled by the world's own read-off state (an
    end where the state read off a dreamed frame crosses the game's bounds, ``WorldDef.state_done``):
    the long balanced play that no recording's short dream reaches, where a head fitted on those
    alone fired on a pole the world kept upright. "" (default): none. Termination head only
    (``which = termination``): these dreams have no real reward to learn from."""
    closed_loop_rollouts: int = 0
    """Closed-loop dreams from the train episodes (val: a tenth as many, at least 16)."""
    closed_loop_frames: int = 200
    """Longest closed-loop dream (frames after the context); one is cut at its read-off end."""
    seed: int = 0


@dataclass
class Features:
    pooled: torch.Tensor  # (M, D)
    reward: torch.Tensor  # (M,)
    terminated: torch.Tensor  # (M,) bool

    def __len__(self) -> int:
        return len(self.reward)


def _windows(eps: list[AlignedEpisode], T: int) -> list[tuple[int, int, int]]:
    """(episode, start, length) windows of ``T`` frames tiling every episode; the last one ends on the
    episode's last frame. An episode shorter than ``T`` (a short dream) is one window of its length."""
    out = []
    for i, e in enumerate(eps):
        n = len(e)
        if n < T:
            out.append((i, 0, n))
            continue
        starts = list(range(0, n - T + 1, T))
        if starts[-1] != n - T:
            starts.append(n - T)
        out += [(i, s, T) for s in starts]
    return out


def _shorter(wins: list[tuple[int, int, int]], min_history: int) -> list[tuple[int, int, int, bool]]:
    """(episode, start, length, last frame only): the windows, then each one's last frame again
    after ``min_history + 1`` .. ``length - 1`` frames of history."""
    out = [(i, s, n, False) for i, s, n in wins]
    if min_history > 0:
        out += [(i, s + n - L, L, True) for i, s, n in wins for L in range(min_history + 1, n)]
    return out


@torch.no_grad()
def features(
    model: CausalDenoiser,
    eps: list[AlignedEpisode],
    cfg: HeadFitConfig,
    device: torch.device,
    max_windows: int | None = None,
    min_history: int = 0,
) -> Features:
    """Pooled backbone features of every action-conditioned frame of (a sample of) the episodes' windows.

    ``eps`` carry codec latents (see ``encode_episodes``). A frame covered by two windows (an
    episode's last, end-aligned window) is taken from each; that only repeats a few frames.
    """
    T = cfg.clip_len
    wins = _windows(eps, T)
    if max_windows is not None and len(wins) > max_windows:
        rng = np.random.default_rng(cfg.seed)
        ends = [w for w in wins if w[1] + w[2] == len(eps[w[0]])]
        rest = [w for w in wins if w[1] + w[2] != len(eps[w[0]])]
        pick = rng.choice(len(rest), size=max(0, max_windows - len(ends)), replace=False)
        wins = ends + [rest[j] for j in sorted(pick)]
    model.eval()
    pooled, rew, term = [], [], []
    jobs = sorted(_shorter(wins, min_history), key=lambda w: w[2])  # batched by length
    for k in range(0, len(jobs), cfg.forward_batch):
        chunk = jobs[k : k + cfg.forward_batch]
        for L in sorted({w[2] for w in chunk}):
            part = [w for w in chunk if w[2] == L]
            x = torch.from_numpy(np.stack([eps[i].frames[s : s + L] for i, s, _, _ in part])).to(device)
            a = torch.from_numpy(np.stack([eps[i].actions[s : s + L] for i, s, _, _ in part])).to(device)
            has = torch.from_numpy(np.stack([eps[i].has_action[s : s + L] for i, s, _, _ in part])).to(device)
            out = model(x.float(), torch.zeros(x.shape[:2], device=device), a, has)
            keep = has.clone()
            last_only = torch.tensor([w[3] for w in part], device=device)
            keep[last_only, :-1] = False
            keep = keep.reshape(-1).cpu()
            pooled.append(out.pooled.reshape(-1, out.pooled.shape[-1]).float().cpu()[keep])  # (n, D)
            rew.append(torch.from_numpy(np.stack([eps[i].rewards[s : s + L] for i, s, _, _ in part])).reshape(-1)[keep])
            term.append(
                torch.from_numpy(np.stack([eps[i].terminated[s : s + L] for i, s, _, _ in part])).reshape(-1)[keep]
            )
    return Features(torch.cat(pooled), torch.cat(rew).float(), torch.cat(term).bool())


class Heads(torch.nn.Module):
    """A float32 CPU copy of a denoiser's reward and termination heads (trained on cached features)."""

    def __init__(self, model: CausalDenoiser) -> None:
        super().__init__()
        self.reward_head = copy.deepcopy(model.reward_head).cpu().float()
        self.term_head = copy.deepcopy(model.term_head).cpu().float()

    def forward(self, pooled: torch.Tensor) -> HeadOutputs:
        """Pooled features (M, D) -> the heads' outputs, exactly as the denoiser computes them."""
        return head_outputs(self, pooled)


@torch.no_grad()
def head_metrics(heads: Heads, f: Features, cfg: HeadFitConfig) -> dict[str, float]:
    """Reward MSE, termination BCE, and episode-end precision / recall at ``cfg.threshold``."""
    out = heads(f.pooled)
    loss, m = head_loss(out, f.reward, f.terminated, torch.ones_like(f.terminated), cfg.pos_weight)
    pred = torch.sigmoid(out.term_logit) > cfg.threshold
    tp = int((pred & f.terminated).sum())
    m.update(
        loss=loss.item(),
        true_ends=float(f.terminated.sum()),
        predicted_ends=float(pred.sum()),
        end_precision=tp / max(1, int(pred.sum())),
        end_recall=tp / max(1, int(f.terminated.sum())),
    )
    nz = f.reward != 0
    if nz.any():
        m["reward_sign_acc"] = float((torch.sign(out.reward[nz]) == torch.sign(f.reward[nz])).float().mean())
    return m


def fit_heads(
    cfg: HeadFitConfig,
    model: CausalDenoiser,
    train_eps: list[AlignedEpisode],
    val_eps: list[AlignedEpisode],
    device: torch.device,
    context_frames: int = 0,
) -> dict[str, float]:
    """Train ``model.reward_head`` and ``model.term_head`` on frozen features; keep them if val improves.

    Returns the val metrics before (``before_*``) and after (``heads_*``) and whether the new heads
    were kept (``heads_kept``).
    """
    if cfg.which not in ("both", "termination", "reward"):
        raise ValueError(f"heads.which is 'both', 'termination' or 'reward', got {cfg.which!r}")
    if cfg.source not in SOURCES:
        raise ValueError(f"heads.source is {' or '.join(map(repr, SOURCES))}, got {cfg.source!r}")
    torch.manual_seed(cfg.seed)
    short = context_frames if cfg.min_history < 0 else cfg.min_history
    tr = features(model, train_eps, cfg, device, cfg.max_windows, short)
    va = features(model, val_eps, cfg, device, min_history=short)
    heads = Heads(model)
    before = head_metrics(heads, va, cfg)
    log.info(
        "heads: %d train frames (%d ends), %d val frames (%d ends); val before %s",
        len(tr),
        int(tr.terminated.sum()),
        len(va),
        int(va.terminated.sum()),
        _fmt(before),
    )
    heads.train().requires_grad_(True)
    if cfg.which == "termination":
        heads.reward_head.requires_grad_(False)
    elif cfg.which == "reward":
        heads.term_head.requires_grad_(False)
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    g = torch.Generator().manual_seed(cfg.seed)
    ones = torch.ones(min(cfg.batch, len(tr)), dtype=torch.bool)
    for _ in range(cfg.steps):
        idx = torch.randint(len(tr), (min(cfg.batch, len(tr)),), generator=g)
        out = heads(tr.pooled[idx])
        loss, _ = head_loss(out, tr.reward[idx], tr.terminated[idx], ones, cfg.pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    after = head_metrics(heads.eval(), va, cfg)
    kept = after["loss"] <= before["loss"]
    if kept:  # load_state_dict copies into the model's own tensors: its device and dtype stay
        if cfg.which in ("both", "reward"):
            model.reward_head.load_state_dict(heads.reward_head.state_dict())
        if cfg.which in ("both", "termination"):
            model.term_head.load_state_dict(heads.term_head.state_dict())
        log.info("heads: val after %s", _fmt(after))
    else:
        log.warning("heads: re-fit heads are worse on val (%s); keeping the old ones", _fmt(after))
    return {
        **{f"before_{k}": v for k, v in before.items()},
        **{f"heads_{k}": v for k, v in after.items()},
        "heads_kept": float(kept),
    }


def _fmt(m: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in m.items())
