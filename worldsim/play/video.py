"""Recording played frames to GIF or MP4 (imageio; MP4 needs imageio-ffmpeg)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def write_video(path: str | Path, frames: list[np.ndarray], fps: int) -> Path:
    """Write RGB frames (H, W, 3) uint8; the suffix picks the format (.gif, .mp4)."""
    p = Path(path)
    if not frames:
        raise ValueError("no frames to write")
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise RuntimeError("recording video needs imageio: pip install 'worldsim[video]'") from e
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".gif":
        iio.imwrite(p, np.stack(frames), duration=1000 / fps, loop=0)
    else:
        try:
            iio.imwrite(p, np.stack(frames), fps=fps, codec="libx264", plugin="pyav")
        except Exception as e:
            raise RuntimeError(f"cannot write {p.suffix} video ({e}); use a .gif path, or pip install av") from e
    log.info("wrote %d frames to %s", len(frames), p)
    return p
