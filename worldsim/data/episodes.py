"""Episode storage: shards of whole episodes + a JSON manifest.

Layout of a data set folder::

    manifest.json        env id/kwargs, action space, fps, seeds, package versions, shards, split
    shard-00000.npz      several whole episodes, concatenated (uncompressed: loads at disk speed)
    ...

Per shard: ``frames`` (F, 64, 64, 3) uint8, ``actions`` (S, ...), ``rewards`` (S,) float32,
``terminated`` / ``truncated`` (S,) bool, ``free`` (S,) bool (recordings since 2026-12-02: the
action was chosen without looking at the game), and per episode ``ep_ids``, ``ep_seeds``,
``ep_steps`` (its number of steps L: it owns L + 1 frames and L actions).

A shard is written to a temporary name and renamed, and the manifest is rewritten (atomically)
after each shard, so an interrupted recording never leaves a shard that looks complete, and a
resumed one skips exactly the episodes already stored.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.spaces import ActionSpec

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class Episode:
    """One recorded episode. ``actions[i]`` is taken at ``frames[i]`` and leads to ``frames[i+1]``;
    ``rewards[i]`` / ``terminated[i]`` / ``truncated[i]`` come with ``frames[i+1]``."""

    frames: np.ndarray  # (L+1, 64, 64, 3) uint8
    actions: np.ndarray  # (L, *action shape)
    rewards: np.ndarray  # (L,) float32
    terminated: np.ndarray  # (L,) bool
    truncated: np.ndarray  # (L,) bool
    seed: int
    episode_id: int
    free: np.ndarray | None = None
    """(L,) bool: ``actions[i]`` was chosen without looking at the game (a random or sticky
    policy, or exploration replacing the policy's action). Only these show what an action does
    on its own: a policy's own action also says what it saw (CartPole's balancing bot pushes
    right *because* the pole falls right), and a world trained on it can learn that instead
    (``worldsim train`` learns action effects from free actions alone: ``teacher.policy_actions``,
    default ``null``). None: not recorded (data sets before 2026-12-02)."""

    def __len__(self) -> int:
        return len(self.actions)


def _atomic_write_bytes(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    def w(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2)

    _atomic_write_bytes(root / MANIFEST, w)


def read_manifest(root: str | Path) -> dict[str, Any]:
    p = Path(root) / MANIFEST
    if not p.is_file():
        raise FileNotFoundError(f"no recorded data at {root} (missing {MANIFEST}); record with `worldsim record`")
    with open(p) as f:
        return json.load(f)


def action_spec(root: str | Path) -> ActionSpec:
    return ActionSpec.from_json(read_manifest(root)["action_space"])


def write_shard(path: Path, episodes: Sequence[Episode]) -> None:
    """Write whole episodes as one shard, atomically."""
    arrays = {
        "frames": np.concatenate([e.frames for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "rewards": np.concatenate([e.rewards for e in episodes]).astype(np.float32),
        "terminated": np.concatenate([e.terminated for e in episodes]).astype(bool),
        "truncated": np.concatenate([e.truncated for e in episodes]).astype(bool),
        "ep_ids": np.array([e.episode_id for e in episodes], np.int64),
        "ep_seeds": np.array([e.seed for e in episodes], np.int64),
        "ep_steps": np.array([len(e) for e in episodes], np.int64),
    }
    if all(e.free is not None for e in episodes):
        arrays["free"] = np.concatenate([np.asarray(e.free) for e in episodes]).astype(bool)

    def w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    _atomic_write_bytes(path, w)


def read_shard(path: Path) -> list[Episode]:
    with np.load(path) as z:
        frames, actions = z["frames"], z["actions"]
        rewards, term, trunc = z["rewards"], z["terminated"], z["truncated"]
        free = z["free"] if "free" in z.files else None
        out, f0, s0 = [], 0, 0
        for eid, seed, L in zip(z["ep_ids"], z["ep_seeds"], z["ep_steps"]):
            L = int(L)
            out.append(
                Episode(
                    frames[f0 : f0 + L + 1],
                    actions[s0 : s0 + L],
                    rewards[s0 : s0 + L],
                    term[s0 : s0 + L],
                    trunc[s0 : s0 + L],
                    int(seed),
                    int(eid),
                    None if free is None else free[s0 : s0 + L],
                )
            )
            f0, s0 = f0 + L + 1, s0 + L
    return out


def split_of(episode_ids: Sequence[int], seed: int = 0, val: float = 0.05, test: float = 0.05) -> dict[int, str]:
    """Split by episode, fixed by ``seed``; with >= 3 episodes every split gets at least one."""
    ids = sorted(int(i) for i in episode_ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    n = len(ids)
    n_test = max(1, int(round(n * test))) if n >= 3 else 0
    n_val = max(1, int(round(n * val))) if n >= 3 else 0
    out = {}
    for rank, idx in enumerate(perm):
        out[ids[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


def load_episodes(dirs: str | Path | Sequence[str | Path], split: str | None = "train") -> list[Episode]:
    """All episodes of one or several data sets, or those of one split (train / val / test)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    out: list[Episode] = []
    for root in roots:
        manifest = read_manifest(root)
        eps = [e for s in manifest["shards"] for e in read_shard(root / s["file"])]
        assign = split_of([e.episode_id for e in eps], seed=manifest.get("split_seed", 0))
        out += [e for e in eps if split is None or assign[e.episode_id] == split]
    return out
