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

The denoiser reaches the cache only through :class:`worldsim.model.attention.KVStore`
(``attention_kv``, ``store``, ``advance``), which this class implements; the mask of a pass is a
policy the caller passes to :meth:`KVCache.context` (see :data:`MaskPolicy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from worldsim.model.attention import AttnContext, apply_rope, rope_tables
from worldsim.model.denoiser import DenoiserConfig

MaskPolicy = Literal["auto", "always", "never"]
"""How :meth:`KVCache.context` decides on the attention mask of a pass.

- ``auto``: look at the slots (one device-to-host sync per pass);
- ``always``: a mask, correct for any fill state (no sync: CUDA graph capture allows none);
- ``never``: the caller knows every slot of every row holds a frame: no mask (the flash-attn path).

The engine's session mirrors each row's history on the host and passes ``always``/``never``.
"""


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


@dataclass
class FrameKV:
    """A pass's view of the cache for one new frame per row (see :meth:`KVCache.frame_kv`)."""

    q_cos: torch.Tensor  # (B, 1, N, hd) rotary tables of the new frame's tokens
    q_sin: torch.Tensor
    mask: torch.Tensor | None  # (B, 1, 1, L + N) bool or None
    k: torch.Tensor  # (depth, B, H, L, hd) cached keys, rotated
    v: torch.Tensor  # (depth, B, H, L, hd) cached values

    def action_rows(self) -> FrameKV:
        """Rows ``0, 2, ..`` of a guided cache (each row's action, not its null copy), dense."""

        def even(x: torch.Tensor, dim: int) -> torch.Tensor:
            return x if x.shape[dim] == 1 else x.unflatten(dim, (-1, 2)).select(dim + 1, 0).contiguous()

        return FrameKV(
            even(self.q_cos, 0),
            even(self.q_sin, 0),
            None if self.mask is None else even(self.mask, 0),
            even(self.k, 1),
            even(self.v, 1),
        )


class KVCache:
    """Preallocated per-layer K/V ring buffers with a batch dimension. Sized from the configs.

    ``buffers`` (``k``, ``v``, ``frame_idx``, ``count``) builds a cache over existing tensors
    instead of allocating (:meth:`narrow`, :meth:`gather`); ``is_view`` says they are shared with
    another cache, so writes land there directly.
    """

    def __init__(
        self,
        model_cfg: DenoiserConfig,
        cfg: CacheConfig,
        batch: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        buffers: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        is_view: bool = False,
    ) -> None:
        self.model_cfg, self.cfg = model_cfg, cfg
        self.batch, self.is_view = batch, is_view
        S, N, H, hd = cfg.capacity, model_cfg.tokens, model_cfg.heads, model_cfg.head_dim
        if buffers is None:
            shape = (model_cfg.depth, batch, H, S, N, hd)
            buffers = (
                torch.zeros(shape, device=device, dtype=dtype),
                torch.zeros(shape, device=device, dtype=dtype),
                torch.full((batch, S), -1, device=device, dtype=torch.long),  # frame in each slot
                torch.zeros(batch, device=device, dtype=torch.long),  # frames written per row
            )
        self.k, self.v, self.frame_idx, self.count = buffers  # k/v (depth, B, H, S, N, hd)
        if self.k.shape[1] != batch or self.count.shape[0] != batch:
            raise ValueError(f"cache buffers hold {self.count.shape[0]} rows, expected {batch}")
        # Memoised per frame (cleared whenever the cache changes): rotary tables of the slots,
        # rotated keys per layer, and the slot each row writes.
        self._rotated: dict[int, torch.Tensor] = {}
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None
        self._write_slot: torch.Tensor | None = None
        self._rotated_all: torch.Tensor | None = None

    # ------------------------------------------------------------------ bookkeeping
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
    def narrow(self, n: int) -> KVCache:
        """The first ``n`` rows as a cache that shares this one's storage (no copy)."""
        buffers = (self.k[:, :n], self.v[:, :n], self.frame_idx[:n], self.count[:n])
        return KVCache(self.model_cfg, self.cfg, n, buffers=buffers, is_view=True)

    def gather(self, rows: list[int]) -> KVCache:
        """A copy of some rows as a new cache (write it back with :meth:`scatter`)."""
        idx = torch.as_tensor(rows, device=self.count.device)
        buffers = (
            self.k[:, idx].contiguous(),
            self.v[:, idx].contiguous(),
            self.frame_idx[idx].clone(),
            self.count[idx].clone(),
        )
        return KVCache(self.model_cfg, self.cfg, len(rows), buffers=buffers)

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
        self._cos = self._sin = self._write_slot = self._rotated_all = None

    # ------------------------------------------------------------------ per-pass context
    def context(self, write: bool = False, mask: MaskPolicy = "auto") -> AttnContext:
        """Positions and mask for ONE new frame per row attending to this cache.

        ``write``: the pass stores its K/V (the clean pass); ``mask``: see :data:`MaskPolicy`.
        """
        cfg, N = self.cfg, self.model_cfg.tokens
        S = cfg.capacity
        c = self.count  # (B,) index of the new frame
        q_pos = c.clamp(max=S)  # (B,) bounded position of the new frame
        f = self.frame_idx  # (B, S)
        valid = f >= 0
        if self._cos is None:
            slot = torch.arange(S, device=c.device)
            rel = q_pos[:, None] - (c[:, None] - f)  # ring slots: relative offset preserved
            pos = torch.where(slot[None, :] < cfg.sink, f, rel).clamp(min=0)  # (B, S)
            cos, sin = rope_tables(pos, self.model_cfg.head_dim, self.model_cfg.rope_base)  # (B, S, hd)
            self._cos = cos.repeat_interleave(N, dim=1)[:, None]  # (B, 1, S*N, hd)
            self._sin = sin.repeat_interleave(N, dim=1)[:, None]
        q_cos, q_sin = rope_tables(q_pos, self.model_cfg.head_dim, self.model_cfg.rope_base)  # (B, hd)
        q_cos = q_cos[:, None, None, :].expand(-1, 1, N, -1)
        q_sin = q_sin[:, None, None, :].expand(-1, 1, N, -1)
        attn_mask = None
        if mask == "always" or (mask == "auto" and not bool(valid.all())):
            keys = torch.cat([valid.repeat_interleave(N, dim=1), valid.new_ones(self.batch, N)], dim=1)
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, S*N + N)
        if write:
            self._write_slot = torch.where(c < cfg.sink, c, cfg.sink + (c - cfg.sink) % cfg.window)
        return AttnContext(q_cos=q_cos, q_sin=q_sin, mask=attn_mask, cache=self, write=write)

    def frame_kv(self, mask: MaskPolicy = "auto") -> FrameKV:
        """Everything a pass of the next frame reads, as tensors (no cache object inside).

        The keys of every layer are rotated once here (memoised until the cache changes), so the
        frame's denoising passes and its clean pass (``CausalDenoiser.forward_kv``) share them.
        """
        ctx = self.context(write=False, mask=mask)
        B, H, hd, D = self.batch, self.model_cfg.heads, self.model_cfg.head_dim, self.model_cfg.depth
        v = self.v.view(D, B, H, -1, hd)
        if self._rotated_all is None:
            assert self._cos is not None and self._sin is not None
            self._rotated_all = apply_rope(self.k.view(D, B, H, -1, hd), self._cos, self._sin)
        # Contiguous once per frame (a row subset's values are a strided view; the rotary tables are
        # expanded): the compiled pass takes dense inputs, and would otherwise copy them every pass.
        q_cos, q_sin = ctx.q_cos.contiguous(), ctx.q_sin.contiguous()
        return FrameKV(q_cos, q_sin, ctx.mask, self._rotated_all, v.contiguous())

    def write_frame(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one new frame's un-rotated K/V of every layer (depth, B, H, N, hd) and advance."""
        c, cfg = self.count, self.cfg
        slot = torch.where(c < cfg.sink, c, cfg.sink + (c - cfg.sink) % cfg.window)  # (B,)
        rows = torch.arange(self.batch, device=c.device)
        # (B, S, depth, H, N, hd) views of the buffers: rows and slots side by side in front.
        self.k.permute(1, 3, 0, 2, 4, 5)[rows, slot] = k.transpose(0, 1).to(self.k.dtype)
        self.v.permute(1, 3, 0, 2, 4, 5)[rows, slot] = v.transpose(0, 1).to(self.v.dtype)
        self._write_slot = slot
        self.advance()

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
