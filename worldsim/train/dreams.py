"""Episodes dreamed by the world itself, labelled by the real game: what ``heads.source = dreams`` fits.

A world's termination head reads the world's own frames, but ``worldsim train --stage heads`` fits
it on recorded (real) ones. Where the world's dynamics are a little off, a head that is right on
real frames is late on dreamed ones. CartPole at the sampler that predicts best (guidance 2.0 on the
first step): from starts close to falling, the dreamed pole comes down 5-20 frames after the real
one, so the episode ends late in 30% of random-action runs although the head is right on real
frames. Fitted on dreamed frames labelled with the real game's end under the same actions, the head
learns where the real game ends *in the world it runs in*. (DIAMOND fits its end model on real
frames; this calibrates it to the dream, at the cost that an episode may end while the dreamed
pole still looks upright: the eval reports the head's ends and the ends read off the frames apart.)

A dream: a recorded episode's ``context_frames`` frames up to a branch point as the session's
context, then the world stepped with the recording's own actions for ``dream_frames`` frames or up
to the recorded end, whichever comes first. It carries the recording's actions, rewards and ends.
Branch points: every episode that ends gives one whose rollout reaches the end (its distance drawn
uniformly in 1..dream_frames); as many again are drawn anywhere in any episode (mostly play that
does not end), so the head also learns where the game goes on.

Closed-loop dreams (``heads.closed_loop``): those dreams are short (``dream_frames`` after a real
context), and a head fitted on them alone can fire on play longer than any of them: the CartPole
head shipped until 2026-12-23 ended an agent's balanced dream episodes with the read-off pole within 0.12 rad
of upright in 13 of 16. So a controller of the world (read states in, actions out) also plays the
world for up to ``closed_loop_frames`` from recorded states. No recording labels those frames (the
real game under the same actions would be somewhere else), so the world's own reader does: the
dream ends at the first frame whose read-off state crosses the game's bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldsim.engine.controlled import play_controlled
from worldsim.engine.session import Session
from worldsim.engine.world import WorldModel
from worldsim.train.data import AlignedEpisode
from worldsim.train.heads import SOURCES, HeadFitConfig

log = logging.getLogger(__name__)


def branch_points(
    eps: list[AlignedEpisode], context: int, frames: int, n: int, seed: int
) -> list[tuple[int, int, int]]:
    """(episode, branch point b, rollout length m): context frames ``b - context + 1 .. b``, dreamed
    frames ``b + 1 .. b + m``. Ending episodes first (one each, reaching the end), then draws
    anywhere, ``n`` in all at most (ends are kept first)."""
    if context < 1 or frames < 1:
        raise ValueError(f"dreams need context >= 1 and dream_frames >= 1, got {context} and {frames}")
    rng = np.random.default_rng(seed)
    ends, anywhere = [], []
    for i, e in enumerate(eps):
        last = len(e) - 1  # the episode's last frame index
        if last - (context - 1) < 1:
            continue  # no frame after a full context
        if bool(e.terminated[-1]):
            d = int(rng.integers(1, min(frames, last - context + 1) + 1))
            ends.append((i, last - d, d))
        b = int(rng.integers(context - 1, last))
        anywhere.append((i, b, min(frames, last - b)))
    pick = rng.permutation(len(anywhere))[: max(0, n - len(ends))]
    return ends[:n] + [anywhere[j] for j in sorted(pick)]


@torch.inference_mode()
def dream_episodes(
    world: WorldModel,
    eps: list[AlignedEpisode],
    frames: int = 16,
    n: int = 2000,
    batch: int = 64,
    seed: int = 0,
) -> list[AlignedEpisode]:
    """Up to ``n`` dreams of the world from ``eps`` (uint8 frames), with the world's own sampler.

    Each is an episode of ``context_frames + m`` uint8 frames: the real context, then the dreamed
    frames; actions, rewards and ends are the recording's. Row ``j`` of the ``j``-th dream uses
    noise seed ``seed + j``, so the dreams do not depend on ``batch``.
    """
    K = world.config.context_frames
    points = sorted(branch_points(eps, K, frames, n, seed), key=lambda p: -p[2])  # rows of a batch end together
    out: list[AlignedEpisode] = []
    for lo in range(0, len(points), batch):
        chunk = points[lo : lo + batch]
        sess = world.session(batch=len(chunk), seed=[seed + lo + j for j in range(len(chunk))])
        sess.reset(
            frames=np.stack([eps[i].frames[b - K + 1 : b + 1] for i, b, _ in chunk]),
            actions=np.stack([eps[i].actions[b - K + 1 : b + 1] for i, b, _ in chunk]),
        )
        T = max(m for _, _, m in chunk)
        dreamed = []
        for t in range(1, T + 1):  # rows past their rollout repeat their last action and are cut below
            act = np.stack([eps[i].actions[b + min(t, m)] for i, b, m in chunk])
            dreamed.append(sess.step(act).frames)
        gen = np.stack(dreamed, axis=1)  # (R, T, H, W, 3)
        for j, (i, b, m) in enumerate(chunk):
            e, sl = eps[i], slice(b - K + 1, b + m + 1)
            free = None if e.free is None else e.free[sl]
            out.append(
                AlignedEpisode(
                    np.concatenate([e.frames[b - K + 1 : b + 1], gen[j, :m]]),
                    e.actions[sl],
                    e.has_action[sl],
                    e.rewards[sl],
                    e.terminated[sl],
                    free,
                )  # fmt: skip
            )
        log.info("dreams: %d of %d", len(out), len(points))
    return out


@dataclass(frozen=True)
class ClosedLoop:
    """What plays a closed-loop dream and labels it (a bundled world's definition has all three)."""

    controller: Callable[[np.ndarray], np.ndarray]
    """(B, 2, K) read states (previous frame, this frame) -> (B,) actions the session takes."""
    reader: Callable[[np.ndarray], np.ndarray]
    """(T, H, W, 3) uint8 frames -> (T, K) states (NaN where unreadable)."""
    state_done: Callable[[np.ndarray], np.ndarray]
    """(T, K) states -> (T,) bool: the game's bounds are crossed (its episode ends there)."""

    @classmethod
    def of(cls, world_def: Any, name: str) -> ClosedLoop:
        """The world definition's controller ``name`` with its reader and bounds; the error names the fix."""
        have = sorted(getattr(world_def, "controllers", None) or {})
        if name not in have or world_def.state_reader is None or world_def.state_done is None:
            raise ValueError(
                f"heads.closed_loop={name!r} needs a world with a state reader, its bounds and that controller "
                f"(this one has controllers {have}); leave heads.closed_loop empty for a world without them"
            )
        return cls(world_def.controllers[name], world_def.state_reader, world_def.state_done)


def closed_loop_starts(eps: list[AlignedEpisode], context: int, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` (episode, frame b) starts drawn with replacement: a random episode longer than
    ``context`` frames, a random frame b with ``context`` frames up to it and one after it."""
    rng = np.random.default_rng(seed)
    ok = [i for i, e in enumerate(eps) if len(e) > context]
    if not ok:
        raise ValueError(f"closed-loop dreams need episodes longer than {context} frames")
    return [(i, int(rng.integers(context - 1, len(eps[i]) - 1))) for i in rng.choice(ok, size=n)]


def closed_loop_session(
    world: WorldModel, eps: list[AlignedEpisode], starts: list[tuple[int, int]], seeds: list[int]
) -> tuple[Session, np.ndarray, np.ndarray]:
    """A session reset on each start's ``context_frames`` recorded frames (row j: noise seed
    ``seeds[j]``), and the two frames a controller reads first: (before, now), each (R, H, W, 3)."""
    K = world.config.context_frames
    sess = world.session(batch=len(starts), seed=seeds)
    sess.reset(
        frames=np.stack([eps[i].frames[b - K + 1 : b + 1] for i, b in starts]),
        actions=np.stack([eps[i].actions[b - K + 1 : b + 1] for i, b in starts]),
    )
    before = np.stack([eps[i].frames[max(b - 1, 0)] for i, b in starts])
    return sess, before, np.stack([eps[i].frames[b] for i, b in starts])


@torch.inference_mode()
def closed_loop_dreams(
    world: WorldModel, eps: list[AlignedEpisode], loop: ClosedLoop, frames: int, n: int, batch: int = 64, seed: int = 0
) -> list[AlignedEpisode]:
    """``n`` dreams in which ``loop.controller`` plays the world from recorded states (a random frame
    of a random episode and the ``context_frames`` before it), each up to ``frames`` frames or its
    first read-off end (labelled terminated). Rewards hold the start frame's (not labels: only the
    termination head is fitted on these); the actions are the controller's (not free)."""
    K = world.config.context_frames
    if frames < 1:
        raise ValueError(f"closed-loop dreams need frames >= 1, got {frames}")
    starts = closed_loop_starts(eps, K, n, seed)
    out: list[AlignedEpisode] = []
    for lo in range(0, n, batch):
        chunk = starts[lo : lo + batch]
        R = len(chunk)
        sess, before, now = closed_loop_session(world, eps, chunk, [seed + lo + j for j in range(R)])
        p = play_controlled(sess, before, now, loop.controller, loop.reader, frames, loop.state_done)
        frames_, actions, done = p.frames, p.actions, p.done  # (R, T, H, W, 3), (R, T, ...), (R, T)
        out += [_closed_episode(eps[i], b, K, frames_[j], actions[j], done[j]) for j, (i, b) in enumerate(chunk)]
        log.info("closed-loop dreams: %d of %d (%d ended)", len(out), n, sum(bool(e.terminated[-1]) for e in out))
    return out


def _closed_episode(
    e: AlignedEpisode, b: int, K: int, gen: np.ndarray, acts: np.ndarray, done: np.ndarray
) -> AlignedEpisode:
    """One closed-loop dream as an episode: the real context, then the dreamed frames up to the first end."""
    hit = np.flatnonzero(done[: len(gen)])
    m = int(hit[0]) + 1 if len(hit) else len(gen)
    ctx = slice(b - K + 1, b + 1)
    term = np.zeros(K + m, bool)
    term[-1] = len(hit) > 0
    assert e.free is not None  # filled in by AlignedEpisode
    return AlignedEpisode(
        np.concatenate([e.frames[ctx], gen[:m]]),
        np.concatenate([e.actions[ctx], acts[:m].astype(e.actions.dtype).reshape(m, *e.actions.shape[1:])]),
        np.concatenate([e.has_action[ctx], np.ones(m, bool)]),
        np.concatenate([e.rewards[ctx], np.full(m, e.rewards[b], np.float32)]),
        term,
        np.concatenate([e.free[ctx], np.zeros(m, bool)]),
    )


def heads_episodes(
    world: WorldModel,
    cfg: HeadFitConfig,
    train: list[AlignedEpisode],
    val: list[AlignedEpisode],
    loop: ClosedLoop | None = None,
) -> tuple[list[AlignedEpisode], list[AlignedEpisode]]:
    """The (train, val) episodes ``cfg.source`` says to fit the heads on: the recordings as they are,
    or ``dream_rollouts`` dreams of the train episodes and a tenth as many (at least 64) of val; and
    with ``cfg.closed_loop`` (``loop`` its controller and reader), ``closed_loop_rollouts`` closed-loop
    dreams of train and a tenth as many (at least 16) of val besides."""
    if cfg.source not in SOURCES:
        raise ValueError(f"heads.source is {' or '.join(map(repr, SOURCES))}, got {cfg.source!r}")
    if cfg.closed_loop and (loop is None or cfg.which != "termination" or cfg.closed_loop_rollouts < 1):
        raise ValueError(
            "heads.closed_loop fits the termination head alone on dreams of a world with a state reader: "
            "set heads.which=termination and heads.closed_loop_rollouts >= 1"
        )
    if cfg.source == "recordings":
        out = (train, val)
    else:
        n_val = max(64, cfg.dream_rollouts // 10)
        log.info("heads: %d train and %d val dreams of up to %d frames", cfg.dream_rollouts, n_val, cfg.dream_frames)
        out = (
            dream_episodes(world, train, cfg.dream_frames, cfg.dream_rollouts, cfg.dream_batch, cfg.seed),
            dream_episodes(world, val, cfg.dream_frames, n_val, cfg.dream_batch, cfg.seed + 1_000_000),
        )
    if not cfg.closed_loop or loop is None:
        return out
    n, n_val, F = cfg.closed_loop_rollouts, max(16, cfg.closed_loop_rollouts // 10), cfg.closed_loop_frames
    log.info("heads: %d train and %d val closed-loop dreams (%s) of up to %d frames", n, n_val, cfg.closed_loop, F)
    return (
        out[0] + closed_loop_dreams(world, train, loop, F, n, cfg.dream_batch, cfg.seed + 2_000_000),
        out[1] + closed_loop_dreams(world, val, loop, F, n_val, cfg.dream_batch, cfg.seed + 3_000_000),
    )
