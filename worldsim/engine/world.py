"""The engine's world: a loaded checkpoint (codec + denoiser + start clips) that opens sessions.

    world = WorldModel.load("envs/cartpole/cartpole.safetensors")   # device/dtype decided here
    sess = world.session(batch=4, seed=0)
    frames = sess.reset()                  # (4, 64, 64, 3) uint8, from the world's start clips
    out = sess.step([0, 1, 1, 0])          # out.frames, out.rewards, out.terminated
    sess.reset(rows=[2], seed=7)           # a new episode in row 2 only

Every surface (Gymnasium, gRPC, pygame) runs on :class:`~worldsim.engine.session.Session`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worldsim import checkpoint as ckpt
from worldsim.engine.cache import CacheConfig
from worldsim.engine.compiled import Compiled
from worldsim.engine.compiled import resolve as resolve_compile
from worldsim.engine.sampler import RENAMED_FIELDS, SamplerConfig
from worldsim.engine.session import Session, StepResult
from worldsim.engine.starts import StartClips
from worldsim.model.codec import CodecConfig, FrameCodec
from worldsim.model.denoiser import CausalDenoiser, DenoiserConfig
from worldsim.spaces import ActionError, ActionSpec

log = logging.getLogger(__name__)


@dataclass
class WorldConfig:
    """Everything needed to rebuild a world; stored in its checkpoint."""

    action_space: ActionSpec
    name: str = "world"
    fps: int = 15
    codec: CodecConfig = field(default_factory=CodecConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    context_frames: int = 2
    """Real frames a session starts from (reset)."""
    term_threshold: float = 0.5
    """Predicted termination probability above which a frame ends the episode (``worldsim sampler
    --term-threshold`` changes it on a file; ``StepResult.p_terminated`` is the probability)."""
    term_window: int = 1
    """Frames the end rule reads: a frame ends the episode when ``1 - prod(1 - p)`` over the row's
    last ``term_window`` frames is above ``term_threshold`` (1: the frame's own probability;
    ``worldsim sampler --term-window``; see :mod:`worldsim.engine.ends`)."""
    frameskip: int = 1
    """Real-game steps one world frame covers (from the recording's manifest)."""
    controls: dict[str, Any] = field(default_factory=dict)
    """Keyboard controls set at train time: ``keymap``, ``idle`` and ``magnitude`` (see :mod:`worldsim.keys`)."""

    def __post_init__(self) -> None:
        if isinstance(self.action_space, dict):
            self.action_space = ActionSpec.from_json(self.action_space)
        if self.denoiser.latent_channels != self.codec.latent_channels or (
            self.denoiser.latent_size != self.codec.latent_size
        ):
            raise ValueError("denoiser latent shape does not match the codec's")
        if self.term_window < 1:
            raise ValueError(f"term_window must be >= 1 frame, got {self.term_window}")


def default_device() -> torch.device:
    """CUDA when available, else CPU (decided at the entry point, never at import)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPE_ENV = "WORLDSIM_DTYPE"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` (or ``fp32`` / ``bf16`` / ``fp16``, with or without
    ``torch.``) -> dtype; ``None`` / ``""`` / ``"auto"`` -> None (the device's default). The one parser
    of dtype names: ``WORLDSIM_DTYPE``, ``--dtype`` and ``gym.make(..., dtype="bfloat16")``."""
    if name is None or name.strip().lower() in ("", "auto"):
        return None
    key = name.strip().lower().removeprefix("torch.")
    key = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: use one of {', '.join(DTYPES)} (or auto)")
    return DTYPES[key]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512-BF16 or AMX tiles)."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a private probe that changed or fails: read the flags instead
            break
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_dtype(device: torch.device, cpu_bf16: bool = True) -> torch.dtype:
    """``WORLDSIM_DTYPE`` if set, else bf16 where the hardware computes it natively (CUDA, or a CPU
    with AVX512-BF16 / AMX: :func:`cpu_has_native_bf16`), else fp32. ``cpu_bf16=False``: fp32 on
    every CPU (``worldsim eval``, whose numbers should not depend on the CPU's flags).

    On the 2-core AVX512-BF16 CPU bf16 is 1.4x fp32 at batch 1 and 2.3-2.6x at batch 16 for CartPole
    (docs/performance.md, 2026-12-05), with the same control and prediction numbers on both bundled
    worlds (the cards); on a CPU without native bf16 it was 1.6x *slower* than fp32, so fp32 there.
    Training always runs in fp32, and ``worldsim eval`` measures in fp32 unless given ``--dtype``.
    """
    env = parse_dtype(os.environ.get(DTYPE_ENV))
    if env is not None:
        return env
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32


class WorldModel(torch.nn.Module):
    """Codec + causal denoiser (+ heads) + the world's start clips."""

    def __init__(self, config: WorldConfig) -> None:
        super().__init__()
        self.config = config
        self.codec = FrameCodec(config.codec)
        self.denoiser = CausalDenoiser(config.denoiser, config.action_space)
        K = config.context_frames
        s = config.codec.image_size
        spec = config.action_space
        # A few real start clips (filled in by training from held-out data).
        self.start_frames = torch.zeros(0, K, s, s, 3, dtype=torch.uint8)
        self.start_actions = torch.zeros((0, K, *spec.per_action_shape), dtype=_action_dtype(spec))
        self.provenance: dict[str, Any] = {}
        self.compiled: Compiled | None = None  # set by to_runtime
        self.starts = StartClips(self)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def action_spec(self) -> ActionSpec:
        return self.config.action_space

    # ------------------------------------------------------------------ persistence
    def state_tensors(self) -> dict[str, torch.Tensor]:
        t: dict[str, torch.Tensor] = {}
        t.update({f"codec.{k}": v.float() for k, v in self.codec.state_dict().items()})
        t.update({f"denoiser.{k}": v.float() for k, v in self.denoiser.state_dict().items()})
        t["start.frames"] = self.start_frames
        t["start.actions"] = self.start_actions
        return t

    def save(self, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
        """Write the world as one self-describing ``.safetensors`` file (atomically), weights in fp32."""
        if self.dtype != torch.float32:
            log.warning(
                "saving a world loaded in %s: its weights were rounded at load; "
                "load it with dtype=torch.float32 to write the original weights",
                self.dtype,
            )
        prov = {**self.provenance, **(provenance or {}), "worldsim_version": _version()}
        ckpt.save_file(path, self.state_tensors(), self.config, prov)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        verify: bool = True,
        compile: bool | None = None,
    ) -> WorldModel:
        """Load a world checkpoint; device defaults to CUDA if available, dtype to fp32/bf16.

        ``verify``: check the tensor data against the file's SHA-256 and that every weight is
        finite (``checkpoint.verify_tensors``); False skips both (huge files, trusted copies).
        ``compile``: run the per-frame step under ``torch.compile`` (default: on for CPU unless
        ``WORLDSIM_COMPILE=0``; see ``worldsim.engine.compiled``).
        """
        tensors, meta, config = read_world_file(path, verify=False)
        world = cls(config)
        ckpt.load_into(world.codec, tensors, "codec", path)
        ckpt.load_into(world.denoiser, tensors, "denoiser", path)
        for name in ("start.frames", "start.actions"):
            if name not in tensors:
                raise ckpt.CheckpointError(f"{path}: missing tensor(s) {name}")
        if verify:
            ckpt.verify_tensors(tensors, meta, path)
        world.start_frames = tensors["start.frames"]
        world.start_actions = tensors["start.actions"]
        world.provenance = meta.get("provenance", {})
        dev = torch.device(device) if device is not None else default_device()
        return world.to_runtime(dev, dtype or default_dtype(dev), compile=compile)

    def to_runtime(self, device: torch.device, dtype: torch.dtype, compile: bool | None = None) -> WorldModel:
        """Move to ``device``/``dtype`` for inference (no gradients) and decide on compilation
        (:func:`worldsim.engine.compiled.resolve`): sessions opened afterwards use ``self.compiled``."""
        self.to(device=device, dtype=dtype)
        self.eval()
        self.requires_grad_(False)
        self.compiled = (
            Compiled(self.denoiser, self.codec, self.config.cache.capacity)
            if resolve_compile(compile, device)
            else None
        )
        self.starts = StartClips(self)  # start clips committed on first use (engine/starts.py)
        return self

    def session(
        self, batch: int = 1, seed: int | Sequence[int] | None = None, cuda_graphs: bool | None = None
    ) -> Session:
        """A batched session; ``cuda_graphs`` defaults to on for CUDA worlds (see engine/graphs.py)."""
        return Session(self, batch=batch, seed=seed, cuda_graphs=cuda_graphs)


def read_world_file(
    path: str | Path, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any], WorldConfig]:
    """A world file's tensors, metadata and parsed config, without building the model (the file
    tools, ``worldsim sampler`` and ``worldsim blend``, rewrite files with it). ``verify``: check
    the SHA-256 and that every weight is finite first. Raises :class:`~worldsim.checkpoint.CheckpointError`."""
    tensors, meta = ckpt.load_file(path)
    if verify:
        ckpt.verify_tensors(tensors, meta, path)
    try:
        config = ckpt.from_jsonable(WorldConfig, upgrade_config(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path}: config metadata is missing or invalid: {e}") from e
    return tensors, meta, config


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A stored world config with renamed fields under their current names (old files load as before)."""
    sampler = data.get("sampler")
    if not isinstance(sampler, dict):
        return data
    renamed = {RENAMED_FIELDS.get(k, k): v for k, v in sampler.items()}
    return {**data, "sampler": renamed}


def _action_dtype(spec: ActionSpec) -> torch.dtype:
    return torch.float32 if spec.kind == "box" else torch.int64


def _version() -> str:
    from worldsim import __version__

    return __version__


__all__ = [
    "WorldConfig",
    "WorldModel",
    "Session",
    "StepResult",
    "ActionError",
    "default_device",
    "default_dtype",
    "parse_dtype",
]
