"""``ClipDataset``: fixed-length clips inside recorded episodes, for a PyTorch DataLoader.

Each item holds T consecutive frames of ONE episode (never crossing an episode end), aligned
per frame: ``actions[j]`` is the action that PRODUCED ``frames[j]`` (the null action for an
episode's first frame, where ``has_action`` is False), ``rewards[j]`` / ``terminated[j]`` come
with entering ``frames[j]``. Episodes are held as numpy arrays (no open files), so the dataset
pickles into DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from worldsim.data.episodes import action_spec, load_episodes


class ClipDataset(Dataset):
    def __init__(
        self, dirs: str | Path | Sequence[str | Path], clip_len: int, stride: int = 1, split: str | None = "train"
    ) -> None:
        if clip_len < 1 or stride < 1:
            raise ValueError("clip_len and stride must be >= 1")
        first = dirs if isinstance(dirs, (str, Path)) else dirs[0]
        self.spec = action_spec(first)
        self.clip_len = clip_len
        self.episodes = load_episodes(dirs, split=split)
        self.index = [(e, s) for e, ep in enumerate(self.episodes) for s in range(0, len(ep) + 2 - clip_len, stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, s = self.index[i]
        ep, T = self.episodes[e], self.clip_len
        j = np.arange(s, s + T)  # frame indices in the episode
        prev = np.clip(j - 1, 0, None)  # the step that produced frame j
        has = j > 0
        actions = ep.actions[prev].copy()
        actions[~has] = self.spec.null(1)[0]
        rewards = np.where(has, ep.rewards[prev], 0.0).astype(np.float32)
        term = np.where(has, ep.terminated[prev], False)
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(ep.frames[s : s + T])),
            "actions": torch.from_numpy(actions),
            "has_action": torch.from_numpy(has),
            "rewards": torch.from_numpy(rewards),
            "terminated": torch.from_numpy(term.astype(bool)),
        }
