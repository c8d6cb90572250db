"""Rollouts against the real game: same context, same actions; control probes; the game's own divergence."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldsim.engine.world import WorldModel
from worldsim.train.data import AlignedEpisode

log = logging.getLogger(__name__)


@dataclass
class Rollouts:
    """H generated frames per episode after its K context frames, next to the real ones."""

    gen: np.ndarray  # (E, H, 64, 64, 3) uint8
    real: np.ndarray  # (E, H, 64, 64, 3) uint8 (zeros where the episode had ended)
    valid: np.ndarray  # (E, H) bool: the real episode still had this frame
    pred_reward: np.ndarray  # (E, H)
    real_reward: np.ndarray  # (E, H)
    pred_term: np.ndarray  # (E, H) bool
    real_term: np.ndarray  # (E, H) bool


@torch.inference_mode()
def rollout(
    world: WorldModel, episodes: list[AlignedEpisode], horizon: int, seed: int = 0, progress: Any = None
) -> Rollouts:
    """Every episode is one row of one batched session: the first K real frames are the context,
    then the model is stepped with the real game's actions for up to ``horizon`` frames."""
    K = world.config.context_frames
    E, spec = len(episodes), world.action_spec
    sess = world.session(batch=E, seed=seed)
    sess.reset(frames=np.stack([e.frames[:K] for e in episodes]), actions=np.stack([e.actions[:K] for e in episodes]))
    s = world.config.codec.image_size
    out = Rollouts(
        np.zeros((E, horizon, s, s, 3), np.uint8),
        np.zeros((E, horizon, s, s, 3), np.uint8),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon)),
        np.zeros((E, horizon)),
        np.zeros((E, horizon), bool),
        np.zeros((E, horizon), bool),
    )
    null = spec.null(1)[0]
    for h in range(horizon):
        j = K + h  # frame index in the episode
        acts = np.stack([e.actions[j] if j < len(e) else null for e in episodes])
        res = sess.step(acts)
        out.gen[:, h], out.pred_reward[:, h], out.pred_term[:, h] = res.frames, res.rewards, res.terminated
        for i, e in enumerate(episodes):
            if j < len(e):
                out.valid[i, h] = True
                out.real[i, h] = e.frames[j]
                out.real_reward[i, h] = e.rewards[j]
                out.real_term[i, h] = e.terminated[j]
        if progress is not None:
            progress.update(1)
    return out


def control_probe(
    world: WorldModel,
    world_def: Any,
    episodes: list[AlignedEpisode],
    seeds: list[int],
    k: int = 5,
    probes_per_episode: int = 4,
    rng_seed: int = 0,
) -> dict[str, Any]:
    """From the same states, each action held for ``k`` frames in the model and in the real game:
    do the read-off state changes agree (sign, correlation)? The real game is brought to the
    state by replaying the recorded episode (seed + actions; exact for deterministic games)."""
    if world_def is None or world_def.state_reader is None or world.action_spec.kind != "discrete":
        return {}
    from worldsim.data.frames import preprocess

    rng = np.random.default_rng(rng_seed)
    K, n_act = world.config.context_frames, world.action_spec.n
    model_d, real_d = [], []
    env = world_def.make_env()
    for ep, seed in zip(episodes, seeds):
        if len(ep) < K + k + 2:
            continue
        for t in rng.integers(K, len(ep) - k - 1, size=probes_per_episode):
            ctx = ep.frames[t - K + 1 : t + 1]
            ctx_a = ep.actions[t - K + 1 : t + 1]
            base = world_def.state_reader(ctx[-1:])[0]
            for a in range(n_act):
                sess = world.session(batch=1, seed=int(rng.integers(2**31)))
                sess.reset(frames=ctx, actions=ctx_a)
                for _ in range(k):
                    frame = sess.step([a]).frames[0]
                model_d.append(world_def.state_reader(frame[None])[0] - base)
                env.reset(seed=int(seed))
                for j in range(1, t + 1):  # replay to frame t
                    for _ in range(world_def.frameskip):
                        env.step(int(ep.actions[j]))
                for _ in range(k):
                    for _ in range(world_def.frameskip):
                        env.step(a)
                real_d.append(world_def.state_reader(preprocess(env.render(), world_def.crop)[None])[0] - base)
    env.close()
    if not model_d:
        return {}
    from worldsim.eval.metrics import correlation, sign_agreement

    m, r = np.array(model_d), np.array(real_d)
    out: dict[str, Any] = {"probes": len(m), "k": k}
    for c, name in enumerate(world_def.state_names):
        out[name] = {"sign_agreement": sign_agreement(m[:, c], r[:, c]), "correlation": correlation(m[:, c], r[:, c])}
    return out


def real_divergence(
    world_def: Any, episodes: list[AlignedEpisode], seeds: list[int], horizon: int, eps: float = 1e-4, context: int = 2
) -> np.ndarray | None:
    """The real game's own sensitivity: perturb its true state by ``eps`` at the end of the
    context and replay the same actions; mean |state difference| per horizon (read off pixels)."""
    if world_def is None or world_def.true_state is None or world_def.env_id != "CartPole-v1":
        return None
    from worldsim.data.frames import preprocess

    diffs = np.full((len(episodes), horizon, len(world_def.state_names)), np.nan)
    for i, (ep, seed) in enumerate(zip(episodes, seeds)):
        runs = []
        for perturb in (0.0, eps):
            env = world_def.make_env()
            env.reset(seed=int(seed))
            for j in range(1, context):
                for _ in range(world_def.frameskip):
                    env.step(int(ep.actions[j]))
            env.unwrapped.state = np.asarray(env.unwrapped.state) + perturb
            states, done = [], False
            for h in range(horizon):
                j = context + h
                if j >= len(ep) or done:
                    break
                for _ in range(world_def.frameskip):
                    _, _, term, trunc, _ = env.step(int(ep.actions[j]))
                    done = done or term or trunc
                states.append(world_def.state_reader(preprocess(env.render(), world_def.crop)[None])[0])
            env.close()
            runs.append(np.array(states))
        n = min(len(runs[0]), len(runs[1]))
        if n:
            diffs[i, :n] = np.abs(runs[0][:n] - runs[1][:n])
    return np.nanmean(diffs, axis=0)
