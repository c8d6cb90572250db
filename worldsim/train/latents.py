"""Episodes encoded by the codec once, cached on disk by what they are made of.

Every denoiser stage trains on codec latents, and encoding is not free: CartPole's 100k recorded
(and mirrored) frames take minutes on 2 CPU cores, paid again by every stage, every ``--resume``
and every fine-tune round. :func:`encode_episodes` encodes all frames in large batches and keeps
the result in ``<WORLDSIM_CACHE or ~/.cache/worldsim>/latents/<key>.npy``, where the key hashes
the codec's weights, the frames themselves, the device type and torch's version: the same data
through the same codec is read back (bit-identical) in about a second; any change encodes anew.

``WORLDSIM_LATENT_CACHE=0`` turns the cache off. The newest :data:`KEEP` files are kept; a file
that cannot be read or has the wrong size is encoded again (one warning), never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from worldsim.engine.compiled import cache_root, env_flag
from worldsim.train.data import AlignedEpisode

log = logging.getLogger(__name__)

ENV_VAR = "WORLDSIM_LATENT_CACHE"
KEEP = 6
"""Cached latent files kept (the newest by modification time)."""


def cache_enabled() -> bool:
    return env_flag(ENV_VAR, True)


def latent_key(codec: torch.nn.Module, eps: list[AlignedEpisode], device: torch.device) -> str:
    """A hash of the codec's weights, every episode's frames (and lengths), the device type and torch."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{torch.__version__}|{device.type}|{len(eps)}".encode())
    for name, t in sorted(codec.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for e in eps:
        h.update(str(e.frames.shape).encode())
        h.update(np.ascontiguousarray(e.frames).data)
    return h.hexdigest()


@torch.no_grad()
def _encode_all(codec: torch.nn.Module, frames: np.ndarray, device: torch.device, chunk: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 latents (N, C, h, w), ``chunk`` frames a call."""
    out = [
        codec.encode(torch.from_numpy(frames[i : i + chunk]).to(device)).float().cpu().numpy()  # type: ignore[operator]
        for i in range(0, len(frames), chunk)
    ]
    return np.concatenate(out)


def _read(path: Path, n: int) -> np.ndarray | None:
    try:
        lat = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("cached latents %s unreadable (%s): encoding again", path, e)
        return None
    if lat.ndim != 4 or len(lat) != n or lat.dtype != np.float32:
        log.warning("cached latents %s have shape %s, expected %d frames: encoding again", path, lat.shape, n)
        return None
    return lat


def _write(path: Path, lat: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, lat, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache latents at %s (%s); training goes on", path, e)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in sorted(path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)


def encode_episodes(
    codec: torch.nn.Module, eps: list[AlignedEpisode], device: torch.device, chunk: int = 512
) -> list[AlignedEpisode]:
    """Replace frames by normalised codec latents (float32, on CPU), from the cache when it has them."""
    if not eps:
        return []
    lengths = [len(e.frames) for e in eps]
    path = None
    lat = None
    if cache_enabled():
        path = cache_root() / "latents" / f"{latent_key(codec, eps, device)}.npy"
        lat = _read(path, sum(lengths)) if path.exists() else None
        if lat is not None:
            log.info("latents of %d frames from the cache (%s)", len(lat), path)
            path.touch()
    if lat is None:
        log.info("encoding %d frames of %d episodes", sum(lengths), len(eps))
        lat = _encode_all(codec, np.concatenate([e.frames for e in eps]), device, chunk)
        if path is not None:
            _write(path, lat)
    parts = np.split(lat, np.cumsum(lengths)[:-1])
    return [AlignedEpisode(z, e.actions, e.has_action, e.rewards, e.terminated, e.free) for z, e in zip(parts, eps)]
