"""Action embeddings built from a world's Gymnasium action space (via :class:`ActionSpec`).

Discrete -> an embedding table; MultiDiscrete -> a sum of one table per component;
MultiBinary (held keys) -> a linear map of the 0/1 vector; Box (continuous, e.g. mouse) -> an MLP
of the action rescaled to [-1, 1]. A learned *null* embedding stands for "no action" (an
episode's first frame, and classifier-free-guidance dropout during training).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from worldsim.spaces import ActionSpec


class ActionEncoder(nn.Module):
    low: torch.Tensor
    high: torch.Tensor

    def __init__(self, spec: ActionSpec, dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.null = nn.Parameter(torch.zeros(dim))
        if spec.kind == "discrete":
            self.table = nn.Embedding(spec.n, dim)
        elif spec.kind == "multi_discrete":
            self.tables = nn.ModuleList([nn.Embedding(n, dim) for n in spec.nvec])
        elif spec.kind == "multi_binary":
            self.linear = nn.Linear(spec.n, dim)
        else:
            self.mlp = nn.Sequential(nn.Linear(spec.n, dim), nn.SiLU(), nn.Linear(dim, dim))
            self.register_buffer("low", torch.tensor(spec.low, dtype=torch.float32))
            self.register_buffer("high", torch.tensor(spec.high, dtype=torch.float32))

    def forward(self, action: torch.Tensor, has_action: torch.Tensor) -> torch.Tensor:
        """action (B, T, *spec.per_action_shape); has_action (B, T) bool -> (B, T, D)."""
        s = self.spec
        if s.kind == "discrete":
            emb = self.table((action.long() - s.start).clamp(0, s.n - 1))
        elif s.kind == "multi_discrete":
            a = action.long()
            emb = sum(tab(a[..., i].clamp(0, n - 1)) for i, (tab, n) in enumerate(zip(self.tables, s.nvec)))
        elif s.kind == "multi_binary":
            emb = self.linear(action.to(self.null.dtype))
        else:
            low, high = self.low.float(), self.high.float()
            unit = 2 * (action.float() - low) / (high - low).clamp_min(1e-6) - 1  # (B, T, n) in [-1, 1]
            emb = self.mlp(unit.to(self.null.dtype))
        return torch.where(has_action.unsqueeze(-1), emb, self.null.to(emb.dtype))
