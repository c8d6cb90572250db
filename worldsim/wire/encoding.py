"""Frames on the wire: raw RGB bytes (default), PNG (zlib only) or JPEG (needs Pillow).

Shared by the server (``encode``) and the client (``decode``); values are ``worldsim.v1.FrameEncoding``.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

UNSPECIFIED, RAW, PNG, JPEG = 0, 1, 2, 3
NAMES = {"raw": RAW, "png": PNG, "jpeg": JPEG}


class UnsupportedEncoding(ValueError):
    """This process cannot produce or read that encoding (JPEG without Pillow)."""


def canonical(encoding: int) -> int:
    """UNSPECIFIED means RAW; anything unknown is refused."""
    encoding = RAW if encoding == UNSPECIFIED else int(encoding)
    if encoding not in (RAW, PNG, JPEG):
        raise UnsupportedEncoding(f"unknown frame encoding {encoding}")
    return encoding


def available(encoding: int) -> bool:
    if canonical(encoding) != JPEG:
        return True
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def png_bytes(frame: np.ndarray, level: int = 1) -> bytes:
    """A valid 8-bit RGB PNG (filter 0 on every row), written with zlib alone."""
    h, w, _ = frame.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), np.ascontiguousarray(frame, np.uint8).reshape(h, w * 3)], 1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def jpeg_bytes(frame: np.ndarray, quality: int = 90) -> bytes:
    try:
        from PIL import Image
    except ImportError as e:
        raise UnsupportedEncoding("JPEG frames need Pillow: pip install pillow") from e
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame, np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode(frame: np.ndarray, encoding: int, jpeg_quality: int = 0) -> bytes:
    """(H, W, 3) uint8 -> bytes in ``encoding``."""
    encoding = canonical(encoding)
    if encoding == RAW:
        return np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    if encoding == PNG:
        return png_bytes(frame)
    return jpeg_bytes(frame, quality=jpeg_quality or 90)


def decode(data: bytes, shape: tuple[int, ...], encoding: int) -> np.ndarray:
    """bytes -> (H, W, 3) uint8 (a writable copy)."""
    encoding = canonical(encoding)
    if encoding == RAW:
        expected = int(np.prod(shape))
        if len(data) != expected:
            raise ValueError(f"raw frame of shape {tuple(shape)} needs {expected} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
    if encoding == PNG:
        out = _png_decode_unfiltered(data, shape)
        if out is not None:
            return out
    try:
        from PIL import Image
    except ImportError as e:
        raise UnsupportedEncoding("decoding JPEG frames needs Pillow: pip install pillow") from e
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()


def _png_decode_unfiltered(data: bytes, shape: tuple[int, ...]) -> np.ndarray | None:
    """Decode an 8-bit RGB PNG whose rows all use filter 0 (what :func:`png_bytes` writes); else None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, ihdr = 8, [], b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        if tag == b"IHDR":
            ihdr = data[pos + 8 : pos + 8 + n]
        elif tag == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + n])
        pos += 12 + n
    w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if (depth, color, interlace) != (8, 2, 0):
        return None
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * 3)
    if rows[:, 0].any():
        return None
    return rows[:, 1:].reshape(h, w, 3).copy()
