"""The rolling KV cache: constant memory and cost per frame, however long the rollout.

Per layer, a preallocated buffer of ``sink + window`` frame slots (``(B, H, S, N, hd)``):

- slots ``[0, sink)`` hold the first ``sink`` frames of a rollout forever (attention sinks, as in
  StreamingLLM / Rolling Forcing / LongLive);
- slots ``[sink, sink + window)`` are a ring buffer of the ``window`` most recent frames.

Keys are stored *before* the temporal rotary embedding. At attention time each slot is rotated
by its position *inside the window*: sinks at ``0 .. sink-1``, the ring frames right after them
in order, the new frame last. Until the cache is full this equals the absolute frame index (so
a cached rollout matches a block-causal forward over the whole clip); afterwards positions stay
bounded, and frame 100,000 looks to the model exactly like frame ``sink + window``. Nothing is
ever recomputed when the ring rolls; the rotated keys are memoised for all denoising passes of
one frame.

Rows are independent: each has its own frame count, so single rows can be reset (a new episode
in a vector env) while the others keep their history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.model.denoiser import AttnContext, DenoiserConfig, apply_rope, rope_tables


@dataclass
class CacheConfig:
    window: int = 7
    """Past frames kept in the ring buffer. Train on clips of at least sink + window + 1 frames,
    so that every position the cache uses has been seen in training."""
    sink: int = 0
    """First frames of a rollout kept forever (attention sinks); 0 disables them."""

    @property
    def capacity(self) -> int:
        return self.sink + self.window

    def __post_init__(self) -> None:
        if self.window < 1 or self.sink < 0:
            raise ValueError(f"cache needs window >= 1 and sink >= 0, got window={self.window} sink={self.sink}")


class KVCache:
    """Preallocated per-layer K/V ring buffers with a batch dimension. Sized from the configs."""

    def __init__(
        self,
        model_cfg: DenoiserConfig,
        cfg: CacheConfig,
        batch: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model_cfg, self.cfg = model_cfg, cfg
        self.batch = batch
        S, N, H, hd = cfg.capacity, model_cfg.tokens, model_cfg.heads, model_cfg.head_dim
        shape = (model_cfg.depth, batch, H, S, N, hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.frame_idx = torch.full((batch, S), -1, device=device, dtype=torch.long)  # frame in each slot
        self.count = torch.zeros(batch, device=device, dtype=torch.long)  # frames written per row
        self._rotated: dict[int, torch.Tensor] = {}
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None
        self._write_slot: torch.Tensor | None = None

    # ------------------------------------------------------------------ bookkeeping
    mask_mode: str = "auto"
    """How :meth:`context` decides on the attention mask. ``auto``: look at the slots (a
    device-to-host sync per pass). For CUDA graph capture, where no sync may happen, the caller
    who knows the rows' histories says so: ``always`` (a mask, correct for any fill) or
    ``never`` (every slot is filled in every row: the flash-attn path)."""

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V buffers (constant for the cache's life)."""
        return self.k.numel() * self.k.element_size() * 2

    def reset(self, rows: torch.Tensor | list[int] | None = None) -> None:
        """Forget the history of some rows (all rows by default)."""
        if rows is None:
            self.frame_idx.fill_(-1)
            self.count.zero_()
        else:
            r = torch.as_tensor(rows, device=self.count.device, dtype=torch.long)
            self.frame_idx[r] = -1
            self.count[r] = 0
        self._invalidate()

    # ------------------------------------------------------------------ row subsets
    is_view: bool = False

    def narrow(self, n: int) -> KVCache:
        """The first ``n`` rows as a cache that shares this one's storage (no copy)."""
        view = KVCache.__new__(KVCache)
        view.model_cfg, view.cfg, view.batch, view.is_view = self.model_cfg, self.cfg, n, True
        view.k, view.v = self.k[:, :n], self.v[:, :n]
        view.frame_idx, view.count = self.frame_idx[:n], self.count[:n]
        view._rotated = {}
        view._invalidate()
        return view

    def gather(self, rows: list[int]) -> KVCache:
        """A copy of some rows as a new cache (write it back with :meth:`scatter`)."""
        idx = torch.as_tensor(rows, device=self.count.device)
        sub = KVCache.__new__(KVCache)
        sub.model_cfg, sub.cfg, sub.batch, sub.is_view = self.model_cfg, self.cfg, len(rows), False
        sub.k, sub.v = self.k[:, idx].contiguous(), self.v[:, idx].contiguous()
        sub.frame_idx, sub.count = self.frame_idx[idx].clone(), self.count[idx].clone()
        sub._rotated = {}
        sub._invalidate()
        return sub

    def scatter(self, sub: KVCache, rows: list[int]) -> None:
        """Write a gathered cache back into ``rows``."""
        self.copy_rows_from(sub, torch.as_tensor(rows, device=self.count.device))

    def copy_rows_from(self, other: KVCache, rows: torch.Tensor) -> None:
        """Overwrite ``rows`` of this cache with all rows of ``other`` (same configs)."""
        self.k[:, rows] = other.k
        self.v[:, rows] = other.v
        self.frame_idx[rows] = other.frame_idx
        self.count[rows] = other.count
        self._invalidate()

    def _invalidate(self) -> None:
        self._rotated.clear()
        self._cos = self._sin = self._write_slot = None

    # ------------------------------------------------------------------ per-pass context
    def context(self, write: bool = False) -> AttnContext:
        """Positions and mask for ONE new frame per row attending to this cache."""
        cfg, N = self.cfg, self.model_cfg.tokens
        S = cfg.capacity
        c = self.count  # (B,) index of the new frame
        q_pos = c.clamp(max=S)  # (B,) bounded position of the new frame
        slot = torch.arange(S, device=c.device)
        f = self.frame_idx  # (B, S)
        rel = q_pos[:, None] - (c[:, None] - f)  # ring slots: relative offset preserved
        pos = torch.where(slot[None, :] < cfg.sink, f, rel).clamp(min=0)  # (B, S)
        valid = f >= 0
        if self._cos is None:
            cos, sin = rope_tables(pos, self.model_cfg.head_dim, self.model_cfg.rope_base)  # (B, S, hd)
            self._cos = cos.repeat_interleave(N, dim=1)[:, None]  # (B, 1, S*N, hd)
            self._sin = sin.repeat_interleave(N, dim=1)[:, None]
        q_cos, q_sin = rope_tables(q_pos, self.model_cfg.head_dim, self.model_cfg.rope_base)  # (B, hd)
        q_cos = q_cos[:, None, None, :].expand(-1, 1, N, -1)
        q_sin = q_sin[:, None, None, :].expand(-1, 1, N, -1)
        mask = None
        if self.mask_mode == "always" or (self.mask_mode == "auto" and not bool(valid.all())):
            keys = torch.cat([valid.repeat_interleave(N, dim=1), valid.new_ones(self.batch, N)], dim=1)
            mask = keys[:, None, None, :]  # (B, 1, 1, S*N + N)
        if write:
            self._write_slot = torch.where(c < cfg.sink, c, cfg.sink + (c - cfg.sink) % cfg.window)
        return AttnContext(q_cos=q_cos, q_sin=q_sin, mask=mask, cache=self, write=write)

    # ------------------------------------------------------------------ used by the layers
    def attention_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values of one layer: (B, H, S*N, hd) each."""
        B, H = self.batch, self.model_cfg.heads
        v = self.v[layer].view(B, H, -1, self.model_cfg.head_dim)
        if layer not in self._rotated:
            assert self._cos is not None and self._sin is not None, "call context() first"
            k = self.k[layer].view(B, H, -1, self.model_cfg.head_dim)
            self._rotated[layer] = apply_rope(k, self._cos, self._sin)
        return self._rotated[layer], v

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one new frame's un-rotated K/V (B, H, N, hd) of one layer into each row's slot."""
        assert self._write_slot is not None, "context(write=True) must come first"
        rows = torch.arange(self.batch, device=k.device)
        self.k[layer][rows, :, self._write_slot] = k.to(self.k.dtype)
        self.v[layer][rows, :, self._write_slot] = v.to(self.v.dtype)

    def advance(self, frames: int = 1) -> None:
        """Finish a write pass: record the new frame in its slot and move every row on."""
        if frames != 1:
            raise ValueError("the KV cache takes one frame per pass")
        assert self._write_slot is not None
        rows = torch.arange(self.batch, device=self.count.device)
        self.frame_idx[rows, self._write_slot] = self.count
        self.count += 1
        self._invalidate()
