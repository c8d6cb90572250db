"""Training batches: recorded episodes, aligned per frame, sampled as fixed-length clips.

Per frame j of an episode (frames[0] is the reset observation):

- ``action[j]`` is the action that PRODUCED frame j (episode.actions[j-1]); null for j = 0,
- ``has_action[j]`` is False only for j = 0,
- ``free[j]``: the action was chosen without looking at the game (random / sticky play,
  exploration; :attr:`worldsim.data.Episode.free`), so what follows it is its effect alone;
  recordings without that record count every action as free,
- ``reward[j]`` / ``terminated[j]`` come with entering frame j.

The denoiser trains on latents, so episodes are encoded once by the codec and kept in memory
(a 60k-frame data set is ~250 MB of fp32 latents; ``worldsim.train.latents`` encodes and caches
them); the codec stage samples pixel frames.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.spaces import ActionSpec

log = logging.getLogger(__name__)


@dataclass
class AlignedEpisode:
    frames: np.ndarray  # (L+1, H, W, 3) uint8 (or latents (L+1, C, h, w) float32 once encoded)
    actions: np.ndarray  # (L+1, ...) action that produced each frame
    has_action: np.ndarray  # (L+1,) bool
    rewards: np.ndarray  # (L+1,) float32
    terminated: np.ndarray  # (L+1,) bool
    free: np.ndarray | None = None  # (L+1,) bool; None (not recorded): has_action, every action free

    def __post_init__(self) -> None:
        if self.free is None:  # the one place an unrecorded free mark is filled in
            self.free = self.has_action

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class Batch:
    x: torch.Tensor  # (B, T, ...) frames uint8 or latents float
    action: torch.Tensor  # (B, T, ...)
    has_action: torch.Tensor  # (B, T) bool
    reward: torch.Tensor  # (B, T) float
    terminated: torch.Tensor  # (B, T) bool
    free: torch.Tensor | None = None  # (B, T) bool: the action was chosen without looking at the game

    def to(self, device: torch.device) -> Batch:
        x, a, h, r, t = (v.to(device) for v in (self.x, self.action, self.has_action, self.reward, self.terminated))
        return Batch(x, a, h, r, t, None if self.free is None else self.free.to(device))


POLICY_ACTIONS = ("condition", "null")
"""What a stage does with the recording policy's own (not free) actions: condition on them, or
replace them by the null action (``teacher.policy_actions``, ``self_forcing.policy_actions``)."""


def conditioned_on(b: Batch, policy_actions: str) -> torch.Tensor:
    """(B, T) bool: the frames whose action the model is given. ``null``: only free actions (the
    policy's own become the null action); ``condition``: every recorded one. Frames stay valid
    either way (``has_action`` still marks them)."""
    if policy_actions not in POLICY_ACTIONS:
        raise ValueError(f"policy_actions is 'condition' or 'null', got {policy_actions!r}")
    if policy_actions == "null" and b.free is not None:
        return b.has_action & b.free
    return b.has_action


def align(ep: object, spec: ActionSpec) -> AlignedEpisode:
    """Per-frame alignment of a recorded ``worldsim.data.Episode``."""
    frames = np.asarray(ep.frames)  # type: ignore[attr-defined]
    acts = np.asarray(ep.actions)  # type: ignore[attr-defined]
    L = len(acts)
    null = spec.null(1)
    actions = np.concatenate([null.astype(acts.dtype), acts.reshape(L, *null.shape[1:])], axis=0)
    has = np.ones(L + 1, dtype=bool)
    has[0] = False
    rewards = np.concatenate([[0.0], np.asarray(ep.rewards, dtype=np.float32)]).astype(np.float32)  # type: ignore[attr-defined]
    term = np.concatenate([[False], np.asarray(ep.terminated).astype(bool)])  # type: ignore[attr-defined]
    rec_free = getattr(ep, "free", None)
    free = None if rec_free is None else np.concatenate([[False], np.asarray(rec_free).astype(bool)])
    return AlignedEpisode(frames, actions, has, rewards, term, free)


def load_aligned(dirs: str | Path | Sequence[str | Path], split: str | None) -> tuple[list[AlignedEpisode], ActionSpec]:
    from worldsim.data import action_spec, load_episodes

    first: str | Path = dirs if isinstance(dirs, (str, Path)) else dirs[0]
    spec = action_spec(first)
    eps = [align(e, spec) for e in load_episodes(dirs, split=split)]
    if not eps:
        raise ValueError(f"no {split} episodes in {dirs}")
    log.info("loaded %d %s episodes, %d frames", len(eps), split, sum(len(e) for e in eps))
    return eps, spec


def mirror_episodes(eps: Sequence[AlignedEpisode], perm: Sequence[int], spec: ActionSpec) -> list[AlignedEpisode]:
    """Left-right mirrored copies of ``eps``: every frame flipped, action ``a`` replaced by ``perm[a]``.

    For games that look the same in a mirror (CartPole: push left <-> push right, ``perm = (1, 0)``),
    training on both copies makes the world's dynamics symmetric, so no action is stronger in the
    world than its mirror image (an asymmetry an agent trained in the world learns to lean on).
    Raw frames only (mirror before encoding: the codec is not flip-equivariant); Discrete actions.
    """
    table = spec.mirror_table(perm)
    out = []
    for e in eps:
        if e.frames.ndim != 4 or e.frames.shape[-1] != 3:
            raise ValueError("mirror_episodes needs raw (L, H, W, 3) frames, before encoding")
        acts = np.where(e.has_action, table[np.clip(e.actions - spec.start, 0, spec.n - 1)] + spec.start, e.actions)
        out.append(
            AlignedEpisode(
                np.ascontiguousarray(e.frames[:, :, ::-1]), acts, e.has_action, e.rewards, e.terminated, e.free
            )
        )
    return out


def same_game(dirs: Sequence[Path], world: str) -> dict[str, Any]:
    """The first folder's manifest, once every folder is checked to hold a recording of the same game
    with the same frames (game id, frameskip, crop, action space); ValueError naming the fix."""
    manifests = []
    for d in dirs:
        if not (Path(d) / "manifest.json").exists():
            raise ValueError(f"no recorded data at {d}: run `worldsim record {world} --out {d}` first")
        manifests.append(json.loads((Path(d) / "manifest.json").read_text()))
    for d, m in zip(dirs[1:], manifests[1:]):
        for key in ("env_id", "frameskip", "crop", "action_space"):
            if m.get(key) != manifests[0].get(key):
                raise ValueError(
                    f"--data {dirs[0]} and {d} differ in {key} ({manifests[0].get(key)!r} vs {m.get(key)!r}): "
                    "train on recordings of one game with the same frames, or train them separately"
                )
    return manifests[0]


class ClipSampler:
    """Uniformly random clips of ``clip_len`` frames that never cross an episode end.

    Sampling uses its own ``np.random.Generator`` (its state is part of resumable training state).
    """

    def __init__(self, eps: list[AlignedEpisode], clip_len: int, seed: int = 0, term_boost: float = 0.0) -> None:
        self.eps = [e for e in eps if len(e) >= clip_len]
        if not self.eps:
            raise ValueError(f"no episode is at least {clip_len} frames long")
        self.T = clip_len
        starts = np.array([len(e) - clip_len + 1 for e in self.eps], dtype=np.float64)
        self.p = starts / starts.sum()
        self.rng = np.random.default_rng(seed)
        # Optionally over-sample clips that end on a terminal frame (rare events for the heads).
        self.term_boost = term_boost
        self.term_eps = [i for i, e in enumerate(self.eps) if e.terminated[-1]]

    @property
    def frames(self) -> int:
        return sum(len(e) for e in self.eps)

    def free_share(self) -> float:
        """Share of the actions chosen without looking at the game (all, where not recorded)."""
        has = sum(int(e.has_action.sum()) for e in self.eps)
        free = sum(int((e.free & e.has_action).sum()) for e in self.eps)  # type: ignore[operator]
        return free / max(has, 1)

    def sample(self, batch: int) -> Batch:
        T = self.T
        xs, acts, has, rew, term, free = [], [], [], [], [], []
        for _ in range(batch):
            if self.term_eps and self.rng.random() < self.term_boost:
                i = int(self.term_eps[self.rng.integers(len(self.term_eps))])
                s = len(self.eps[i]) - T
            else:
                i = int(self.rng.choice(len(self.eps), p=self.p))
                s = int(self.rng.integers(len(self.eps[i]) - T + 1))
            e = self.eps[i]
            xs.append(e.frames[s : s + T])
            acts.append(e.actions[s : s + T])
            has.append(e.has_action[s : s + T])
            rew.append(e.rewards[s : s + T])
            term.append(e.terminated[s : s + T])
            free.append(e.free[s : s + T])  # type: ignore[index]
        return Batch(
            torch.from_numpy(np.stack(xs)),
            torch.from_numpy(np.stack(acts)),
            torch.from_numpy(np.stack(has)),
            torch.from_numpy(np.stack(rew)),
            torch.from_numpy(np.stack(term)),
            torch.from_numpy(np.stack(free)),
        )
