"""CUDA graphs for the per-frame step: one replay instead of ~5 x depth x 10 kernel launches.

At batch 1 a frame is about five denoiser passes of a small DiT plus a decoder: on a GPU the
kernels are tiny and the step is bound by Python and launch overhead, which CUDA graphs remove.
A :class:`GraphedStep` records the whole device side of :meth:`Session.step` for one session
(fixed batch, fixed cache buffers): the denoising chain, the clean pass that writes the cache,
the heads and the decoder. Each step then copies the actions and the noise into static input
buffers, replays, and reads the static outputs.

Graph capture allows no host synchronisation, so the cache's attention mask cannot be decided by
looking at its slots (the ``auto`` :data:`~worldsim.engine.cache.MaskPolicy`). The session knows
each row's history on the host, so two graphs are kept, each passing its policy to the step: ``filling`` (some slot is empty in some row: masked SDPA) and
``full`` (every slot filled: no mask, so flash-attn when it is installed). They are captured
lazily, the first time each is needed.

Chosen at run time: on by default on CUDA (``Session(..., cuda_graphs=None)``), never on CPU,
where :meth:`GraphedStep.run_eager` runs the very same function on the same static buffers
(this is what the CPU tests check against the plain path).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from worldsim.engine.cache import KVCache, MaskPolicy

log = logging.getLogger(__name__)

StepFn = Callable[[KVCache, torch.Tensor, torch.Tensor, MaskPolicy], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class GraphedStep:
    """Static buffers + lazily captured graphs for one session's full-batch step.

    ``fn(cache, action, noise, mask) -> (frames_u8, reward, p_term)`` must only read its inputs and
    the cache's buffers and write the cache in place (which :func:`Session._advance_tensors`
    does). ``action`` (B, 1, ...) and ``noise`` (B, S, C, h, w) give the static input shapes.
    """

    def __init__(self, fn: StepFn, cache: KVCache, action: torch.Tensor, noise: torch.Tensor) -> None:
        self.fn, self.cache = fn, cache
        self.action = torch.zeros_like(action)
        self.noise = torch.zeros_like(noise)
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.pool: Any = None  # the graphs share one memory pool

    def _load(self, action: torch.Tensor, noise: torch.Tensor) -> None:
        if action.shape != self.action.shape or noise.shape != self.noise.shape:
            raise ValueError(
                f"graphed step shapes are fixed: action {tuple(self.action.shape)}, noise {tuple(self.noise.shape)}"
            )
        self.action.copy_(action)
        self.noise.copy_(noise)

    def run_eager(
        self, action: torch.Tensor, noise: torch.Tensor, full: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The captured function, run directly on the static buffers (any device)."""
        self._load(action, noise)
        return self._call(full)

    def _call(self, full: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.fn(self.cache, self.action, self.noise, "never" if full else "always")

    def run(
        self, action: torch.Tensor, noise: torch.Tensor, full: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copy inputs in, replay the graph for this fill state (capturing it the first time)."""
        key = "full" if full else "filling"
        self._load(action, noise)
        if key not in self.graphs:
            self._capture(key, full)
        self.graphs[key].replay()
        return self.outputs[key]

    def _capture(self, key: str, full: bool) -> None:
        # Warm up on a side stream with a scratch copy of the cache (warm-up runs execute and
        # would otherwise advance the real one); capture records without executing.
        real = self.cache
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.cache = real.gather(list(range(real.batch)))
            for _ in range(2):
                self._call(full)
        torch.cuda.current_stream().wait_stream(stream)
        self.cache = real
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._call(full)
        self.pool = graph.pool()
        self.graphs[key], self.outputs[key] = graph, out
        log.info("captured a CUDA graph for the %s-cache step (batch %d)", key, real.batch)
