"""The per-frame step compiled ahead of time (AOTInductor), cached on disk, chosen at run time.

A frame is a few denoiser passes of one new frame per row against the KV cache, then a decode.
All of the cache's bookkeeping (slots, fill state, rotary tables, the once-per-frame rotation of
the cached keys) happens outside the compiled code, in :meth:`KVCache.frame_kv`, so one pass is a
pure function of tensors (``CausalDenoiser.forward_kv``): one compiled kernel library serves every
denoising step and the clean pass, in every fill state (the mask is always passed, so an empty
slot and a full cache are the same code) and at every batch size (the batch dimension is
symbolic). The decoder is a second one. A world in bf16/fp16 on CPU runs, instead of the first,
the same pass with attention as matmuls + softmax over an additive mask, faster than SDPA's
kernel there at every batch size (:func:`uses_math_attention`).

- **Chosen at the entry point**: :func:`resolve` reads ``compile=`` (``WorldModel.load``,
  ``--no-compile`` on the CLI) over ``WORLDSIM_COMPILE`` (``0`` turns it off); default on for
  CPU worlds, off on CUDA (where the step is captured in a CUDA graph instead, see graphs.py).
- **Paid once per machine**: the first use exports each function (``torch.export``), compiles it
  with AOTInductor (C++, tens of seconds on 2 cores) and stores the package in
  ``~/.cache/worldsim/compiled`` (``WORLDSIM_CACHE`` overrides), keyed by the weights, the configs,
  the model's source and the torch version; later processes load it in milliseconds.
  :meth:`Session.warmup` does this up front (``worldsim play`` shows progress).
- **Falls back**: if export or compilation fails (no C++ compiler, an unsupported op or
  platform), one warning line and the eager functions from then on; a corrupt cached package is
  rebuilt. The frames are the eager ones within float tolerance (tests/test_compiled.py).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from worldsim.model import actions, attention, codec, denoiser
from worldsim.model.denoiser import DenoiserOutput

if TYPE_CHECKING:
    from worldsim.model.codec import FrameCodec
    from worldsim.model.denoiser import CausalDenoiser

log = logging.getLogger(__name__)

ENV_VAR = "WORLDSIM_COMPILE"
CACHE_ENV = "WORLDSIM_CACHE"
FORWARD_KV_BATCH_DIMS = (0, 0, 0, 0, 0, 0, 0, 1, 1)
"""Batch dimension of each ``forward_kv`` input: x, t, action, has_action, q_cos, q_sin, mask, k, v."""


def env_flag(name: str, default: bool) -> bool:
    """An on/off environment variable: unset -> ``default``; ``0``/``false``/``no``/``off``/empty -> off;
    anything else -> on. Every ``WORLDSIM_*`` switch reads through this."""
    env = os.environ.get(name)
    if env is None:
        return default
    return env.strip().lower() not in ("0", "false", "no", "off", "")


def resolve(requested: bool | None, device: torch.device) -> bool:
    """Whether a world on ``device`` runs compiled: ``requested`` if given, else ``WORLDSIM_COMPILE``
    (``0``/``false``/``no``/``off`` = off, anything else = on), else on for CPU, off on CUDA."""
    if requested is not None:
        return requested
    return env_flag(ENV_VAR, device.type == "cpu")


def cache_root() -> Path:
    """worldsim's on-disk cache: ``WORLDSIM_CACHE``, else ``~/.cache/worldsim``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "worldsim")


def cache_dir() -> Path:
    return cache_root() / "compiled"


def uses_math_attention(x: torch.Tensor) -> bool:
    """Whether a pass on ``x`` (rows, ...) runs attention as matmuls + softmax instead of SDPA:
    bf16/fp16 on CPU, at any batch size.

    Measured on the 2-core AVX512-BF16 CPU (shipped CartPole, bf16, compiled, side by side with the
    code before each change): with the mask applied by ``masked_fill`` it paid from ~8 rows only
    (batch 16 1.26-1.39x, batch 1 0.85x; 2026-12-04 evening); with the mask as an additive bias
    (:func:`with_bias`) batch 16 gained another 1.23x and batch 1 / 4 run 1.19x / 1.24x faster than
    with SDPA (2026-12-05). In fp32 SDPA is as fast or faster at every batch (docs/performance.md)."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


def eager_forward_kv(den: CausalDenoiser) -> Any:
    """``den.forward_kv`` with the attention of :func:`uses_math_attention`: the eager twin of
    :meth:`Compiled.forward_kv`."""

    def run(*args: Any) -> tuple[DenoiserOutput, torch.Tensor, torch.Tensor]:
        math = uses_math_attention(args[0])
        return den.forward_kv(*(with_bias(args) if math else args), math_attention=math)  # type: ignore[misc]

    return run


MASK_ARG = 6
"""Index of the mask among ``forward_kv``'s tensor arguments (x, t, action, has_action, q_cos, q_sin, mask, ...)."""


def with_bias(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """A math-attention pass's arguments with its bool mask as an additive bias (:func:`attention.additive_mask`:
    the compiled softmax is ~3x faster over a bias)."""
    mask = args[MASK_ARG]
    if mask is None or mask.is_floating_point():
        return args
    return (*args[:MASK_ARG], attention.additive_mask(mask, args[0].dtype), *args[MASK_ARG + 1 :])


class _Pass(torch.nn.Module):
    """``forward_kv`` as a module returning a flat tuple (what export takes), with one attention."""

    def __init__(self, den: CausalDenoiser, math_attention: bool = False) -> None:
        super().__init__()
        self.den = den
        self.math_attention = math_attention

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        action: torch.Tensor,
        has_action: torch.Tensor,
        q_cos: torch.Tensor,
        q_sin: torch.Tensor,
        mask: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        out, k, v = self.den.forward_kv(
            x,
            t,
            action,
            has_action,
            q_cos,
            q_sin,
            mask,
            cache_k,
            cache_v,
            math_attention=self.math_attention,
            sigmoid_gelu=True,  # the same GELU, cheaper compiled (denoiser.gelu_tanh_as_sigmoid)
        )
        return out.v, out.reward, out.term_logit, out.pooled, k, v


class _Decode(torch.nn.Module):
    def __init__(self, c: FrameCodec) -> None:
        super().__init__()
        self.codec = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(z)


def _key(name: str, module: torch.nn.Module, config: str) -> str:
    """Weights + config + the model's source + torch version + the forced attention backend (if any):
    a cached package matches all of them."""
    h = hashlib.sha256(f"{name}|{torch.__version__}|{config}|{attention.forced_backend()}".encode())
    for src in (actions, attention, codec, denoiser):
        h.update(inspect.getsource(src).encode())
    for k, t in module.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def _build_package(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], dims: tuple[int, ...], path: Path
) -> None:
    """Export ``module`` with a symbolic batch dimension and compile it with AOTInductor into ``path``."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1 << 16)
    # Trace with two rows per row: a size-1 example would be specialised to 1.
    ex = tuple(torch.cat([a, a], dim=d) for a, d in zip(example, dims))
    shapes = tuple({d: batch} for d in dims)
    program = torch.export.export(module, ex, dynamic_shapes=shapes)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.pt2")
    importlib.import_module("torch._inductor").aoti_compile_and_package(program, package_path=str(tmp))
    os.replace(tmp, path)  # atomic: a concurrent process sees the whole package or none


def _load_package(path: Path) -> Any:
    """A compiled package as a function of its flat tensor inputs -> its output(s).

    The runtime's loader directly when torch has it (milliseconds: importing ``torch._inductor``
    for ``aoti_load_package`` alone takes over a second, which the first frame would pay)."""
    loader_cls = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_cls is None:
        return importlib.import_module("torch._inductor").aoti_load_package(str(path))
    loader = loader_cls(str(path), "model", False, 1, -1)

    def run(*args: torch.Tensor) -> Any:
        out = loader.boxed_run(list(args))
        return out[0] if len(out) == 1 else tuple(out)

    return run


class Compiled:
    """AOT-compiled ``forward_kv`` and ``decode`` of one world, with the eager fallback.

    ``forward_kv(...)`` and ``decode(z)`` have the signatures of ``CausalDenoiser.forward_kv``
    (with a mask) and ``FrameCodec.decode``. ``active`` is False once compilation failed. The
    weights are baked into the packages at first use: after changing a world's weights in place,
    call ``world.to_runtime(...)`` again (training loads its worlds with ``compile=False``).
    """

    def __init__(self, den: CausalDenoiser, frame_codec: FrameCodec, cache_slots: int) -> None:
        self._den = den
        self._modules: dict[str, torch.nn.Module] = {
            "forward_kv": _Pass(den),
            "forward_kv_math": _Pass(den, math_attention=True),
            "decode": _Decode(frame_codec),
        }
        # The cache's frame slots fix the packages' key length: a world run with another window
        # (``worldsim sampler --cache-window``) has the same weights but needs its own package.
        den_cfg = json.dumps({**vars(den.cfg), "cache_slots": cache_slots})
        self._configs = {"forward_kv": den_cfg, "forward_kv_math": den_cfg, "decode": json.dumps(vars(frame_codec.cfg))}
        self._dims = {"forward_kv": FORWARD_KV_BATCH_DIMS, "forward_kv_math": FORWARD_KV_BATCH_DIMS, "decode": (0,)}
        self._loaded: dict[str, Any] = {}
        self.active = True

    def forward_kv(self, *args: torch.Tensor | None) -> tuple[DenoiserOutput, torch.Tensor, torch.Tensor]:
        """One pass; a bf16/fp16 pass runs the package with matmul attention (:func:`uses_math_attention`)."""
        assert args[0] is not None
        math = uses_math_attention(args[0])
        if any(a is None for a in args):  # no mask: only the eager path takes None
            return self._den.forward_kv(*args, math_attention=math)  # type: ignore[arg-type, misc]
        name = "forward_kv_math" if math else "forward_kv"
        v, reward, term, pooled, k_new, v_new = self._call(name, with_bias(args) if math else args)  # type: ignore[arg-type]
        return DenoiserOutput(reward=reward, term_logit=term, v=v, pooled=pooled), k_new, v_new

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._call("decode", (z,))  # type: ignore[no-any-return]

    def _call(self, name: str, args: tuple[torch.Tensor, ...]) -> Any:
        fn = self._loaded.get(name) if self.active else None
        if fn is None and self.active:
            fn = self._load(name, args)
        if fn is None:
            return self._modules[name](*args)
        return fn(*(a.contiguous() for a in args))

    def package_path(self, name: str, device: torch.device) -> Path:
        """Where the compiled ``name`` (``forward_kv`` or ``decode``) of this world is cached."""
        return cache_dir() / f"{name}-{_key(name, self._modules[name], self._configs[name])}-{device.type}.pt2"

    def _load(self, name: str, example: tuple[torch.Tensor, ...]) -> Any:
        path = self.package_path(name, example[0].device)
        t0 = time.perf_counter()
        try:
            if path.exists():
                try:
                    fn = _load_package(path)
                except Exception as e:  # a truncated or foreign file: rebuild it
                    log.warning("rebuilding the compiled %s (%s could not be loaded: %s)", name, path, e)
                    path.unlink(missing_ok=True)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                # A warning so that it shows by default: the first step waits for it (~40 s on 2 cores).
                log.warning(
                    "compiling the world's %s for this machine, once (cached in %s; %s=0 runs eager)",
                    name,
                    path.parent,
                    ENV_VAR,
                )
                # Export needs ordinary tensors: the step runs under inference_mode, so copy out of it.
                with torch.inference_mode(False), torch.no_grad():
                    ex = tuple(a.clone() for a in example)
                    _build_package(self._modules[name], ex, self._dims[name], path)
                fn = _load_package(path)
        except Exception as e:  # export and inductor raise many types: any failure means "run eager"
            self.active = False
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            log.warning(
                "compilation failed (%s: %s); running eager (%s=0 skips trying)", type(e).__name__, first, ENV_VAR
            )
            return None
        self._loaded[name] = fn
        log.info("compiled %s ready in %.1f s", name, time.perf_counter() - t0)
        return fn
