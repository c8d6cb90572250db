"""Recording played frames to GIF (always) or MP4 (imageio + an ffmpeg backend).

GIF needs only imageio (Pillow). MP4 needs ``imageio-ffmpeg`` (a bundled ffmpeg binary) or ``av``
(PyAV); :func:`mp4_available` says whether either is installed. Frames are upscaled with nearest
neighbour (``scale``) so the pixels stay sharp; MP4 frames are streamed to the encoder as they come
(and padded to a multiple of 16 pixels, as H.264 wants), GIF frames are kept at model resolution
until :meth:`Recorder.close`.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".gif", ".mp4")


class RecorderError(RuntimeError):
    """The video cannot be written (unknown format, or no MP4 backend installed)."""


def mp4_backend() -> str | None:
    """``"ffmpeg"`` (imageio-ffmpeg), ``"pyav"`` (av) or None."""
    if importlib.util.find_spec("imageio_ffmpeg") is not None:
        return "ffmpeg"
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    return None


def mp4_available() -> bool:
    return mp4_backend() is not None


def default_video_suffix() -> str:
    """``.mp4`` when an MP4 backend is installed, else ``.gif``."""
    return ".mp4" if mp4_available() else ".gif"


def check_video_path(path: str | Path) -> Path:
    """Fail early (before playing) on a format that cannot be written here."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise RecorderError(f"{p}: record to .gif or .mp4, not {suffix or 'no suffix'!r}")
    if importlib.util.find_spec("imageio") is None:
        raise RecorderError("recording needs imageio: pip install 'worldsim[video]'")
    if suffix == ".mp4" and not mp4_available():
        raise RecorderError(
            f"{p}: writing MP4 needs imageio-ffmpeg (pip install imageio-ffmpeg) or av; record a .gif instead"
        )
    return p


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame if scale == 1 else np.repeat(np.repeat(frame, scale, 0), scale, 1)


def _pad16(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    ph, pw = -h % 16, -w % 16
    return np.pad(frame, ((0, ph), (0, pw), (0, 0))) if ph or pw else frame


class Recorder:
    """``rec = Recorder("out.mp4", fps=25); rec.add(frame); ...; rec.close()`` -> the path."""

    def __init__(self, path: str | Path, fps: float, scale: int = 4) -> None:
        self.path = check_video_path(path)
        self.fps = float(fps) if fps and fps > 0 else 15.0
        self.scale = max(1, int(scale))
        self.kind = self.path.suffix.lower()[1:]
        self.n_frames = 0
        self._frames: list[np.ndarray] = []  # GIF: model-resolution frames until close()
        self._writer: Any = None  # MP4: the open encoder
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _open_mp4(self) -> Any:
        backend = mp4_backend()
        if backend == "ffmpeg":
            import imageio.v2 as iio2

            return iio2.get_writer(
                self.path, format="FFMPEG", fps=self.fps, codec="libx264", quality=8, macro_block_size=16
            )
        import imageio.v3 as iio

        writer = iio.imopen(self.path, "w", plugin="pyav")
        writer.init_video_stream("libx264", fps=round(self.fps))
        return writer

    def add(self, frame: np.ndarray) -> None:
        if self._closed:
            raise RecorderError("this recording is closed")
        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self.kind == "gif":
            self._frames.append(frame.copy())
        else:
            if self._writer is None:
                self._writer = self._open_mp4()
            big = _pad16(upscale(frame, self.scale))
            if hasattr(self._writer, "append_data"):
                self._writer.append_data(big)
            else:
                self._writer.write_frame(big)
        self.n_frames += 1

    def close(self) -> Path | None:
        """Finish the file; the path, or None if no frame was added (nothing is written)."""
        if self._closed:
            return self.path if self.n_frames else None
        self._closed = True
        if self.n_frames == 0:
            return None
        if self.kind == "gif":
            import imageio.v3 as iio

            frames = np.stack([upscale(f, self.scale) for f in self._frames])
            iio.imwrite(self.path, frames, duration=1000.0 / self.fps, loop=0)
            self._frames = []
        else:
            self._writer.close()
        log.info("wrote %d frames to %s", self.n_frames, self.path)
        return self.path
