"""Attention: backends chosen at run time, rotary tables, and the context a forward pass gets.

torch's ``scaled_dot_product_attention`` everywhere (CPU and CUDA); ``flash_attn`` on CUDA
when it is installed, the inputs are half precision and no mask is needed (a full cache with
one new frame: the per-frame inference path). Everything else (block-causal training masks,
partly filled caches) goes through SDPA. Both give the same results within fp16/bf16 tolerance.

:class:`AttnContext` carries a pass's rotary tables, mask and (optionally) a cache; the cache is
anything that implements :class:`KVStore`, so the model never imports the engine.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_BACKEND = "auto"  # "auto" | "sdpa" | "flash"


def set_backend(name: str) -> None:
    """Force an attention backend: ``auto`` (default), ``sdpa`` or ``flash``."""
    global _BACKEND
    if name not in ("auto", "sdpa", "flash"):
        raise ValueError(f"unknown attention backend {name!r}: auto, sdpa or flash")
    if name == "flash" and _flash() is None:
        raise RuntimeError("flash-attn is not installed: pip install 'worldsim[cuda]' (CUDA only)")
    _BACKEND = name


def forced_backend() -> str:
    """The backend :func:`set_backend` forced (``auto`` when none): part of a compiled pass's identity."""
    return _BACKEND


@functools.lru_cache(maxsize=1)
def _flash():  # type: ignore[no-untyped-def]
    try:
        from flash_attn import flash_attn_func
    except Exception:  # not installed, or no CUDA build
        return None
    return flash_attn_func


def backend_for(device: torch.device, dtype: torch.dtype) -> str:
    """The backend the unmasked path uses on this device/dtype."""
    if _BACKEND == "sdpa":
        return "sdpa"
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16) and _flash() is not None:
        return "flash"
    return "sdpa"


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, math: bool = False
) -> torch.Tensor:
    """q (B, H, Lq, hd), k/v (B, H, Lk, hd), mask bool broadcastable to (B, H, Lq, Lk) or None
    (``math``: also an additive float mask, :func:`additive_mask`).

    ``math``: two matmuls and a softmax instead of SDPA's fused kernel (see :func:`math_attention`);
    the caller decides, per pass."""
    if math:
        return math_attention(q, k, v, mask)
    if mask is None and backend_for(q.device, q.dtype) == "flash":
        out = _flash()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, L, H, hd) layout
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Attention as two matmuls and a softmax, in the inputs' dtype: what SDPA computes.

    Why it exists: on a CPU with native bf16 dot products, a bf16 pass spends most of its attention
    time in SDPA's fused CPU kernel, while bf16 matmuls run at ~4x the fp32 rate; compiled, with the
    mask as an additive bias (:func:`additive_mask`), this is faster at every batch size (64 queries,
    512 keys: 1 row 98 us against 144, 32 rows 1.7 ms against 3.9). The engine picks it per pass
    (``worldsim.engine.compiled.uses_math_attention``)."""
    s = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # (B, H, Lq, Lk)
    if mask is not None:
        s = s + mask if mask.is_floating_point() else s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1), v)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask (True = attend) -> the same mask as a bias to add to the scores (0 or -inf).

    :func:`math_attention` takes either; compiled, the bias is ~3x faster: inductor's CPU softmax
    over ``masked_fill`` / ``where`` of a broadcast bool mask ran at a third of its unmasked speed
    (bf16, 32 rows x 64 queries x 512 keys: 1.6 ms against 0.55), over ``scores + bias`` at the
    unmasked speed (2026-12-05). SDPA's CPU kernel is as fast with either."""
    return torch.zeros(mask.shape, device=mask.device, dtype=dtype).masked_fill(~mask, float("-inf"))


# ----------------------------------------------------------------------------- rotary helpers
def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (...,) -> float32 cos, sin (..., head_dim) for rotate-half RoPE.

    The angles are computed in float64, so a position of a million frames gets the same accuracy
    as position 5 (the KV cache rotates by absolute frame index; only differences matter).
    """
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, device=positions.device, dtype=torch.float64) / half)
    ang = positions.to(torch.float64).unsqueeze(-1) * freqs  # (..., half)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, hd); cos/sin broadcastable to it."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# ----------------------------------------------------------------------------- the cache protocol
class KVStore(Protocol):
    """What the denoiser's layers need from a key/value cache (``worldsim.engine.cache.KVCache``).

    The model only calls these three methods; it never sees slots, rows or fill state.
    """

    def attention_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached keys (already rotated) and values of one layer: (B, H, L, hd) each."""
        ...

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep one layer's new keys, rotated by the pass's tables, and values (B, H, T*N, hd) (a write pass)."""
        ...

    def advance(self, frames: int = 1) -> None:
        """End a write pass of ``frames`` frames (called once, after the last layer)."""
        ...


@dataclass
class AttnContext:
    """Everything a forward pass needs about positions, masks and the cache.

    Built once per pass (by ``CausalDenoiser.full_context`` / ``paired_context``, or by the
    engine's cache) and shared by all layers.
    """

    q_cos: torch.Tensor  # (B|1, 1, T*N, hd) rotary tables of the current tokens
    q_sin: torch.Tensor
    mask: torch.Tensor | None  # (B|1, 1, T*N, L + T*N) bool, True = may attend; None = all
    cache: KVStore | None = None
    write: bool = False  # store this pass's K/V into the cache
