"""The neural world's networks: frame codec, causal denoiser, action embeddings."""

from worldsim.model.codec import CodecConfig, FrameCodec
from worldsim.model.denoiser import AttnContext, CausalDenoiser, DenoiserConfig, DenoiserOutput

__all__ = ["CodecConfig", "FrameCodec", "CausalDenoiser", "DenoiserConfig", "DenoiserOutput", "AttnContext"]
