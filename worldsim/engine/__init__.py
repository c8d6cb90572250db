"""The engine: rolling KV cache, few-step sampler, world checkpoints and batched sessions.

Surfaces (gym/, serve/, play/, client.py) use :class:`WorldModel` and :class:`Session`; the
cache and the sampler are for the engine itself and for training.
"""

from worldsim.engine.cache import CacheConfig, KVCache, MaskPolicy
from worldsim.engine.sampler import SamplerConfig, commit_context, commit_frame, denoise_frame
from worldsim.engine.session import Session, StepResult
from worldsim.engine.world import WorldConfig, WorldModel, default_device, default_dtype

__all__ = [
    "CacheConfig",
    "KVCache",
    "MaskPolicy",
    "SamplerConfig",
    "commit_context",
    "commit_frame",
    "denoise_frame",
    "Session",
    "StepResult",
    "WorldConfig",
    "WorldModel",
    "default_device",
    "default_dtype",
]
