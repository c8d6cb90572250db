"""The engine: rolling KV cache, few-step sampler, world checkpoints and batched sessions."""

from worldsim.engine.cache import CacheConfig, KVCache
from worldsim.engine.sampler import SamplerConfig, commit_frame, denoise_frame
from worldsim.engine.world import Session, StepResult, WorldConfig, WorldModel, default_device, default_dtype

__all__ = [
    "CacheConfig",
    "KVCache",
    "SamplerConfig",
    "commit_frame",
    "denoise_frame",
    "Session",
    "StepResult",
    "WorldConfig",
    "WorldModel",
    "default_device",
    "default_dtype",
]
