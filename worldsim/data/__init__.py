"""Recording real games and reading the recordings back.

- ``worldsim record`` / :func:`worldsim.data.record.record`: run a Gymnasium env, store 64x64
  frames, actions, rewards and episode ends in shards with a manifest (resumable, reproducible).
- :func:`load_episodes`, :func:`read_manifest`, :func:`action_spec`: read a data set.
- :class:`ClipDataset`: fixed-length clips inside episodes, for a PyTorch ``DataLoader``.
- :func:`preprocess`: the crop + 64x64 area resize applied to every real frame a model sees.
"""

from __future__ import annotations

from typing import Any

from worldsim.data.episodes import Episode, action_spec, load_episodes, read_manifest
from worldsim.data.frames import preprocess

__all__ = ["Episode", "ClipDataset", "action_spec", "load_episodes", "read_manifest", "preprocess"]


def __getattr__(name: str) -> Any:  # lazy: recording does not need torch
    if name == "ClipDataset":
        from worldsim.data.dataset import ClipDataset

        return ClipDataset
    raise AttributeError(f"module 'worldsim.data' has no attribute {name!r}")
