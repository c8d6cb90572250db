"""The rolling KV cache: constant memory and cost per frame, however long the rollout.

Per layer, a preallocated buffer of ``sink + window`` frame slots (``(B, H, S, N, hd)``):

- slots ``[0, sink)`` hold the first ``sink`` frames of a rollout forever (attention sinks, as in
  StreamingLLM / Rolling Forcing / LongLive);
- slots ``[sink, sink + window)`` are a ring buffer of the ``window`` most recent frames.

Keys are stored *rotated*, by the temporal rotary embedding of their frame's index in the
rollout (the pass that writes a frame rotates its keys with the tables this cache gives it), and
a new frame's queries are rotated by its own index. Rotary attention depends only on the
difference of the two, so a cached key is rotated once in its life, not once per frame, and the
attention each slot gets equals that of a block-causal forward over the whole clip while the
cache fills; afterwards every query sees its window at offsets ``1 .. window``, exactly as at
frame ``sink + window``, so frame 100,000 looks to the model like frame ``sink + window``. (The
tables are computed in float64: a large index loses no accuracy.) Sink slots, once the cache is
full, are rotated on by how far the rollout has moved past ``sink + window`` (once per frame,
``sink`` slots only), so they sit right before the window, where training put them.

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


@dataclass
class RowState:
    """Some rows' history, detached from any cache (see :meth:`KVCache.snapshot`): the K/V of the
    leading ``used`` slots (the ones any of the rows filled) and the slot bookkeeping."""

    k: torch.Tensor  # (depth, R, H, used, N, hd)
    v: torch.Tensor
    frame_idx: torch.Tensor  # (R, S)
    count: torch.Tensor  # (R,)

    @staticmethod
    def cat(states: list[RowState]) -> RowState:
        """The rows of several states, in order (padded to the longest ``used``)."""
        used = max(s.k.shape[3] for s in states)

        def pad(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, used - x.shape[3]))

        return RowState(
            torch.cat([pad(s.k) for s in states], dim=1),
            torch.cat([pad(s.v) for s in states], dim=1),
            torch.cat([s.frame_idx for s in states]),
            torch.cat([s.count for s in states]),
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
        # Memoised per frame (cleared whenever the cache changes): the keys as every pass of
        # the frame reads them (all layers, and per layer) and the slot each row writes.
        self._keys: dict[int, torch.Tensor] = {}
        self._keys_all: torch.Tensor | None = None
        self._write_slot: torch.Tensor | None = None

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
    def narrow(self, n: int, start: int = 0) -> KVCache:
        """Rows ``start .. start + n - 1`` as a cache that shares this one's storage (no copy)."""
        r = slice(start, start + n)
        buffers = (self.k[:, r], self.v[:, r], self.frame_idx[r], self.count[r])
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

    def snapshot(self, rows: list[int] | None = None) -> RowState:
        """A copy of some rows' history (all by default), only as many slots as they filled."""
        idx = torch.arange(self.batch, device=self.count.device) if rows is None else torch.as_tensor(rows)
        idx = idx.to(self.count.device)
        f = self.frame_idx[idx]  # (R, S)
        filled = (f >= 0).any(0).nonzero()
        used = int(filled.max()) + 1 if filled.numel() else 0
        return RowState(
            self.k[:, idx, :, :used].clone(), self.v[:, idx, :, :used].clone(), f.clone(), self.count[idx].clone()
        )

    def restore(self, rows: list[int], state: RowState) -> None:
        """Overwrite ``rows`` with a snapshot's history (the slots it did not fill are cleared)."""
        if len(rows) != state.count.shape[0]:
            raise ValueError(f"a snapshot of {state.count.shape[0]} rows restored into {len(rows)} rows")
        idx = torch.as_tensor(rows, device=self.count.device)
        used = state.k.shape[3]
        for buf, src in ((self.k, state.k), (self.v, state.v)):
            buf[:, idx, :, :used] = src.to(buf.dtype)
            buf[:, idx, :, used:] = 0
        self.frame_idx[idx] = state.frame_idx
        self.count[idx] = state.count
        self._invalidate()

    def _invalidate(self) -> None:
        self._keys.clear()
        self._keys_all = self._write_slot = None

    # ------------------------------------------------------------------ per-pass context
    def context(self, write: bool = False, mask: MaskPolicy = "auto") -> AttnContext:
        """Rotary tables and mask for ONE new frame per row attending to this cache.

        ``write``: the pass stores its K/V (the clean pass); ``mask``: see :data:`MaskPolicy`.
        """
        N = self.model_cfg.tokens
        c = self.count  # (B,) index of the new frame in its rollout: its rotary position
        q_cos, q_sin = rope_tables(c, self.model_cfg.head_dim, self.model_cfg.rope_base)  # (B, hd)
        q_cos = q_cos[:, None, None, :].expand(-1, 1, N, -1)
        q_sin = q_sin[:, None, None, :].expand(-1, 1, N, -1)
        attn_mask = None
        valid = self.frame_idx >= 0  # (B, S)
        if mask == "always" or (mask == "auto" and not bool(valid.all())):
            keys = torch.cat([valid.repeat_interleave(N, dim=1), valid.new_ones(self.batch, N)], dim=1)
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, S*N + N)
        if write:
            self._write_slot = self._slot()
        return AttnContext(q_cos=q_cos, q_sin=q_sin, mask=attn_mask, cache=self, write=write)

    def _slot(self) -> torch.Tensor:
        """(B,) the slot each row's next frame goes to."""
        c, cfg = self.count, self.cfg
        return torch.where(c < cfg.sink, c, cfg.sink + (c - cfg.sink) % cfg.window)

    def _positioned(self, k: torch.Tensor) -> torch.Tensor:
        """Stored keys (..., B, H, S, N, hd) as the new frame reads them: ring slots as stored;
        sink slots rotated on by how far the rollout is past a full cache (0 until then)."""
        sink = self.cfg.sink
        if sink == 0:
            return k
        past = self.count - self.count.clamp(max=self.cfg.capacity)  # (B,)
        cos, sin = rope_tables(past, self.model_cfg.head_dim, self.model_cfg.rope_base)  # (B, hd)
        sinks = apply_rope(k[..., :sink, :, :], cos[:, None, None, None], sin[:, None, None, None])
        return torch.cat([sinks, k[..., sink:, :, :]], dim=-3)

    def frame_kv(self, mask: MaskPolicy = "auto") -> FrameKV:
        """Everything a pass of the next frame reads, as tensors (no cache object inside).

        Memoised until the cache changes, so the frame's denoising passes and its clean pass
        (``CausalDenoiser.forward_kv``) share one set. With the full batch and no sinks the keys
        and values are the cache's own buffers (no copy).
        """
        ctx = self.context(write=False, mask=mask)
        B, H, hd, D = self.batch, self.model_cfg.heads, self.model_cfg.head_dim, self.model_cfg.depth
        if self._keys_all is None:
            self._keys_all = self._positioned(self.k).reshape(D, B, H, -1, hd).contiguous()
        # Dense inputs (a row subset's buffers are strided views; the rotary tables are expanded):
        # the compiled pass takes dense inputs, and would otherwise copy them every pass.
        v = self.v.reshape(D, B, H, -1, hd).contiguous()
        q_cos, q_sin = ctx.q_cos.contiguous(), ctx.q_sin.contiguous()
        return FrameKV(q_cos, q_sin, ctx.mask, self._keys_all, v)

    def write_frame(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one new frame's K/V of every layer (depth, B, H, N, hd), keys rotated by the
        pass's tables (``forward_kv`` returns them so), and advance."""
        slot = self._slot()  # (B,)
        rows = torch.arange(self.batch, device=slot.device)
        # (B, S, depth, H, N, hd) views of the buffers: rows and slots side by side in front.
        self.k.permute(1, 3, 0, 2, 4, 5)[rows, slot] = k.transpose(0, 1).to(self.k.dtype)
        self.v.permute(1, 3, 0, 2, 4, 5)[rows, slot] = v.transpose(0, 1).to(self.v.dtype)
        self._write_slot = slot
        self.advance()

    # ------------------------------------------------------------------ used by the layers
    def attention_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (rotated) and values of one layer as the new frame reads them: (B, H, S*N, hd) each."""
        B, H, hd = self.batch, self.model_cfg.heads, self.model_cfg.head_dim
        v = self.v[layer].reshape(B, H, -1, hd)
        if layer not in self._keys:
            self._keys[layer] = self._positioned(self.k[layer]).reshape(B, H, -1, hd)
        return self._keys[layer], v

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one new frame's K/V (B, H, N, hd) of one layer into each row's slot; the keys are
        rotated by the tables of :meth:`context` (the model's layers hand them over so)."""
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
