"""Attention backends, chosen at run time.

torch's ``scaled_dot_product_attention`` everywhere (CPU and CUDA); ``flash_attn`` on CUDA
when it is installed, the inputs are half precision and no mask is needed (a full cache with
one new frame: the per-frame inference path). Everything else (block-causal training masks,
partly filled caches) goes through SDPA. Both give the same results within fp16/bf16 tolerance.
"""

from __future__ import annotations

import functools
import logging

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


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q (B, H, Lq, hd), k/v (B, H, Lk, hd), mask bool broadcastable to (B, H, Lq, Lk) or None."""
    if mask is None and backend_for(q.device, q.dtype) == "flash":
        out = _flash()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, L, H, hd) layout
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
