"""The world's start clips, committed to the KV cache once and reused by every reset.

A reset without context frames starts a row from one of the world's start clips (a few real
clips shipped in the checkpoint). Committing a clip (encode its K frames, then K denoiser passes
that write the cache) costs about one and a half steps, and the result depends on nothing but
the clip: no noise enters a clean pass. So each clip is committed once per world, on its own
(one row, two with guidance), and a reset copies the saved rows into the session's cache:

- **cheap**: a copy of a few MB instead of K passes (random play ends a CartPole episode every
  ten frames or so, so resets were a tenth of a vector env's or a gRPC client's time);
- **the same on every surface**: a clip committed alone gives the same numbers whatever batch
  the reset comes in, so a row of a vector env and a single env start bit-identically;
- **bounded**: at most one snapshot per clip (CartPole: 32 clips x 3 MB in fp32), made on first use.

The snapshots belong to the world's runtime (``WorldModel.to_runtime`` starts a new set); after
changing a world's weights in place, call ``to_runtime`` again, as for compilation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from worldsim.engine.cache import KVCache, RowState
from worldsim.engine.sampler import commit_context

if TYPE_CHECKING:
    from worldsim.engine.world import WorldModel


class StartClips:
    """Per start clip and guidance layout, the committed cache rows (see the module docstring)."""

    def __init__(self, world: WorldModel) -> None:
        self.world = world
        self._states: dict[tuple[int, bool], RowState] = {}

    def __len__(self) -> int:
        return len(self._states)

    @torch.inference_mode()
    def _commit(self, clip: int, guided: bool) -> RowState:
        w = self.world
        frames = w.start_frames[clip : clip + 1].to(w.device)  # (1, K, H, W, 3)
        acts = w.start_actions[clip : clip + 1].to(w.device)
        cache = KVCache(w.config.denoiser, w.config.cache, 2 if guided else 1, w.device, w.dtype)
        fkv = w.compiled.forward_kv if w.compiled is not None else None
        commit_context(w.denoiser, cache, w.codec.encode(frames), acts, guided=guided, forward_kv=fkv)
        return cache.snapshot()

    def state(self, clips: list[int], guided: bool) -> RowState:
        """The cache rows of ``clips`` in order (two per clip with guidance: action, null)."""
        for c in clips:
            if (c, guided) not in self._states:
                self._states[(c, guided)] = self._commit(c, guided)
        return RowState.cat([self._states[(c, guided)] for c in clips])
