"""Rollouts against the real game.

- :func:`rollout`: every model gets the same real context frames (with their actions) and then
  the real game's action sequence; episodes are rows of one batched :class:`Session`.
- :func:`control_probe` / :func:`real_control`: from the same real states, each action held for
  ``k`` frames (fewer if the real game ends) in the model and in the real game; state changes
  read off the pixels.
- :func:`real_divergence`: the real game's own sensitivity to a tiny perturbation of its state.

Episodes are in memory (:class:`EvalEpisode`), so everything here also runs without a recording
on disk; :func:`load_eval_episodes` reads them from a ``worldsim record`` data set.

Frame indices follow :mod:`worldsim.train.data`: ``frames[0]`` is the reset frame,
``actions[j]`` produced frame ``j`` and ``rewards[j]`` / ``terminated[j]`` come with it.
With ``start`` real frames given as context, horizon ``h`` (1-based) is frame ``start + h - 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.real import RealGame
from worldsim.real import frames_match as _frames_match
from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)

Reader = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------- episodes
@dataclass
class EvalEpisode:
    """One held-out episode, aligned per frame (see module doc)."""

    frames: np.ndarray  # (L+1, 64, 64, 3) uint8
    actions: np.ndarray  # (L+1, ...) canonical actions; actions[j] produced frames[j]
    rewards: np.ndarray  # (L+1,) float32
    terminated: np.ndarray  # (L+1,) bool
    seed: int | None = None  # the real game's reset seed (to replay it)
    episode_id: int = -1
    split: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def ended(self) -> bool:
        """The real game ended this episode (rather than the recording truncating it)."""
        return bool(self.terminated[-1])

    @classmethod
    def from_recorded(cls, ep: Any, spec: ActionSpec, split: str = "") -> EvalEpisode:
        """From a :class:`worldsim.data.Episode` (``actions[i]`` taken at ``frames[i]``)."""
        from worldsim.train.data import align

        a = align(ep, spec)
        return cls(a.frames, a.actions, a.rewards, a.terminated, int(ep.seed), int(ep.episode_id), split)


def load_eval_episodes(
    data: str | Path, split: str = "test", n: int = 8, fallback: str | None = "val"
) -> tuple[list[EvalEpisode], ActionSpec, dict[str, Any]]:
    """The ``n`` longest episodes of ``split`` (topped up from ``fallback`` when it has fewer),
    longest first (ties by episode id), with the data set's action spec and manifest."""
    from worldsim.data import action_spec, load_episodes, read_manifest

    manifest = read_manifest(data)
    spec = action_spec(data)
    eps = [EvalEpisode.from_recorded(e, spec, split) for e in load_episodes(data, split=split)]
    if len(eps) < n and fallback and fallback != split:
        more = [EvalEpisode.from_recorded(e, spec, fallback) for e in load_episodes(data, split=fallback)]
        more = sorted(more, key=lambda e: (-len(e), e.episode_id))[: n - len(eps)]
        log.info("%s split has %d episodes; adding %d from %s", split, len(eps), len(more), fallback)
        eps += more
    if not eps:
        raise ValueError(f"no {split} (or {fallback}) episodes in {data}")
    eps = sorted(eps, key=lambda e: (-len(e), e.episode_id))[:n]
    return eps, spec, manifest


# ---------------------------------------------------------------------------- rollouts
@dataclass
class Reference:
    """The real side of the rollouts: the same for every model."""

    frames: np.ndarray  # (E, H, 64, 64, 3) uint8, zeros where the episode had no such frame
    valid: np.ndarray  # (E, H) bool: the real episode has this frame
    rewards: np.ndarray  # (E, H) float
    terminated: np.ndarray  # (E, H) bool
    window: np.ndarray  # (E, H) bool: where predicted ends are scored (valid + tol frames after a real end)
    start: int  # frame index of horizon 1


def reference(episodes: Sequence[EvalEpisode], start: int, horizon: int, tol: int = 2) -> Reference:
    E = len(episodes)
    s = episodes[0].frames.shape[1]
    ref = Reference(
        np.zeros((E, horizon, s, s, 3), np.uint8),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon)),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon), bool),
        start,
    )
    for i, e in enumerate(episodes):
        n = max(0, min(horizon, len(e) - start))
        ref.frames[i, :n] = e.frames[start : start + n]
        ref.valid[i, :n] = True
        ref.rewards[i, :n] = e.rewards[start : start + n]
        ref.terminated[i, :n] = e.terminated[start : start + n]
        ref.window[i, : min(horizon, n + (tol if e.ended else 0))] = True
    return ref


@dataclass
class Generated:
    """One model's rollouts, aligned with a :class:`Reference`."""

    frames: np.ndarray  # (E, H, 64, 64, 3) uint8 (zeros where not stepped)
    rewards: np.ndarray  # (E, H)
    terminated: np.ndarray  # (E, H) bool
    stepped: np.ndarray  # (E, H) bool
    seconds: float = 0.0  # wall time of the model steps


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(n, i + size)) for i in range(0, n, max(1, size))]


@torch.inference_mode()
def rollout(
    world: WorldModel,
    episodes: Sequence[EvalEpisode],
    horizon: int,
    start: int | None = None,
    seed: int = 0,
    batch: int = 16,
    tol: int = 2,
    progress: Any = None,
) -> Generated:
    """Roll ``world`` out for up to ``horizon`` frames after real context frames.

    The context is the ``world.config.context_frames`` real frames (and their actions) just
    before frame ``start`` (default: right after the model's own context); then the model gets
    the real game's action for every frame. A row is stepped while its episode has frames (and
    ``tol`` frames beyond a real end, with the null action, to score predicted ends). Episode
    ``i`` always gets noise seed ``seed + i``, whatever ``batch`` is (results then agree up to
    floating-point rounding of differently sized batched matmuls).
    """
    import time

    K = world.config.context_frames
    start = K if start is None else start
    if start < K:
        raise ValueError(f"start {start} leaves fewer than the model's {K} context frames")
    E, spec = len(episodes), world.action_spec
    s = world.config.codec.image_size
    out = Generated(
        np.zeros((E, horizon, s, s, 3), np.uint8),
        np.zeros((E, horizon)),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon), bool),
    )
    short = [i for i, e in enumerate(episodes) if len(e) < start]
    if short:
        raise ValueError(f"episodes {short} are shorter than the {start} context frames")
    null = spec.null(1)[0]
    cfg_on = world.config.sampler.guidance_scale != 1.0
    t0 = time.perf_counter()
    for chunk in _chunks(E, batch):
        eps = [episodes[i] for i in chunk]
        need = np.array([min(horizon, len(e) - start + (tol if e.ended else 0)) for e in eps])
        sess = world.session(batch=len(eps), seed=seed + chunk.start)
        sess.reset(
            frames=np.stack([e.frames[start - K : start] for e in eps]),
            actions=np.stack([e.actions[start - K : start] for e in eps]),
        )
        for h in range(int(need.max(initial=0))):
            j = start + h
            rows = np.flatnonzero(need > h)
            n_rows = len(rows)
            if cfg_on:  # a subset of rows cannot be stepped with guidance: step them all
                rows = np.arange(len(eps))
            acts = np.stack([eps[r].actions[j] if j < len(eps[r]) else null for r in rows])
            res = sess.step(acts) if len(rows) == len(eps) else sess.step(acts, rows=rows.tolist())
            gi = np.asarray(chunk)[rows]
            out.frames[gi, h], out.rewards[gi, h], out.terminated[gi, h] = res.frames, res.rewards, res.terminated
            out.stepped[gi, h] = True
            if progress is not None:
                progress.update(n_rows)
        if progress is not None:  # rows that needed fewer steps
            progress.update(int(horizon * len(eps) - need.sum()))
    out.seconds = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------- the real game
def replay(game: RealGame, ep: EvalEpisode, t: int) -> bool:
    """Reset the real game with the episode's seed and replay its actions up to frame ``t``;
    False if the game ended on the way (the replay then did not follow the recording)."""
    if ep.seed is None:
        raise ValueError("the episode has no recorded seed: the real game cannot be replayed")
    return game.replay_actions(ep.seed, [ep.actions[j] for j in range(1, t + 1)])


# ---------------------------------------------------------------------------- control
def probe_actions(spec: ActionSpec, n_sampled: int = 4, seed: int = 0) -> np.ndarray:
    """The actions each probe tries: every action of a Discrete space, else ``n_sampled`` sampled
    ones (plus the null action), canonical form (A, ...)."""
    if spec.kind == "discrete":
        return np.arange(spec.start, spec.start + spec.n, dtype=np.int64)
    space = spec.to_space()
    space.seed(seed)
    samples = [np.asarray(space.sample()).reshape(-1) for _ in range(n_sampled)]
    return spec.validate(np.stack([spec.null(1)[0], *samples]))


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


# ---------------------------------------------------------------------------- the game's own divergence
def real_divergence(
    game: RealGame,
    episodes: Sequence[EvalEpisode],
    start: int,
    horizon: int,
    reader: Reader | None,
    eps: float = 1e-4,
    seed: int = 0,
    progress: Any = None,
) -> dict[str, Any] | None:
    """The real game against itself: at the last context frame (``start - 1``) its true state is
    perturbed by ``eps`` (a random sign per component), then both copies get the same recorded
    actions. Per horizon: mean |difference| of the pixel-read state (what model errors are
    measured with) and of the true state, plus the reader's own error on the real frames
    (|read - true|, its noise floor) and how many frames the replay reproduced exactly.
    None for games whose state cannot be perturbed (only classic-control ``state`` vectors)."""
    if not game.can_perturb or reader is None:
        return None
    rng = np.random.default_rng(seed)
    S = None
    read_d, true_d, read_err = [], [], []
    frames_checked = frames_ok = 0
    for ep in episodes:
        if ep.seed is None or not replay(game, ep, start - 1):
            continue
        snap = game.snapshot()
        assert snap is not None  # can_perturb: a state vector
        delta = eps * rng.choice([-1.0, 1.0], size=np.shape(snap.state))
        runs: list[tuple[list[np.ndarray], list[Any]]] = []
        for perturb in (False, True):
            game.restore(snap)
            if perturb:
                game.perturb(delta)
            frames, trues = [], []
            for h in range(horizon):
                j = start + h
                if j >= len(ep):
                    break
                _, term, trunc = game.step(ep.actions[j])
                f = game.frame()
                frames.append(f)
                trues.append(game.true_state())
                if not perturb:
                    frames_checked += 1
                    frames_ok += int(_frames_match(f, ep.frames[j]))
                if term or trunc:
                    break
            runs.append((frames, trues))
        n = min(len(runs[0][0]), len(runs[1][0]))
        if n == 0:
            continue
        ra, rb = reader(np.stack(runs[0][0][:n])), reader(np.stack(runs[1][0][:n]))
        S = ra.shape[1]
        d = np.full((horizon, S), np.nan)
        d[:n] = np.abs(ra - rb)
        read_d.append(d)
        if runs[0][1][0] is not None:
            ta, tb = np.stack(runs[0][1][:n]), np.stack(runs[1][1][:n])
            dt = np.full((horizon, S), np.nan)
            dt[:n] = np.abs(ta - tb)
            true_d.append(dt)
            read_err.append(np.abs(ra - ta))
        if progress is not None:
            progress.update(1)
    if S is None:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out: dict[str, Any] = {
            "eps": eps,
            "episodes": len(read_d),
            "read": np.nanmean(np.stack(read_d), 0),  # (H, S)
            "n": np.isfinite(np.stack(read_d)[..., 0]).sum(0),
            "true": np.nanmean(np.stack(true_d), 0) if true_d else None,
            "reader_error": np.nanmean(np.concatenate(read_err), 0) if read_err else None,  # (S,)
            "replay_frames_checked": frames_checked,
            "replay_frames_ok": frames_ok,
        }
    return out
