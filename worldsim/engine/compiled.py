"""The per-frame step compiled with ``torch.compile`` (inductor), chosen at run time.

A frame is a few denoiser passes of one new frame per row against the KV cache, then a decode.
All of the cache's bookkeeping (slots, fill state, rotary tables, the once-per-frame rotation of
the cached keys) happens outside the compiled code, in :meth:`KVCache.frame_kv`, so that one pass
is a pure function of fixed-shape tensors (``CausalDenoiser.forward_kv``): ONE graph per batch
size serves every denoising step and the clean pass, in every fill state (the mask is always
passed, so an empty slot and a full cache are the same graph). The decoder is a second graph.

- **Chosen at the entry point**: :func:`resolve` reads ``compile=`` (``WorldModel.load``,
  ``--no-compile`` on the CLI) over ``WORLDSIM_COMPILE`` (``0`` turns it off); default on for
  CPU worlds, off on CUDA (where the step is captured in a CUDA graph instead, see graphs.py).
- **Paid once**: inductor's caches live in ``~/.cache/worldsim/inductor`` (``TORCHINDUCTOR_CACHE_DIR``
  overrides), so only the first run on a machine pays the C++ compile; :meth:`Compiled.warmup`
  compiles for a batch size up front (``worldsim play`` shows it).
- **Falls back**: if compilation fails (no C++ compiler, an unsupported platform), one warning
  line and the eager functions from then on; the frames are the same within float tolerance.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from worldsim.model.codec import FrameCodec
    from worldsim.model.denoiser import CausalDenoiser

log = logging.getLogger(__name__)

ENV_VAR = "WORLDSIM_COMPILE"
CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def resolve(requested: bool | None, device: torch.device) -> bool:
    """Whether a world on ``device`` runs compiled: ``requested`` if given, else ``WORLDSIM_COMPILE``
    (``0``/``false``/``no``/``off`` = off, anything else = on), else on for CPU, off on CUDA."""
    if requested is not None:
        return requested
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "off", "")
    return device.type == "cpu"


def _configure_caches() -> None:
    """Inductor's on-disk caches in one place per user (first use only)."""
    if CACHE_ENV not in os.environ:
        os.environ[CACHE_ENV] = str(Path.home() / ".cache" / "worldsim" / "inductor")
    import torch._dynamo

    # One graph per batch size: a vector env or a server steps several sizes (row subsets).
    if torch._dynamo.config.recompile_limit < 64:
        torch._dynamo.config.recompile_limit = 64


class Compiled:
    """Compiled ``forward_kv`` and ``decode`` of one world, with the eager fallback.

    ``forward_kv(...)`` and ``decode(z)`` have the signatures of ``CausalDenoiser.forward_kv`` and
    ``FrameCodec.decode``. ``active`` is False once compilation failed (everything then runs eager).
    """

    def __init__(self, denoiser: CausalDenoiser, codec: FrameCodec) -> None:
        _configure_caches()
        self._eager: dict[str, Callable[..., Any]] = {"forward_kv": denoiser.forward_kv, "decode": codec.decode}
        self._fns: dict[str, Callable[..., Any]] = {
            name: torch.compile(fn, dynamic=False, fullgraph=True) for name, fn in self._eager.items()
        }
        self.active = True
        self._seen: set[tuple[str, tuple[int, ...]]] = set()

    def forward_kv(self, *args: Any) -> Any:
        return self._call("forward_kv", args)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._call("decode", (z,))  # type: ignore[no-any-return]

    def _call(self, name: str, args: tuple[Any, ...]) -> Any:
        if not self.active:
            return self._eager[name](*args)
        key = (name, tuple(args[0].shape))
        if key in self._seen:
            return self._fns[name](*args)
        t0 = time.perf_counter()
        try:
            out = self._fns[name](*args)
        except Exception as e:  # inductor raises many types: any failure means "run eager"
            self.active = False
            log.warning(
                "torch.compile failed (%s: %s); running eager (set %s=0 to skip trying)",
                type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "",
                ENV_VAR,
            )
            return self._eager[name](*args)
        self._seen.add(key)
        log.info("compiled %s for shape %s in %.1f s", name, key[1], time.perf_counter() - t0)
        return out
