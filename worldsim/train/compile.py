"""The denoiser's training forward and backward through ``torch.compile`` (``worldsim train --compile``).

Training runs the same full-clip forward (and its backward) thousands of times at one shape (the
stage's batch and clip length), so inductor's fused kernels (the norms, adaLN modulations, RoPE
and GELU that dominate the eager profile on CPU) pay back a one-off compile of about a minute on
2 cores. The compiled callable shares the module's parameters, so optimizers, EMA, checkpoints
and the exported world see the same tensors; nothing is saved differently.

- **Chosen at the entry point**: ``--compile`` / ``--no-compile`` on ``worldsim train``, else
  ``WORLDSIM_TRAIN_COMPILE`` (``1`` on), else off (measured gain: see docs/performance.md).
- **Falls back**: a forward that fails to compile logs one warning and runs eager from then on.
- **What is not compiled**: Self Forcing's rollout (frame by frame through the KV cache object,
  like the engine's eager path); its teacher, critic and head forwards over whole clips are.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from worldsim.engine.compiled import env_flag

log = logging.getLogger(__name__)

ENV_VAR = "WORLDSIM_TRAIN_COMPILE"


def resolve(requested: bool | None) -> bool:
    """``requested`` if given, else ``WORLDSIM_TRAIN_COMPILE`` (``1`` on, ``0`` off), else off."""
    if requested is not None:
        return requested
    return env_flag(ENV_VAR, False)


class TrainForward:
    """Calls ``module`` (its ``forward``) compiled, or as it is; one warning and eager on a failure.

    ``TrainForward(model, enabled)(x, t, action, has_action)`` returns what ``model(...)`` returns.
    """

    def __init__(self, module: torch.nn.Module, enabled: bool) -> None:
        self.module = module
        self.compiled: Any = torch.compile(module, dynamic=False) if enabled else None

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure: train on, eager
            log.warning("torch.compile failed (%s: %s); training continues eager", type(e).__name__, e)
            self.compiled = None
            return self.module(*args, **kwargs)
