"""Batched sessions: B independent rollouts of one world, stepped with one batched model call.

A session owns everything a rollout needs beyond the weights: the rolling KV cache, one RNG per
row, each row's frame and history length, and (on CUDA) the captured step. Rows can be stepped,
reset and moved one at a time, with or without classifier-free guidance: a guided world's two
cache rows per row (see ``worldsim.engine.sampler``) never show outside this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from worldsim.engine.cache import CacheConfig, KVCache, MaskPolicy
from worldsim.engine.compiled import eager_forward_kv
from worldsim.engine.ends import EndRule
from worldsim.engine.graphs import GraphedStep
from worldsim.engine.sampler import (
    FramePasses,
    cache_rows,
    commit,
    commit_context,
    commit_generated,
    denoise,
    kv_passes,
)

if TYPE_CHECKING:
    from worldsim.engine.world import WorldModel

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    frames: np.ndarray  # (B, 64, 64, 3) uint8
    rewards: np.ndarray  # (B,) float32
    terminated: np.ndarray  # (B,) bool: the world's end rule on p_terminated (engine/ends.py)
    latency_ms: float  # wall time of the whole batched step, decode included
    p_terminated: np.ndarray  # (B,) float32: the termination head's probability that the frame ends the episode


STEP_CHUNK = 16
"""On CPU a step of more rows runs as consecutive engine calls of at most this many (0: one call).
Per frame, one call of 64 rows was slower than one of 16 on the 2-core CPU (fp32 51 vs 63
frames/s, bf16 95 vs 126): at 64 rows a layer's attention scores (128 guided rows) outgrow the
caches. Chunks are contiguous rows, so they run on views of the KV cache (no copy)."""


class Session:
    """B independent rollouts of one world, stepped together with one batched model call.

    Each row has its own RNG (seeded per row, as Gymnasium vector envs do: ``seed + row``) and
    its own history in the rolling KV cache, so rows can be stepped, reset and moved one at a
    time. With guidance each row has two cache rows (:func:`~worldsim.engine.sampler.cache_rows`).
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
        self.step_guidance = cfg.sampler.step_guidance()
        self.eta = float(cfg.sampler.eta)
        self.renoise_scale = float(cfg.sampler.renoise_scale)
        self.history_guidance = cfg.sampler.step_history_guidance()
        self.history_guided = any(self.history_guidance)  # decided once, not per frame
        self.cache_noise = float(cfg.sampler.cache_noise)
        self.noise_slots = cfg.sampler.noise_slots
        self.guided = cfg.sampler.guided
        rows = len(cache_rows(range(batch), self.guided))
        self.cache = KVCache(cfg.denoiser, cfg.cache, rows, world.device, world.dtype)
        self.generators = [torch.Generator(device=world.device) for _ in range(batch)]
        self._seed_rows(range(batch), seed)
        self.frame_index = np.zeros(batch, dtype=np.int64)
        self.frames = np.zeros((batch, cfg.codec.image_size, cfg.codec.image_size, 3), np.uint8)
        self._started = np.zeros(batch, dtype=bool)
        # Frames in each row's history (context + generated), mirrored on the host so the
        # graphed step knows without a device sync whether every cache slot is filled.
        self._history = np.zeros(batch, dtype=np.int64)
        self.ends = EndRule(batch, cfg.term_threshold, cfg.term_window)
        if cuda_graphs is None:  # history guidance's short passes are not captured (yet)
            cuda_graphs = world.device.type == "cuda" and not self.history_guided
        if cuda_graphs and world.device.type != "cuda":
            raise ValueError(f"cuda_graphs needs a CUDA device, the world is on {world.device}")
        if cuda_graphs and self.history_guided:
            raise ValueError(
                "sampler.history_guidance runs eager or compiled, not in CUDA graphs: pass cuda_graphs=False"
            )
        self.cuda_graphs = cuda_graphs
        self.step_chunk = STEP_CHUNK
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
        if frames is None:
            n_start = self.world.start_frames.shape[0]
            if n_start == 0:
                raise RuntimeError("this world ships no start clips: pass context frames to reset()")
            pick = [
                int(torch.randint(n_start, (1,), generator=self.generators[r], device=self.world.device)) for r in rows
            ]
            # Committed once per clip and world (engine/starts.py): a copy, not K passes.
            self.cache.restore(cache_rows(rows, self.guided), self.world.starts.state(pick, self.guided))
            last, k = self.world.start_frames[pick][:, -1], self.world.start_frames.shape[1]
        else:
            ctx, acts = self._given_context(len(rows), frames, actions)
            self._write_context(rows, ctx, acts)
            last, k = ctx[:, -1], ctx.shape[1]
        self._history[rows] = k
        self.frames[rows] = last.cpu().numpy()
        self.frame_index[rows] = 0
        self._started[rows] = True
        self.ends.reset(rows)
        return self.frames.copy()

    def _given_context(self, n: int, frames: Any, actions: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Validated context frames (n, K, H, W, 3) uint8 and their actions (n, K, ...) for n rows."""
        spec = self.world.action_spec
        ctx = torch.as_tensor(np.asarray(frames), device=self.world.device)
        if ctx.ndim == 4:
            ctx = ctx.unsqueeze(0).expand(n, *ctx.shape)
        s = self.world.config.codec.image_size
        if ctx.ndim != 5 or tuple(ctx.shape[-3:]) != (s, s, 3) or ctx.shape[0] != n:
            raise ValueError(
                f"context frames must be (K, {s}, {s}, 3) or ({n}, K, {s}, {s}, 3), got {tuple(ctx.shape)}"
            )
        if ctx.dtype != torch.uint8:
            raise ValueError(f"context frames must be uint8, got {ctx.dtype}")
        if actions is None:
            acts = torch.as_tensor(spec.null(n * ctx.shape[1])).reshape(n, ctx.shape[1], *spec.per_action_shape)
        else:
            a = np.asarray(actions)
            if a.ndim == len(spec.per_action_shape) + 1:
                a = np.broadcast_to(a, (n, *a.shape))
            flat = spec.validate(a.reshape(-1, *spec.per_action_shape) if spec.per_action_shape else a.reshape(-1))
            acts = torch.as_tensor(flat).reshape(n, -1, *spec.per_action_shape)
        return ctx, acts.to(self.world.device)

    @torch.inference_mode()
    def _write_context(self, rows: list[int], ctx: torch.Tensor, acts: torch.Tensor) -> None:
        """Reset rows' histories and commit their context frames; other rows keep theirs."""
        lat = self.world.codec.encode(ctx)  # (R, K, C, h, w)
        model = self.world.denoiser
        fkv = self.world.compiled.forward_kv if self.world.compiled is not None else None
        if rows == list(range(self.batch)):
            commit_context(model, self.cache, lat, acts, guided=self.guided, forward_kv=fkv)
            return
        # Some rows only: fill a small cache for them, then copy it into theirs.
        idx = cache_rows(rows, self.guided)
        cfg = self.world.config
        sub = KVCache(cfg.denoiser, cfg.cache, len(idx), self.world.device, self.world.dtype)
        commit_context(model, sub, lat, acts, guided=self.guided, forward_kv=fkv)
        self.cache.copy_rows_from(sub, torch.as_tensor(idx, device=self.world.device))

    # ------------------------------------------------------------------ step
    def _noise(self, rows: Sequence[int]) -> torch.Tensor:
        c = self.world.config.codec
        shape = (self.noise_slots, 1, c.latent_channels, c.latent_size, c.latent_size)
        noise = [torch.randn(shape, generator=self.generators[r], device=self.world.device) for r in rows]
        return torch.stack(noise).squeeze(2).to(self.world.dtype)  # (B, S, C, h, w)

    @torch.inference_mode()
    def step(self, actions: Any, rows: Sequence[int] | None = None) -> StepResult:
        """Advance rows by one frame given one action per row (all rows by default).

        With ``rows``, only those rows advance (the others keep their state): contiguous rows
        run on a view of the cache at no extra cost; any other subset is gathered and scattered
        back (a copy of those rows' caches). Guided or not alike. On CPU more than
        :attr:`step_chunk` rows run as consecutive calls of at most that many rows.
        """
        t0 = time.perf_counter()
        idx = list(range(self.batch)) if rows is None else self._rows(rows)
        if not self._started[idx].all():
            raise RuntimeError("call reset() before step()")
        if len(set(idx)) != len(idx):
            raise ValueError(f"rows must be distinct, got {idx}")
        a = self.world.action_spec.validate(actions, batch=len(idx))
        n = self.step_chunk if self.step_chunk and self.world.device.type == "cpu" else len(idx)
        outs = [self._step_rows(idx[i : i + n], a[i : i + n]) for i in range(0, len(idx), n)]
        frames, rewards, p_term = outs[0] if len(outs) == 1 else (np.concatenate(x) for x in zip(*outs))
        return StepResult(
            frames=frames,
            rewards=rewards.astype(np.float32),
            terminated=self.ends.step(idx, p_term),
            latency_ms=(time.perf_counter() - t0) * 1e3,
            p_terminated=p_term.astype(np.float32),
        )

    def _step_rows(self, idx: list[int], a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One engine call for ``idx`` with validated actions: frames, rewards, p(terminated)."""
        c = cache_rows(idx, self.guided)
        if c == list(range(self.cache.batch)):
            cache = self.cache
        elif c == list(range(c[0], c[0] + len(c))):
            cache = self.cache.narrow(len(c), start=c[0])
        else:
            cache = self.cache.gather(c)
        frames, rewards, p_term = self._advance(cache, idx, a)
        if cache is not self.cache and not cache.is_view:
            self.cache.scatter(cache, c)
        self.frames[idx] = frames
        self.frame_index[idx] += 1
        self._history[idx] += 1
        return frames.copy(), rewards, p_term

    def _last_frame_passes(self, forward_kv: Any, last: torch.Tensor) -> FramePasses:
        """History guidance's short passes: a one-slot cache holding each row's last frame alone
        (``last`` (n, H, W, 3) uint8, encoded again, committed with no action as an episode's first
        frame is), so a pass over it sees that frame and nothing older."""
        cfg = self.world.config
        lat = self.world.codec.encode(last)[:, None].to(self.world.dtype)  # (n, 1, C, h, w)
        n = lat.shape[0]
        short = KVCache(cfg.denoiser, CacheConfig(window=1), n, self.world.device, self.world.dtype)
        null = torch.as_tensor(self.world.action_spec.null(n), device=self.world.device).unsqueeze(1)
        passes = kv_passes(forward_kv, short, "never")
        commit(passes, lat, null, torch.zeros(n, 1, dtype=torch.bool, device=lat.device))
        return passes

    def _advance_tensors(
        self, cache: KVCache, act: torch.Tensor, noise: torch.Tensor, mask: MaskPolicy, last: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The device side of a step: denoise, commit to the cache, heads, decode.

        act (n, 1, ...), noise (n, noise_slots, C, h, w) -> frames (n, H, W, 3) uint8, reward (n,),
        p_term (n,). With ``mask`` other than ``auto`` there is no host sync, so it can be
        captured in a CUDA graph (see graphs.py). Compiled or eager alike (``world.compiled``).
        """
        n = act.shape[0]
        has = torch.ones(n, 1, dtype=torch.bool, device=act.device)
        compiled = self.world.compiled
        forward_kv = compiled.forward_kv if compiled is not None else eager_forward_kv(self.world.denoiser)
        decode = compiled.decode if compiled is not None else self.world.codec.decode
        passes = kv_passes(forward_kv, cache, mask)
        last_step = self.world.config.sampler.cache_pass == "last_step"
        short = self._last_frame_passes(forward_kv, last) if last is not None else None
        res = denoise(
            passes,
            act,
            has,
            noise,
            self.schedule,
            self.step_guidance,
            write_last=last_step,
            eta=self.eta,
            renoise_scale=self.renoise_scale,
            history_guidance=self.history_guidance if short is not None else None,
            short_passes=short,
        )
        x0 = res.x0
        if res.heads is not None:
            out = res.heads
        else:
            out = commit_generated(passes, x0, act, has, noise, self.cache_noise, self.guided)
        frames = decode(x0[:, 0])  # (n, H, W, 3) uint8
        return frames, out.reward[:, 0].float(), torch.sigmoid(out.term_logit[:, 0].float())

    @torch.inference_mode()
    def warmup(self) -> float:
        """Compile the step for this session's batch now (on a scratch copy of the cache, so
        nothing changes) instead of on the first step; returns the seconds it took (0 when the
        world runs eager). ``worldsim play`` shows progress while it runs."""
        if self.world.compiled is None or not self.world.compiled.active:
            return 0.0
        t0 = time.perf_counter()
        scratch = self.cache.gather(list(range(self.cache.batch)))
        act = torch.as_tensor(self.world.action_spec.null(self.batch), device=self.world.device).unsqueeze(1)
        last = torch.as_tensor(self.frames, device=self.world.device) if self.history_guided else None
        self._advance_tensors(scratch, act, self._noise_like(), self._mask(full=False), last)
        return time.perf_counter() - t0

    def _noise_like(self) -> torch.Tensor:
        c = self.world.config.codec
        shape = (self.batch, self.noise_slots, c.latent_channels, c.latent_size, c.latent_size)
        return torch.zeros(shape, device=self.world.device, dtype=self.world.dtype)

    def _mask(self, full: bool) -> MaskPolicy:
        """The mask policy of a step: compiled steps always take a mask (one graph for every fill
        state); eager ones skip it once every slot is filled (the flash-attn path on CUDA)."""
        if self.world.compiled is not None and self.world.compiled.active:
            return "always"
        return "never" if full else "always"

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
            last = None
            if self.history_guided:
                last = torch.as_tensor(self.frames[rows], device=self.world.device)
            out = self._advance_tensors(cache, act, noise, self._mask(full), last)
        frames, rewards, p_term = (t.cpu().numpy() for t in out)
        if not np.all(np.isfinite(rewards)):
            raise FloatingPointError("the model produced a non-finite reward")
        return frames, rewards, p_term

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src``'s whole state (history, RNG, frame) into row ``dst`` (compaction)."""
        self.cache.scatter(self.cache.gather(cache_rows([src], self.guided)), cache_rows([dst], self.guided))
        self.generators[dst].set_state(self.generators[src].get_state())
        self.frames[dst] = self.frames[src]
        self.frame_index[dst] = self.frame_index[src]
        self._history[dst] = self._history[src]
        self._started[dst] = self._started[src]
        self.ends.move(src, dst)
