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
"""

from __future__ import annotations

import logging

import numpy as np
import torch

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


def heads_episodes(
    world: WorldModel, cfg: HeadFitConfig, train: list[AlignedEpisode], val: list[AlignedEpisode]
) -> tuple[list[AlignedEpisode], list[AlignedEpisode]]:
    """The (train, val) episodes ``cfg.source`` says to fit the heads on: the recordings as they are,
    or ``dream_rollouts`` dreams of the train episodes and a tenth as many (at least 64) of val."""
    if cfg.source not in SOURCES:
        raise ValueError(f"heads.source is {' or '.join(map(repr, SOURCES))}, got {cfg.source!r}")
    if cfg.source == "recordings":
        return train, val
    n_val = max(64, cfg.dream_rollouts // 10)
    log.info("heads: %d train and %d val dreams of up to %d frames", cfg.dream_rollouts, n_val, cfg.dream_frames)
    return (
        dream_episodes(world, train, cfg.dream_frames, cfg.dream_rollouts, cfg.dream_batch, cfg.seed),
        dream_episodes(world, val, cfg.dream_frames, n_val, cfg.dream_batch, cfg.seed + 1_000_000),
    )
