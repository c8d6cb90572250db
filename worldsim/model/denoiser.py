"""The causal denoiser: an action-conditioned, frame-causal diffusion transformer (DiT).

Shapes: B batch, T frames, N tokens per frame (latent h*w, 64 by default), C latent channels,
D model width, H heads, hd head width, L cached tokens.

- Tokens of frame t attend to every token of frames <= t (block-causal) and never to a later
  frame; attention inside a frame is full.
- Per-frame conditioning (noise level t and the action that produced the frame) enters through
  adaLN-Zero modulation, broadcast over the frame's tokens.
- Positions: a learned spatial embedding inside a frame; temporal RoPE on frame positions. With
  a rolling KV cache, keys are stored *without* the temporal rotation and rotated at attention
  time by their position *inside the window* (the engine's cache, reached through the
  ``KVStore`` protocol of ``worldsim.model.attention``), so frame 100,000 sees the same positions
  as frame 100.
- Reward and termination heads read the pooled final hidden state of a frame; the engine uses
  them on the clean (t = 0) pass.

Parameterisation: flow matching, x_t = (1 - t) x0 + t eps; the network predicts the velocity
v = eps - x0, so x0 = x_t - t v.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldsim.model.actions import ActionEncoder
from worldsim.model.attention import AttnContext, apply_rope, attend, rope_tables
from worldsim.spaces import ActionSpec


@dataclass
class DenoiserConfig:
    latent_channels: int = 16
    """C: channels of the codec's latent grid."""
    latent_size: int = 8
    """h = w of the latent grid; N = latent_size ** 2 tokens per frame."""
    dim: int = 128
    """D: transformer width."""
    depth: int = 6
    """Number of transformer blocks."""
    heads: int = 2
    """Attention heads (head width = dim / heads)."""
    mlp_ratio: float = 4.0
    """MLP hidden width = mlp_ratio * dim."""
    rope_base: float = 1000.0
    """Base of the temporal rotary embedding."""

    @property
    def tokens(self) -> int:
        return self.latent_size**2

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass
class HeadOutputs:
    reward: torch.Tensor  # (B, T) or (M,): predicted reward of each frame
    term_logit: torch.Tensor  # same shape: logit of "this frame ends the episode"


@dataclass
class DenoiserOutput(HeadOutputs):
    v: torch.Tensor  # (B, T, C, h, w) predicted velocity
    pooled: torch.Tensor  # (B, T, D) the frame's pooled final hidden state (what the heads read)


class HasHeads(Protocol):
    """A module holding the two heads (a :class:`CausalDenoiser`, or a copy of its heads)."""

    @property
    def reward_head(self) -> nn.Module: ...

    @property
    def term_head(self) -> nn.Module: ...


def head_outputs(m: HasHeads, pooled: torch.Tensor) -> HeadOutputs:
    """Reward and termination heads on pooled frame features (..., D) -> (...) each.

    ``m`` is a :class:`CausalDenoiser` or anything holding the same two heads (a copy being re-fit).
    """
    return HeadOutputs(reward=m.reward_head(pooled).squeeze(-1), term_logit=m.term_head(pooled).squeeze(-1))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t (...,) in [0, 1] -> sinusoidal features (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0).unsqueeze(-1) * freqs
    return torch.cat([args.cos(), args.sin()], dim=-1)


GELU_K = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_tanh_as_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")`` written as ``x * sigmoid(2 k (x + 0.044715 x^3))``, the
    same function (``0.5 (1 + tanh(z)) = sigmoid(2 z)``; 5e-7 apart in fp32).

    Why: compiled by inductor for CPU, the tanh form was the slowest op of a pass (bf16, 1024 x 512:
    ~580 us against a 190 us matmul); this form costs ~350 (fp32: ~630 -> ~300). Eager, aten's own
    GELU kernel is faster, so only the compiled passes use it (``forward_kv(sigmoid_gelu=True)``)."""
    return x * torch.sigmoid(GELU_K * (x + 0.044715 * x * x * x))


class Block(nn.Module):
    def __init__(self, cfg: DenoiserConfig, index: int) -> None:
        super().__init__()
        d = cfg.dim
        self.index = index
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(cfg.head_dim, eps=1e-6)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        self.ada = nn.Linear(d, 6 * d)  # adaLN-Zero: shift/scale/gate for attention and MLP
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
        # x (B, T, N, D); c (B, T, D)
        ck = cv = None
        if ctx.cache is not None:
            ck, cv = ctx.cache.attention_kv(self.index)  # (B, H, L, hd), already rotated
        x, k, v = self.step(x, c, ctx.q_cos, ctx.q_sin, ctx.mask, ck, cv)
        if ctx.write and ctx.cache is not None:
            ctx.cache.store(self.index, k.detach(), v.detach())
        return x

    def step(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        q_cos: torch.Tensor,
        q_sin: torch.Tensor,
        mask: torch.Tensor | None,
        ck: torch.Tensor | None = None,
        cv: torch.Tensor | None = None,
        math_attention: bool = False,
        sigmoid_gelu: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on explicit tensors: x (B, T, N, D), c (B, T, D), cached keys (rotated) and
        values ck/cv (B, H, L, hd) or None -> (x, the new tokens' k (rotated) and v (B, H, T*N, hd)).
        ``sigmoid_gelu``: the MLP's GELU as :func:`gelu_tanh_as_sigmoid` (the same function)."""
        B, T, N, D = x.shape
        mod = self.ada(F.silu(c)).unsqueeze(2)  # (B, T, 1, 6D)
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, dim=-1)

        h = self.norm1(x) * (1 + sc1) + sh1
        qkv = self.qkv(h).view(B, T * N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T*N, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        q_r = apply_rope(q, q_cos, q_sin)
        k_r = apply_rope(k, q_cos, q_sin)
        if ck is not None and cv is not None:
            keys, values = torch.cat([ck, k_r], dim=2), torch.cat([cv, v], dim=2)
        else:
            keys, values = k_r, v
        a = attend(q_r, keys, values, mask, math=math_attention)  # (B, H, T*N, hd)
        a = a.transpose(1, 2).reshape(B, T, N, D)
        x = x + g1 * self.proj(a)
        h = self.norm2(x) * (1 + sc2) + sh2
        if sigmoid_gelu:
            fc1, _, fc2 = self.mlp
            x = x + g2 * fc2(gelu_tanh_as_sigmoid(fc1(h)))
        else:
            x = x + g2 * self.mlp(h)
        return x, k_r, v


class CausalDenoiser(nn.Module):
    """v-prediction DiT over frames (B, T, C, h, w), block-causal in T."""

    def __init__(self, cfg: DenoiserConfig, action_spec: ActionSpec) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.inp = nn.Linear(cfg.latent_channels, d)
        self.pos = nn.Parameter(torch.randn(cfg.tokens, d) * 0.02)  # spatial, within a frame
        self.t_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.actions = ActionEncoder(action_spec, d)
        self.blocks = nn.ModuleList([Block(cfg, i) for i in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, cfg.latent_channels)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.reward_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))
        self.term_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))

    # ------------------------------------------------------------------ contexts
    def full_context(self, T: int, device: torch.device, start: int = 0) -> AttnContext:
        """Block-causal attention over a whole clip of T frames (training; no cache)."""
        N = self.cfg.tokens
        pos = torch.arange(start, start + T, device=device).repeat_interleave(N)  # (T*N,)
        cos, sin = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_base)
        frame = torch.arange(T, device=device).repeat_interleave(N)
        mask = (frame[:, None] >= frame[None, :]) if T > 1 else None  # (T*N, T*N)
        return AttnContext(
            q_cos=cos[None, None], q_sin=sin[None, None], mask=None if mask is None else mask[None, None]
        )

    def paired_context(self, T: int, device: torch.device) -> AttnContext:
        """Teacher-forcing layout over 2T frames: [context_0..context_{T-1}, query_0..query_{T-1}].

        context_i attends to context_{<=i}; query_i attends to context_{<i} and to itself, so every
        query frame is denoised given (clean or noisy) ground-truth context in ONE forward pass.
        Both copies of frame i sit at temporal position i.
        """
        N = self.cfg.tokens
        frame = torch.arange(T, device=device)
        ctx_rows = torch.cat([frame[:, None] >= frame[None, :], torch.zeros(T, T, dtype=torch.bool, device=device)], 1)
        q_rows = torch.cat([frame[:, None] > frame[None, :], torch.eye(T, dtype=torch.bool, device=device)], 1)
        fmask = torch.cat([ctx_rows, q_rows], 0)  # (2T, 2T) frame-level
        mask = fmask.repeat_interleave(N, 0).repeat_interleave(N, 1)
        pos = torch.cat([frame, frame]).repeat_interleave(N)
        cos, sin = rope_tables(pos, self.cfg.head_dim, self.cfg.rope_base)
        return AttnContext(q_cos=cos[None, None], q_sin=sin[None, None], mask=mask[None, None])

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        action: torch.Tensor,
        has_action: torch.Tensor,
        ctx: AttnContext | None = None,
    ) -> DenoiserOutput:
        """x (B, T, C, h, w) noisy latents; t (B, T) noise levels; action (B, T, ...); has_action (B, T)."""
        if ctx is None:
            ctx = self.full_context(x.shape[1], x.device)
        h, c = self._embed(x, t, action, has_action)
        for block in self.blocks:
            h = block(h, c, ctx)
        if ctx.write and ctx.cache is not None:
            ctx.cache.advance(x.shape[1])
        return self._readout(h, c, x.shape)

    def forward_kv(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        action: torch.Tensor,
        has_action: torch.Tensor,
        q_cos: torch.Tensor,
        q_sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        math_attention: bool = False,
        sigmoid_gelu: bool = False,
    ) -> tuple[DenoiserOutput, torch.Tensor, torch.Tensor]:
        """One cached pass on explicit tensors (what ``torch.compile`` and CUDA graphs take whole).

        x, t, action, has_action as in :meth:`forward`; q_cos/q_sin (B|1, 1, T*N, hd); mask bool
        (B|1, 1, T*N, L + T*N) or None; cache_k (rotated) / cache_v (depth, B, H, L, hd).
        Returns the output and the new tokens' keys (rotated by q_cos/q_sin) and values (depth, B, H, T*N, hd),
        for the caller to store: the same numbers as :meth:`forward` with a cache context.
        ``math_attention``: attention as matmuls and a softmax (``attention.math_attention``);
        ``sigmoid_gelu``: the GELU as :func:`gelu_tanh_as_sigmoid` (what the compiled passes use).
        """
        h, c = self._embed(x, t, action, has_action)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            assert isinstance(block, Block)
            h, k, v = block.step(h, c, q_cos, q_sin, mask, cache_k[i], cache_v[i], math_attention, sigmoid_gelu)
            ks.append(k)
            vs.append(v)
        return self._readout(h, c, x.shape), torch.stack(ks), torch.stack(vs)

    def _embed(
        self, x: torch.Tensor, t: torch.Tensor, action: torch.Tensor, has_action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, T, N, D) and per-frame conditioning (B, T, D)."""
        tok = x.flatten(3).transpose(2, 3)  # (B, T, N, C)
        h = self.inp(tok) + self.pos  # (B, T, N, D)
        c = self.t_mlp(timestep_embedding(t, 256).to(h.dtype)) + self.actions(action, has_action).to(h.dtype)
        return h, c

    def _readout(self, h: torch.Tensor, c: torch.Tensor, shape: torch.Size) -> DenoiserOutput:
        B, T, C, hh, ww = shape
        shift, scale = self.ada_out(F.silu(c)).unsqueeze(2).chunk(2, dim=-1)
        hn = self.norm_out(h)
        out = self.out(hn * (1 + scale) + shift)  # (B, T, N, C)
        v = out.transpose(2, 3).reshape(B, T, C, hh, ww)
        pooled = hn.mean(dim=2)  # (B, T, D)
        heads = self.head_outputs(pooled)
        return DenoiserOutput(reward=heads.reward, term_logit=heads.term_logit, v=v, pooled=pooled)

    def head_outputs(self, pooled: torch.Tensor) -> HeadOutputs:
        """The reward and termination heads alone, on pooled features (..., D) (as ``forward`` reads them)."""
        return head_outputs(self, pooled)
