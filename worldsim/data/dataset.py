"""``ClipDataset``: fixed-length clips inside recorded episodes, for a PyTorch ``DataLoader``.

Each item holds ``clip_len`` consecutive frames of ONE episode (a clip never crosses an episode
end), aligned per frame:

==============  =====================  ==========================================================
key             shape, dtype           meaning
==============  =====================  ==========================================================
``frames``      (T, 64, 64, 3) uint8   the frames
``actions``     (T, *action shape)     ``actions[j]`` PRODUCED ``frames[j]`` (null action for an
                                       episode's first frame)
``has_action``  (T,) bool              False exactly for an episode's first frame
``rewards``     (T,) float32           reward received on entering ``frames[j]`` (0 for the first)
``terminated``  (T,) bool              ``frames[j]`` is a terminal frame
==============  =====================  ==========================================================

Episodes are held as numpy arrays (no open files), so the dataset pickles into worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from worldsim.data.episodes import Episode, action_spec, load_episodes
from worldsim.spaces import ActionSpec


class ClipDataset(Dataset):
    """Clips of ``clip_len`` frames starting every ``stride`` frames in each episode of ``split``.

    ``dirs`` is one data set folder or several recorded with the same action space.
    """

    def __init__(
        self,
        dirs: str | Path | Sequence[str | Path],
        clip_len: int,
        stride: int = 1,
        split: str | None = "train",
    ) -> None:
        if clip_len < 1 or stride < 1:
            raise ValueError(f"clip_len and stride must be >= 1, got {clip_len} and {stride}")
        roots = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
        if not roots:
            raise ValueError("no data set folders given")
        specs = {action_spec(r) for r in roots}
        if len(specs) > 1:
            raise ValueError(f"data sets {', '.join(map(str, roots))} were recorded with different action spaces")
        self.spec: ActionSpec = specs.pop()
        self.clip_len = clip_len
        self.episodes: list[Episode] = load_episodes(roots, split=split)
        starts = [
            np.stack([np.full(n, e), np.arange(n) * stride], axis=1)
            for e, ep in enumerate(self.episodes)
            if (n := (len(ep) + 1 - clip_len) // stride + 1) > 0
        ]
        self.index: np.ndarray = np.concatenate(starts) if starts else np.zeros((0, 2), np.int64)
        """(N, 2): episode number and first frame of each clip."""
        self._null = self.spec.null(1)[0]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, s = (int(v) for v in self.index[i])
        ep, T = self.episodes[e], self.clip_len
        produced_by = np.arange(s - 1, s + T - 1)  # step index that produced each frame (-1: the reset)
        has = produced_by >= 0
        step = np.maximum(produced_by, 0)
        actions = ep.actions[step].copy()
        actions[~has] = self._null
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(ep.frames[s : s + T])),
            "actions": torch.from_numpy(actions),
            "has_action": torch.from_numpy(has),
            "rewards": torch.from_numpy(np.where(has, ep.rewards[step], 0.0).astype(np.float32)),
            "terminated": torch.from_numpy(np.where(has, ep.terminated[step], False).astype(bool)),
        }
