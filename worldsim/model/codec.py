"""Frame codec: 64x64x3 uint8 frames <-> a small latent grid (8x8xC by default: 64 tokens).

A plain convolutional autoencoder. The decoder runs once for every generated frame, so it is
kept cheap (a few convs, nearest upsampling). Latents are normalised per channel with
statistics measured on the training frames (``latent_mean`` / ``latent_std`` buffers), so the
diffusion model sees roughly unit-variance inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class CodecConfig:
    image_size: int = 64
    """Frames are image_size x image_size x 3."""
    latent_channels: int = 16
    """Channels C of the latent grid."""
    channels: tuple[int, ...] = (32, 64, 128)
    """Width of each down-sampling level; len(channels) levels halve the size each."""
    decoder_channels: tuple[int, ...] = (64, 32, 16)
    """Width of each up-sampling level of the (cheap) decoder."""

    @property
    def latent_size(self) -> int:
        return self.image_size // 2 ** len(self.channels)

    @property
    def tokens(self) -> int:
        return self.latent_size**2


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(8, ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm(x)))
        return x + self.conv2(F.silu(h))


class FrameCodec(nn.Module):
    """uint8 frames (..., 64, 64, 3) <-> normalised latents (..., C, 8, 8)."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        enc: list[nn.Module] = [nn.Conv2d(3, cfg.channels[0], 3, padding=1)]
        ch = cfg.channels[0]
        for out_ch in cfg.channels:
            enc += [_ResBlock(ch), nn.Conv2d(ch, out_ch, 4, stride=2, padding=1)]
            ch = out_ch
        enc += [_ResBlock(ch), nn.GroupNorm(8, ch), nn.SiLU(), nn.Conv2d(ch, cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, cfg.decoder_channels[0], 3, padding=1), nn.SiLU()]
        ch = cfg.decoder_channels[0]
        for out_ch in cfg.decoder_channels:
            dec += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(ch, out_ch, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(out_ch, out_ch, 3, padding=1),
                nn.SiLU(),
            ]
            ch = out_ch
        dec += [nn.Conv2d(ch, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    # -- pixels <-> [-1, 1]
    @staticmethod
    def to_unit(frames: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
        return frames.movedim(-1, -3).float() / 127.5 - 1.0

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3)."""
        return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).movedim(-3, -1)

    def encode_unit(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (N, 3, H, W) -> raw (unnormalised) latents (N, C, h, w)."""
        return self.encoder(x)

    def decode_unit(self, z: torch.Tensor) -> torch.Tensor:
        """raw latents (N, C, h, w) -> [-1, 1] images (N, 3, H, W) (not clamped)."""
        return self.decoder(z)

    def _norm_shape(self) -> tuple[int, int, int]:
        return (self.cfg.latent_channels, 1, 1)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (*B, H, W, 3) -> normalised latents (*B, C, h, w)."""
        lead = frames.shape[:-3]
        x = self.to_unit(frames.reshape(-1, *frames.shape[-3:])).to(self.latent_mean.dtype)
        z = self.encode_unit(x)
        z = (z - self.latent_mean.view(self._norm_shape())) / self.latent_std.view(self._norm_shape())
        return z.reshape(*lead, *z.shape[1:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latents (*B, C, h, w) -> uint8 frames (*B, H, W, 3)."""
        lead = z.shape[:-3]
        z = z.reshape(-1, *z.shape[-3:]).to(self.latent_mean.dtype)
        z = z * self.latent_std.view(self._norm_shape()) + self.latent_mean.view(self._norm_shape())
        return self.to_uint8(self.decode_unit(z)).reshape(*lead, *self._frame_shape())

    def _frame_shape(self) -> tuple[int, int, int]:
        return (self.cfg.image_size, self.cfg.image_size, 3)
