"""The engine: a loaded world and batched sessions that step it.

    world = WorldModel.load("envs/cartpole/cartpole.safetensors")   # device/dtype decided here
    sess = world.session(batch=4, seed=0)
    frames = sess.reset()                  # (4, 64, 64, 3) uint8, from the world's start clips
    out = sess.step([0, 1, 1, 0])          # out.frames, out.rewards, out.terminated
    sess.reset(rows=[2], seed=7)           # a new episode in row 2 only

Every surface (Gymnasium, gRPC, pygame) runs on :class:`Session`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim import checkpoint as ckpt
from worldsim.engine.cache import CacheConfig, KVCache
from worldsim.engine.graphs import GraphedStep
from worldsim.engine.sampler import SamplerConfig, commit_frame, denoise_frame
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
    """Predicted termination probability above which a frame ends the episode."""

    def __post_init__(self) -> None:
        if isinstance(self.action_space, dict):
            self.action_space = ActionSpec.from_json(self.action_space)
        if self.denoiser.latent_channels != self.codec.latent_channels or (
            self.denoiser.latent_size != self.codec.latent_size
        ):
            raise ValueError("denoiser latent shape does not match the codec's")


def default_device() -> torch.device:
    """CUDA when available, else CPU (decided at the entry point, never at import)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 is slower there without AMX), bf16 on CUDA."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class StepResult:
    frames: np.ndarray  # (B, 64, 64, 3) uint8
    rewards: np.ndarray  # (B,) float32
    terminated: np.ndarray  # (B,) bool
    latency_ms: float  # wall time of the whole batched step, decode included


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
        """Write the world as one self-describing ``.safetensors`` file (atomically)."""
        prov = {**self.provenance, **(provenance or {}), "worldsim_version": _version()}
        ckpt.save_file(path, self.state_tensors(), self.config, prov)

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        verify: bool = True,
    ) -> WorldModel:
        """Load a world checkpoint; device defaults to CUDA if available, dtype to fp32/bf16.

        ``verify``: check the tensor data against the file's SHA-256 and that every weight is
        finite (``checkpoint.verify_tensors``); False skips both (huge files, trusted copies).
        """
        tensors, meta = ckpt.load_file(path)
        try:
            config = ckpt.from_jsonable(WorldConfig, meta["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ckpt.CheckpointError(f"{path}: config metadata is missing or invalid: {e}") from e
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
        return world.to_runtime(dev, dtype or default_dtype(dev))

    def to_runtime(self, device: torch.device, dtype: torch.dtype) -> WorldModel:
        self.to(device=device, dtype=dtype)
        self.eval()
        self.requires_grad_(False)
        return self

    def session(
        self, batch: int = 1, seed: int | Sequence[int] | None = None, cuda_graphs: bool | None = None
    ) -> Session:
        """A batched session; ``cuda_graphs`` defaults to on for CUDA worlds (see engine/graphs.py)."""
        return Session(self, batch=batch, seed=seed, cuda_graphs=cuda_graphs)


def write_context(model: CausalDenoiser, cache: KVCache, lat: torch.Tensor, acts: torch.Tensor, cfg: bool) -> None:
    """Empty ``cache`` and commit context latents (R, K, C, h, w) frame by frame (clean passes)."""
    cache.reset()
    for k in range(lat.shape[1]):
        has = torch.full((lat.shape[0], 1), k > 0, device=lat.device)
        commit_frame(model, cache, lat[:, k : k + 1], acts[:, k : k + 1], has, cfg=cfg)


def _action_dtype(spec: ActionSpec) -> torch.dtype:
    return torch.float32 if spec.kind == "box" else torch.int64


def _version() -> str:
    from worldsim import __version__

    return __version__


class Session:
    """B independent rollouts of one world, stepped together with one batched model call.

    Each row has its own RNG (seeded per row, as Gymnasium vector envs do: ``seed + row``) and
    its own history in the rolling KV cache, so rows can be reset one at a time.
    """

    def __init__(
        self,
        world: WorldModel,
        batch: int = 1,
        seed: int | Sequence[int] | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.world, self.batch = world, batch
        cfg = world.config
        self.schedule = cfg.sampler.schedule()
        self.cfg_scale = cfg.sampler.cfg_scale
        cache_rows = batch * (2 if self.cfg_scale != 1.0 else 1)
        self.cache = KVCache(cfg.denoiser, cfg.cache, cache_rows, world.device, world.dtype)
        self.generators = [torch.Generator(device=world.device) for _ in range(batch)]
        self._seed_rows(range(batch), seed)
        self.frame_index = np.zeros(batch, dtype=np.int64)
        self.frames = np.zeros((batch, cfg.codec.image_size, cfg.codec.image_size, 3), np.uint8)
        self._started = np.zeros(batch, dtype=bool)
        # Frames in each row's history (context + generated), mirrored on the host so the
        # graphed step knows without a device sync whether every cache slot is filled.
        self._history = np.zeros(batch, dtype=np.int64)
        if cuda_graphs is None:
            cuda_graphs = world.device.type == "cuda"
        if cuda_graphs and world.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, the world is on {world.device}")
        self.cuda_graphs = cuda_graphs
        self._graphed: GraphedStep | None = None

    # ------------------------------------------------------------------ seeding
    def _seed_rows(self, rows: Sequence[int], seed: int | Sequence[int] | None) -> None:
        rows = list(rows)
        if seed is None:
            seeds = [int(s) for s in np.random.SeedSequence().generate_state(len(rows))]
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(len(rows))]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != len(rows):
                raise ValueError(f"got {len(seeds)} seeds for {len(rows)} rows")
        for r, s in zip(rows, seeds):
            self.generators[r].manual_seed(s)

    def _rows(self, rows: Sequence[int] | None) -> list[int]:
        if rows is None:
            return list(range(self.batch))
        out = [int(r) for r in rows]
        bad = [r for r in out if not 0 <= r < self.batch]
        if bad:
            raise IndexError(f"rows {bad} out of range for a session of batch {self.batch}")
        return out

    # ------------------------------------------------------------------ reset
    def reset(
        self,
        frames: np.ndarray | torch.Tensor | None = None,
        actions: np.ndarray | None = None,
        seed: int | Sequence[int] | None = None,
        rows: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Start new rollouts in ``rows`` (all by default); returns the current frames (B, H, W, 3).

        ``frames``: context frames (K, H, W, 3) or (len(rows), K, H, W, 3) uint8; ``actions``: the
        actions that produced them (the first frame's is ignored). Without frames, each row starts
        from one of the world's start clips, chosen with the row's seed.
        """
        rows = self._rows(rows)
        if seed is not None:
            self._seed_rows(rows, seed)
        spec = self.world.action_spec
        if frames is None:
            n_start = self.world.start_frames.shape[0]
            if n_start == 0:
                raise RuntimeError("this world ships no start clips: pass context frames to reset()")
            pick = [
                int(torch.randint(n_start, (1,), generator=self.generators[r], device=self.world.device)) for r in rows
            ]
            ctx = self.world.start_frames[pick].to(self.world.device)  # (R, K, H, W, 3)
            acts = self.world.start_actions[pick].to(self.world.device)
        else:
            ctx = torch.as_tensor(np.asarray(frames), device=self.world.device)
            if ctx.ndim == 4:
                ctx = ctx.unsqueeze(0).expand(len(rows), *ctx.shape)
            s = self.world.config.codec.image_size
            if ctx.ndim != 5 or tuple(ctx.shape[-3:]) != (s, s, 3) or ctx.shape[0] != len(rows):
                raise ValueError(
                    f"context frames must be (K, {s}, {s}, 3) or ({len(rows)}, K, {s}, {s}, 3), got {tuple(ctx.shape)}"
                )
            if ctx.dtype != torch.uint8:
                raise ValueError(f"context frames must be uint8, got {ctx.dtype}")
            if actions is None:
                acts = torch.as_tensor(spec.null(len(rows) * ctx.shape[1])).reshape(
                    len(rows), ctx.shape[1], *spec.per_action_shape
                )
            else:
                a = np.asarray(actions)
                if a.ndim == len(spec.per_action_shape) + 1:
                    a = np.broadcast_to(a, (len(rows), *a.shape))
                flat = spec.validate(a.reshape(-1, *spec.per_action_shape) if spec.per_action_shape else a.reshape(-1))
                acts = torch.as_tensor(flat).reshape(len(rows), -1, *spec.per_action_shape)
            acts = acts.to(self.world.device)
        self._write_context(rows, ctx, acts)
        self._history[rows] = ctx.shape[1]
        self.frames[rows] = ctx[:, -1].cpu().numpy()
        self.frame_index[rows] = 0
        self._started[rows] = True
        return self.frames.copy()

    @torch.inference_mode()
    def _write_context(self, rows: list[int], ctx: torch.Tensor, acts: torch.Tensor) -> None:
        """Reset rows' histories and commit their context frames; other rows keep theirs."""
        lat = self.world.codec.encode(ctx)  # (R, K, C, h, w)
        cfg_on = self.cfg_scale != 1.0
        if len(rows) == self.batch and rows == list(range(self.batch)):
            write_context(self.world.denoiser, self.cache, lat, acts, cfg_on)
            return
        # Some rows only: fill a small cache for them, then copy it into theirs.
        sub = KVCache(
            self.world.config.denoiser,
            self.world.config.cache,
            self.cache.batch // self.batch * len(rows),
            self.world.device,
            self.world.dtype,
        )
        write_context(self.world.denoiser, sub, lat, acts, cfg_on)
        idx = torch.as_tensor(rows, device=self.world.device)
        if cfg_on:
            idx = torch.cat([idx, idx + self.batch])
        self.cache.copy_rows_from(sub, idx)

    # ------------------------------------------------------------------ step
    def _noise(self, rows: Sequence[int]) -> torch.Tensor:
        c = self.world.config.codec
        shape = (len(self.schedule), 1, c.latent_channels, c.latent_size, c.latent_size)
        noise = [torch.randn(shape, generator=self.generators[r], device=self.world.device) for r in rows]
        return torch.stack(noise).squeeze(2).to(self.world.dtype)  # (B, S, C, h, w)

    @torch.inference_mode()
    def step(self, actions: Any, rows: Sequence[int] | None = None) -> StepResult:
        """Advance rows by one frame given one action per row (all rows by default).

        With ``rows``, only those rows advance (the others keep their state): a prefix
        ``0..n-1`` runs on a view of the cache at no extra cost; any other subset is gathered
        and scattered back (a copy of those rows' caches). Not available with guidance.
        """
        t0 = time.perf_counter()
        idx = list(range(self.batch)) if rows is None else self._rows(rows)
        if not self._started[idx].all():
            raise RuntimeError("call reset() before step()")
        if len(set(idx)) != len(idx):
            raise ValueError(f"rows must be distinct, got {idx}")
        spec = self.world.action_spec
        a = spec.validate(actions, batch=len(idx))
        if len(idx) == self.batch and idx == list(range(self.batch)):
            cache = self.cache
        elif self.cfg_scale != 1.0:
            raise ValueError("stepping a subset of rows is not supported with classifier-free guidance")
        elif idx == list(range(len(idx))):
            cache = self.cache.narrow(len(idx))
        else:
            cache = self.cache.gather(idx)
        frames, rewards, p_term = self._advance(cache, idx, a)
        if cache is not self.cache and not cache.is_view:
            self.cache.scatter(cache, idx)
        self.frames[idx] = frames
        self.frame_index[idx] += 1
        self._history[idx] += 1
        return StepResult(
            frames=frames.copy(),
            rewards=rewards.astype(np.float32),
            terminated=p_term > self.world.config.term_threshold,
            latency_ms=(time.perf_counter() - t0) * 1e3,
        )

    def _advance_tensors(
        self, cache: KVCache, act: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The device side of a step: denoise, commit to the cache, heads, decode.

        act (n, 1, ...), noise (n, S, C, h, w) -> frames (n, H, W, 3) uint8, reward (n,),
        p_term (n,). No host sync, so it can be captured in a CUDA graph (see graphs.py).
        """
        n = act.shape[0]
        has = torch.ones(n, 1, dtype=torch.bool, device=act.device)
        model = self.world.denoiser
        x0 = denoise_frame(model, cache, act, has, noise, self.schedule, self.cfg_scale)
        out = commit_frame(model, cache, x0, act, has, cfg=self.cfg_scale != 1.0)
        frames = self.world.codec.decode(x0[:, 0])  # (n, H, W, 3) uint8
        return frames, out.reward[:n, 0].float(), torch.sigmoid(out.term_logit[:n, 0].float())

    def _advance(self, cache: KVCache, rows: list[int], a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        act = torch.as_tensor(a, device=self.world.device).unsqueeze(1)  # (n, 1, ...)
        noise = self._noise(rows)
        # The host knows whether every slot of these rows is filled: no device sync per pass.
        full = bool((self._history[rows] >= self.world.config.cache.capacity).all())
        if self.cuda_graphs and cache is self.cache:
            if self._graphed is None:
                self._graphed = GraphedStep(self._advance_tensors, self.cache, act, noise)
            out = self._graphed.run(act, noise, full)
        else:
            cache.mask_mode = "never" if full else "always"
            try:
                out = self._advance_tensors(cache, act, noise)
            finally:
                cache.mask_mode = "auto"
        frames, rewards, p_term = (t.cpu().numpy() for t in out)
        if not np.all(np.isfinite(rewards)):
            raise FloatingPointError("the model produced a non-finite reward")
        return frames, rewards, p_term

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src``'s whole state (history, RNG, frame) into row ``dst`` (compaction)."""
        if self.cfg_scale != 1.0:
            raise ValueError("moving rows is not supported with classifier-free guidance")
        self.cache.scatter(self.cache.gather([src]), [dst])
        self.generators[dst].set_state(self.generators[src].get_state())
        self.frames[dst] = self.frames[src]
        self.frame_index[dst] = self.frame_index[src]
        self._history[dst] = self._history[src]
        self._started[dst] = self._started[src]


__all__ = ["WorldConfig", "WorldModel", "Session", "StepResult", "ActionError", "default_device", "default_dtype"]
