"""The few-step sampler: one new frame per call, through the KV cache.

Flow matching, x_t = (1 - t) x0 + t eps. For each new frame: start from noise at t_0 = 1, and at
each step predict x0 = x_t - t v and re-noise it to the next t with *fresh* noise (the DMD2-style
sampler Self Forcing uses, not an Euler step; ``SamplerConfig.eta`` < 1 mixes in the noise the step
implies, 0 = an Euler step). The last prediction is the frame. Then one pass
of the clean frame at t = 0 writes its K/V into the cache and gives the reward and termination
heads' outputs.

The same functions run inference (``Session``) and Self Forcing training (which passes
``exit_step`` so that exactly one denoising step carries gradient): :func:`commit_context` for
the given frames, then :func:`denoise_frame` and :func:`commit_frame` per new frame.

Guidance rows: with classifier-free guidance (``guidance_scale != 1``) every row ``r`` of a
batch owns two cache rows, ``2r`` (its action) and ``2r + 1`` (the null action), side by side,
so the first ``n`` rows of a guided batch are the first ``2n`` cache rows and any subset of rows
is :func:`cache_rows` of it. Nothing outside the engine sees the doubled rows.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from worldsim.engine.cache import FrameKV, KVCache, MaskPolicy
from worldsim.model.denoiser import CausalDenoiser, DenoiserOutput, HeadOutputs

ForwardKV = Callable[..., tuple[DenoiserOutput, torch.Tensor, torch.Tensor]]
"""``CausalDenoiser.forward_kv`` or its compiled form."""


@dataclass
class SamplerConfig:
    timesteps: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    """Noise levels visited for every frame, before the shift; 4 steps by default."""
    shift: float = 1.0
    """Timestep shift t' = s t / (1 + (s - 1) t); > 1 spends more steps at high noise."""
    guidance_scale: float = 1.0
    """Classifier-free guidance on the action (1.0 = off; the distilled student needs none).
    Checkpoints written before the rename store it as ``cfg_scale`` (see :data:`RENAMED_FIELDS`)."""
    guidance_steps: int | None = None
    """Guidance on the first ``guidance_steps`` denoising steps only (the high-noise ones, which
    decide where things are; "guidance in a limited interval", Kynkaanniemi et al. 2024); the
    later steps use the action alone. ``None``: every step."""
    eta: float = 1.0
    """How each step re-noises its x0 prediction to the next noise level: 1.0 with fresh noise (the
    DMD2-style sampler Self Forcing trains), 0.0 with the noise the step itself implies (an Euler
    step of the flow: no new randomness after the first step's noise), between: a mix of the two
    of unit variance (DDIM's eta, for flow matching). Measured before use: CartPole at 0 timed
    fewer episode ends than at 1 (its card, 2026-12-07), so the bundled worlds keep 1."""
    history_guidance: float = 0.0
    """Guidance on the history ("history guidance", Song et al. 2025, *History-Guided Video
    Diffusion*), on the steps action guidance covers (:attr:`guidance_steps`): one more pass sees
    the last frame *alone* (as a session started from it would: its velocity unknown), and the
    step's velocity moves by ``history_guidance`` x (the action's velocity with the whole history
    - that pass's), towards what the motion over the window says. 0 = off. Inference only.
    Measured on CartPole (its card, 2026-12-13): the pole falls sooner, frame 10 is predicted
    worse, 0.6-0.8x the frame rate; off in the bundled worlds."""
    renoise_scale: float = 1.0
    """Scale of the fresh noise each step after the first re-noises its x0 prediction with (a
    sampling temperature; 1.0 = what Self Forcing trains). Below 1 a step's input holds less noise
    than its level says, so the world commits to its prediction sooner: a frame nearer the mean of
    what could come next, less of the world's own sampling spread. The noise that starts the frame
    is not scaled (at ``eta`` 1 it hardly matters: the first step's x0 is re-noised with fresh
    noise). Not used by Self Forcing training; own-context rollouts sample as a session does.
    CartPole ships 0.7 (its card, 2026-12-21: frame 10 and the episode-end timing both better)."""
    cache_pass: str = "clean"
    """Which pass writes the frame into the KV cache and gives the heads: ``clean`` (a separate pass
    of the finished frame at t = 0, what Self Forcing trains: steps + 1 passes a frame) or
    ``last_step`` (the last denoising pass, at its noise level: one pass fewer; see the card's
    measurements before choosing it)."""

    cache_noise: float = 0.0
    """Noise level at which the cache pass writes each *generated* frame (x0 re-noised to it with
    fresh noise, the pass told its level): Diffusion Forcing's stabilisation of long rollouts, and
    GameNGen's noise-augmented context at inference. The world is told its own frames are slightly
    uncertain and leans on their fine detail less; the real frames a session starts from stay
    clean. The heads read that pass. 0 = clean (what Self Forcing trains); needs ``cache_pass``
    ``clean``. Inference only. Measured on CartPole (its card, 2026-12-18): PSNR @10 24.6 -> 23.3 /
    23.2 / 23.6 dB at 0.05 / 0.1 / 0.2 (the cart drifts more: it reads its velocity off the fine
    detail of its own frames); off in the bundled worlds."""

    def __post_init__(self) -> None:
        if self.cache_pass not in CACHE_PASSES:
            raise ValueError(f"sampler.cache_pass must be one of {CACHE_PASSES}, got {self.cache_pass!r}")
        if not self.timesteps or not all(isinstance(t, (int, float)) and 0 < t <= 1 for t in self.timesteps):
            raise ValueError(f"sampler.timesteps must list noise levels in (0, 1], got {self.timesteps!r}")
        n = self.guidance_steps
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"sampler.guidance_steps must be None (every step) or an int >= 1, got {n!r}")
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"sampler.eta must be a number in [0, 1] (1 = fresh noise each step), got {self.eta!r}")
        c = self.cache_noise
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c < 1.0:
            raise ValueError(f"sampler.cache_noise must be a noise level in [0, 1) (0 = clean), got {c!r}")
        if c and self.cache_pass != "clean":
            raise ValueError("sampler.cache_noise needs cache_pass='clean' (the last step's pass is not re-noised)")
        r = self.renoise_scale
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= r <= 1.0:
            raise ValueError(f"sampler.renoise_scale must be a number in [0, 1] (1 = as trained), got {r!r}")
        for name in ("guidance_scale", "shift", "history_guidance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"sampler.{name} must be a number, got {value!r}")

    def with_overrides(self, items: Sequence[str]) -> SamplerConfig:
        """A copy with ``field=value`` items applied (values as Python literals): e.g.
        ``["cache_pass=last_step", "timesteps=(1.0, 0.667, 0.333)", "guidance_scale=2.0"]``."""
        names = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or key.strip() not in names:
                raise ValueError(f"sampler override {item!r}: expected FIELD=VALUE with FIELD in {sorted(names)}")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                parsed = value.strip()
            changes[key.strip()] = tuple(parsed) if isinstance(parsed, list) else parsed
        return dataclasses.replace(self, **changes)

    @property
    def noise_slots(self) -> int:
        """Noise slices a frame draws: one per denoising step, one more to re-noise the committed
        frame when :attr:`cache_noise` is on (see :func:`commit_generated`)."""
        return len(self.timesteps) + (self.cache_noise > 0)

    @property
    def passes_per_frame(self) -> int:
        """Denoiser calls a frame (a guided step's two rows run as one call); history guidance
        adds the short passes and the commit of the last frame alone."""
        short = sum(1 for h in self.step_history_guidance() if h)
        return len(self.timesteps) + (self.cache_pass == "clean") + (short + 1 if short else 0)

    @property
    def guided(self) -> bool:
        return self.guidance_scale != 1.0

    def step_guidance(self) -> list[float]:
        """The guidance scale of each denoising step (1.0 where :attr:`guidance_steps` ends it)."""
        n = len(self.timesteps) if self.guidance_steps is None else self.guidance_steps
        return [self.guidance_scale if i < n else 1.0 for i in range(len(self.timesteps))]

    def step_history_guidance(self) -> list[float]:
        """The history guidance of each denoising step (0.0 where :attr:`guidance_steps` ends it)."""
        n = len(self.timesteps) if self.guidance_steps is None else self.guidance_steps
        return [float(self.history_guidance) if i < n else 0.0 for i in range(len(self.timesteps))]

    def schedule(self) -> list[float]:
        s = self.shift
        return [s * t / (1 + (s - 1) * t) for t in self.timesteps]


CACHE_PASSES = ("clean", "last_step")

RENAMED_FIELDS = {"cfg_scale": "guidance_scale"}
"""Old name -> new name of :class:`SamplerConfig` fields, for checkpoints that store the old one."""


def cache_rows(rows: Sequence[int], guided: bool) -> list[int]:
    """The cache rows that hold batch ``rows``: with guidance row r owns ``2r`` and ``2r + 1``."""
    return [c for r in rows for c in (2 * r, 2 * r + 1)] if guided else [int(r) for r in rows]


def _with_null_rows(
    x: torch.Tensor, action: torch.Tensor, has_action: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, ...) inputs -> (2B, ...): each row followed by its copy with the null action."""
    null = torch.stack([has_action, torch.zeros_like(has_action)], dim=1).flatten(0, 1)  # (2B, 1)
    return x.repeat_interleave(2, dim=0), action.repeat_interleave(2, dim=0), null


class FramePasses(Protocol):
    """One denoiser pass of one new frame per row: (x (B, 1, C, h, w), t (B, 1), action, has_action,
    write) -> the output; ``write`` stores the pass's K/V in the cache and moves it on.
    ``action_rows``: the cache is guided (2B rows) and only rows ``0, 2, ..`` (the ones with the
    action) are read; never with ``write``."""

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, h: torch.Tensor, write: bool, action_rows: bool = False
    ) -> DenoiserOutput: ...


def cache_passes(model: CausalDenoiser, cache: KVCache, mask: MaskPolicy = "auto") -> FramePasses:
    """Passes through the model's cache protocol (the layers read and write ``cache``; gradients
    flow). ``action_rows`` runs both rows of each pair and returns the action's (no saving)."""

    def run(
        x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, h: torch.Tensor, write: bool, action_rows: bool = False
    ) -> DenoiserOutput:
        if action_rows:
            xx, aa, hh = _with_null_rows(x, a, h)
            out = model(xx, t.repeat_interleave(2, dim=0), aa, hh, cache.context(write=False, mask=mask))
            return DenoiserOutput(
                reward=out.reward[0::2], term_logit=out.term_logit[0::2], v=out.v[0::2], pooled=out.pooled[0::2]
            )
        return model(x, t, a, h, cache.context(write=write, mask=mask))

    return run


def kv_passes(forward_kv: ForwardKV, cache: KVCache, mask: MaskPolicy = "auto") -> FramePasses:
    """Passes on explicit tensors: ``forward_kv`` is ``CausalDenoiser.forward_kv`` or its compiled
    form. The cache's rotated keys are read once per frame (:meth:`KVCache.frame_kv`); the write
    pass stores its K/V with :meth:`KVCache.write_frame`. ``action_rows`` reads only the guided
    cache's rows with the action (half the work; the view is made once per frame). Inference only."""
    kv: dict[bool, FrameKV] = {}

    def run(
        x: torch.Tensor, t: torch.Tensor, a: torch.Tensor, h: torch.Tensor, write: bool, action_rows: bool = False
    ) -> DenoiserOutput:
        if False not in kv:
            kv[False] = cache.frame_kv(mask)
        if action_rows and True not in kv:
            kv[True] = kv[False].action_rows()
        f = kv[action_rows]
        out, k_new, v_new = forward_kv(x, t, a, h, f.q_cos, f.q_sin, f.mask, f.k, f.v)
        if write:
            if action_rows:
                raise ValueError("a pass that writes the cache runs every row")
            cache.write_frame(k_new, v_new)
            kv.clear()
        return out

    return run


def denoise_frame(
    model: CausalDenoiser,
    cache: KVCache,
    action: torch.Tensor,
    has_action: torch.Tensor,
    noise: torch.Tensor,
    schedule: list[float],
    guidance_scale: float = 1.0,
    exit_step: int | None = None,
    mask: MaskPolicy = "auto",
) -> torch.Tensor:
    """:func:`denoise` through the cache protocol (training: ``exit_step`` keeps one step's gradient)."""
    passes = cache_passes(model, cache, mask)
    return denoise(passes, action, has_action, noise, schedule, guidance_scale, exit_step).x0


@dataclass
class DenoiseOutput:
    x0: torch.Tensor  # (B, 1, C, h, w) the generated frame
    heads: HeadOutputs | None  # (B, 1) each, from the last pass when it wrote the cache (``write_last``)


def denoise(
    passes: FramePasses,
    action: torch.Tensor,
    has_action: torch.Tensor,
    noise: torch.Tensor,
    schedule: list[float],
    guidance_scale: float | Sequence[float] = 1.0,
    exit_step: int | None = None,
    write_last: bool = False,
    eta: float = 1.0,
    history_guidance: Sequence[float] | None = None,
    short_passes: FramePasses | None = None,
    renoise_scale: float = 1.0,
) -> DenoiseOutput:
    """Generate one frame per row: x0 (B, 1, C, h, w).

    action (B, 1, ...); has_action (B, 1); noise (B, S, C, h, w) with S >= len(schedule) (slice
    0 starts the chain, slice i re-noises before step i). ``guidance_scale``: one scale, or one
    per step (:meth:`SamplerConfig.step_guidance`); with any scale != 1 the cache holds 2B rows
    (see the module's docstring), and a step at scale 1 reads only the rows with the action.

    ``exit_step`` (training): stop after that step; only it runs with gradient. ``write_last``:
    the last pass writes the cache and its heads are returned (``SamplerConfig.cache_pass``).
    ``eta``: how a step re-noises (:attr:`SamplerConfig.eta`; 1 = fresh noise, 0 = Euler), with
    the fresh noise scaled by ``renoise_scale`` (:attr:`SamplerConfig.renoise_scale`).
    ``history_guidance``: one scale per step (:meth:`SamplerConfig.step_history_guidance`); where
    it is not 0, ``short_passes`` (B rows, over a cache holding only each row's last frame) gives
    the short-history velocity and the step's moves by scale x (the action's velocity - it).
    """
    B = noise.shape[0]
    if abs(schedule[0] - 1.0) > 1e-6:
        raise ValueError(f"the first timestep must be 1.0 (pure noise), got {schedule[0]}")
    x = noise[:, :1]  # (B, 1, C, h, w): at t = 1, x_t is pure noise
    last = len(schedule) - 1 if exit_step is None else exit_step
    scales = (
        [float(guidance_scale)] * len(schedule) if isinstance(guidance_scale, (int, float)) else list(guidance_scale)
    )
    if len(scales) != len(schedule):
        raise ValueError(f"{len(scales)} guidance scales for {len(schedule)} denoising steps")
    guided = any(g != 1.0 for g in scales)
    hscales = [0.0] * len(schedule) if history_guidance is None else [float(h) for h in history_guidance]
    if len(hscales) != len(schedule) or (any(hscales) and short_passes is None):
        raise ValueError(f"history guidance needs one scale per step ({len(schedule)}) and short_passes")
    x0, heads = x, None
    for i in range(last + 1):
        t = schedule[i]
        write = write_last and i == last
        with torch.set_grad_enabled(torch.is_grad_enabled() and (exit_step is None or i == exit_step)):
            t_b = torch.full((x.shape[0], 1), t, device=x.device, dtype=x.dtype)
            if guided and scales[i] == 1.0 and not write:  # the action's rows alone
                out = passes(x, t_b, action, has_action, False, action_rows=True)
                v = v_action = out.v
            elif guided:
                xx, aa, hh = _with_null_rows(x, action, has_action)
                out = passes(xx, t_b.repeat_interleave(2, dim=0), aa, hh, write)
                vv = out.v.unflatten(0, (B, 2))  # (B, 2, 1, C, h, w): [action, null]
                v_action = vv[:, 0]
                v = vv[:, 1] + scales[i] * (vv[:, 0] - vv[:, 1])
                if write:
                    heads = HeadOutputs(reward=out.reward[0::2], term_logit=out.term_logit[0::2])
            else:
                out = passes(x, t_b, action, has_action, write)
                v = v_action = out.v
                if write:
                    heads = HeadOutputs(reward=out.reward, term_logit=out.term_logit)
            if hscales[i] and short_passes is not None:
                v = v + hscales[i] * (v_action - short_passes(x, t_b, action, has_action, False).v)
            x0 = x - t * v
        if i < last:
            t_next = schedule[i + 1]
            fresh = noise[:, i + 1 : i + 2] if renoise_scale == 1.0 else renoise_scale * noise[:, i + 1 : i + 2]
            if eta != 1.0:  # the noise this step implies, x_t = (1 - t) x0 + t eps  =>  eps = x_t + (1 - t) v
                implied = (x + (1 - t) * v).detach()
                fresh = eta * fresh + (1 - eta * eta) ** 0.5 * implied
            x = (1 - t_next) * x0.detach() + t_next * fresh
    return DenoiseOutput(x0=x0, heads=heads)


def commit_frame(
    model: CausalDenoiser,
    cache: KVCache,
    x0: torch.Tensor,
    action: torch.Tensor,
    has_action: torch.Tensor,
    t: float | torch.Tensor = 0.0,
    guided: bool = False,
    mask: MaskPolicy = "auto",
) -> HeadOutputs:
    """:func:`commit` through the cache protocol."""
    return commit(cache_passes(model, cache, mask), x0, action, has_action, t, guided)


def commit(
    passes: FramePasses,
    x0: torch.Tensor,
    action: torch.Tensor,
    has_action: torch.Tensor,
    t: float | torch.Tensor = 0.0,
    guided: bool = False,
) -> HeadOutputs:
    """The clean pass: write a frame's K/V into the cache (no gradient) and return head outputs (B, 1).

    x0 (B, 1, C, h, w). ``t`` > 0 commits a noisy frame (Diffusion Forcing context). ``guided``:
    the cache has 2B rows (see :func:`denoise`), both are written, the heads are read
    from the rows with the action.
    """
    with torch.no_grad():
        x = x0.detach()
        if guided:
            x, action, has_action = _with_null_rows(x, action, has_action)
        if isinstance(t, torch.Tensor):
            tt = t.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 1)
        else:  # a fill kernel, not a host-to-device copy (CUDA graph capture allows none)
            tt = torch.full((x.shape[0], 1), float(t), device=x.device, dtype=x.dtype)
        out = passes(x, tt, action, has_action, True)
        if guided:
            return HeadOutputs(reward=out.reward[0::2], term_logit=out.term_logit[0::2])
        return HeadOutputs(reward=out.reward, term_logit=out.term_logit)


def commit_generated(
    passes: FramePasses,
    x0: torch.Tensor,
    action: torch.Tensor,
    has_action: torch.Tensor,
    noise: torch.Tensor,
    cache_noise: float = 0.0,
    guided: bool = False,
) -> HeadOutputs:
    """:func:`commit` a generated frame x0 (B, 1, C, h, w): clean, or re-noised to ``cache_noise``
    with the last of the frame's ``noise`` slices and the pass told that level
    (:attr:`SamplerConfig.cache_noise`). What a session and own-context training both commit."""
    if cache_noise:
        noisy = (1 - cache_noise) * x0 + cache_noise * noise[:, -1:]
        return commit(passes, noisy, action, has_action, t=cache_noise, guided=guided)
    return commit(passes, x0, action, has_action, guided=guided)


def commit_context(
    model: CausalDenoiser,
    cache: KVCache,
    x: torch.Tensor,
    action: torch.Tensor,
    has_action: torch.Tensor | None = None,
    guided: bool = False,
    forward_kv: ForwardKV | None = None,
) -> None:
    """Empty ``cache`` and commit clean context frames x (B, K, C, h, w) one by one.

    action (B, K, ...); has_action (B, K), by default every frame but the first (an episode's
    first frame has no action that produced it). Used by ``Session.reset`` and Self Forcing.
    ``forward_kv`` (inference only): run the passes on explicit tensors with this function (the
    compiled one, see :func:`kv_passes`) instead of the model's cache protocol.
    """
    cache.reset()
    for k in range(x.shape[1]):
        if has_action is None:
            has = torch.full((x.shape[0], 1), k > 0, device=x.device)
        else:
            has = has_action[:, k : k + 1]
        passes = cache_passes(model, cache) if forward_kv is None else kv_passes(forward_kv, cache)
        commit(passes, x[:, k : k + 1], action[:, k : k + 1], has, guided=guided)
