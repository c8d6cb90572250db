"""Control probes on recorded episodes: from states of the held-out episodes (the real game
replayed from the episode's seed and branched), each action held for ``k`` frames in the model and
in the real game; state changes read off the pixels. (:mod:`worldsim.eval.control` measures
control fidelity from states the real game is stepped to, without a recording.)"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.eval.episodes import EvalEpisode
from worldsim.eval.rollout import _chunks
from worldsim.real import RealGame
from worldsim.real import frames_match as _frames_match

log = logging.getLogger(__name__)

Reader = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------- the real game
def replay(game: RealGame, ep: EvalEpisode, t: int) -> bool:
    """Reset the real game with the episode's seed and replay its actions up to frame ``t``;
    False if the game ended on the way (the replay then did not follow the recording)."""
    if ep.seed is None:
        raise ValueError("the episode has no recorded seed: the real game cannot be replayed")
    return game.replay_actions(ep.seed, [ep.actions[j] for j in range(1, t + 1)])


# ---------------------------------------------------------------------------- control
def pick_probes(
    episodes: Sequence[EvalEpisode], first: int, k: int, per_episode: int, seed: int = 0
) -> list[tuple[int, int]]:
    """(episode index, frame t) pairs: t is the last context frame, ``first <= t``, and the
    episode continues at least ``k`` frames after t (so the real game does not end inside)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, e in enumerate(episodes):
        hi = len(e) - 1 - k  # t + k must be a frame of the episode
        if hi < first:
            continue
        ts = np.arange(first, hi + 1)
        pick = rng.choice(ts, size=min(per_episode, len(ts)), replace=False)
        out += [(i, int(t)) for t in sorted(pick)]
    return out


@torch.inference_mode()
def control_probe(
    world: WorldModel,
    episodes: Sequence[EvalEpisode],
    probes: Sequence[tuple[int, int]],
    actions: np.ndarray,
    reader: Reader,
    k: int = 5,
    seed: int = 0,
    batch: int = 64,
    progress: Any = None,
) -> np.ndarray:
    """The model's state changes while each action is held from each probe state, after every
    one of the ``k`` frames: (P, A, k, S) = reader(generated frame t+i) - reader(real frame t).
    Every (probe, action) pair is one row of a batched session."""
    K = world.config.context_frames
    P, A = len(probes), len(actions)
    jobs = [(p, a) for p in range(P) for a in range(A)]
    frames = np.zeros((len(jobs), k, *episodes[0].frames.shape[1:]), np.uint8)
    for chunk in _chunks(len(jobs), batch):
        js = [jobs[c] for c in chunk]
        ctx = np.stack([episodes[probes[p][0]].frames[probes[p][1] - K + 1 : probes[p][1] + 1] for p, _ in js])
        ctx_a = np.stack([episodes[probes[p][0]].actions[probes[p][1] - K + 1 : probes[p][1] + 1] for p, _ in js])
        sess = world.session(batch=len(js), seed=seed + chunk.start)
        sess.reset(frames=ctx, actions=ctx_a)
        acts = np.stack([actions[a] for _, a in js])
        for i in range(k):
            frames[chunk.start : chunk.stop, i] = sess.step(acts).frames
        if progress is not None:
            progress.update(len(js))
    base = reader(np.stack([episodes[i].frames[t] for i, t in probes]))  # (P, S)
    read = reader(frames.reshape(-1, *frames.shape[2:])).reshape(P, A, k, -1)
    return read - base[:, None, None]


def at_frames(changes: np.ndarray, held: np.ndarray) -> np.ndarray:
    """(P, A, k, S) changes after each frame -> (P, A, S) after ``held[p, a]`` frames (NaN where 0)."""
    P, A, k, S = changes.shape
    idx = np.clip(held - 1, 0, k - 1)
    out = np.take_along_axis(changes, idx[:, :, None, None].repeat(S, -1), axis=2)[:, :, 0]
    return np.where((held > 0)[..., None], out, np.nan)


def real_control(
    game: RealGame,
    episodes: Sequence[EvalEpisode],
    probes: Sequence[tuple[int, int]],
    actions: np.ndarray,
    reader: Reader,
    k: int = 5,
    progress: Any = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The real game's state change for the same probes and actions.

    Returns (P, A, S) changes, (P, A) frames held and the replay checks. The game is replayed
    from the episode's seed with its recorded actions up to frame t (the replayed frame must
    equal the recorded one), then branched per action (snapshot/restore, or a fresh replay for
    games without snapshots) and the action held for ``k`` frames, or until the game ends (an
    episode end is a rule, not a state: the change is then taken at the end frame, and the
    model is compared after as many frames). The branch taking the recorded next action must
    reproduce the recorded next frame. Probes whose replay fails hold 0 frames (NaN changes).
    """
    P, A = len(probes), len(actions)
    checks = {"probes": P, "replay_ok": 0, "branch_checked": 0, "branch_ok": 0, "ended_early": 0}
    S = len(reader(episodes[probes[0][0]].frames[:1])[0]) if probes else 0
    out, held = np.full((P, A, S), np.nan), np.zeros((P, A), np.int64)
    for p, (i, t) in enumerate(probes):
        ep = episodes[i]
        if replay(game, ep, t) and _frames_match(game.frame(), ep.frames[t]):
            checks["replay_ok"] += 1
            base = reader(ep.frames[t][None])[0]
            snap = game.snapshot()
            for a in range(A):
                if a > 0:
                    if snap is not None:
                        game.restore(snap)
                    else:
                        replay(game, ep, t)
                for step in range(k):
                    _, term, trunc = game.step(actions[a])
                    if step == 0 and np.array_equal(actions[a], ep.actions[t + 1]):
                        checks["branch_checked"] += 1
                        checks["branch_ok"] += int(_frames_match(game.frame(), ep.frames[t + 1]))
                    if term or trunc:
                        break
                held[p, a] = step + 1
                checks["ended_early"] += int(step + 1 < k)
                out[p, a] = reader(game.frame()[None])[0] - base
        if progress is not None:
            progress.update(1)
    return out, held, checks
