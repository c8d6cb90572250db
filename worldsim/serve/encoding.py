"""Frame encodings for the wire: raw RGB bytes (default), PNG (no extra dependency), JPEG (Pillow)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

RAW, PNG, JPEG = 0, 1, 2  # worldsim.v1.FrameEncoding values


def png_bytes(frame: np.ndarray) -> bytes:
    """A minimal, valid RGB PNG (8 bit, no filter) using only zlib."""
    h, w, _ = frame.shape
    raw = b"".join(b"\x00" + frame[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def jpeg_bytes(frame: np.ndarray, quality: int = 90) -> bytes:
    try:
        from PIL import Image
    except ImportError as e:
        raise ValueError("JPEG frames need Pillow on the server: pip install pillow") from e
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode(frame: np.ndarray, encoding: int) -> bytes:
    if encoding == RAW:
        return np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    if encoding == PNG:
        return png_bytes(frame)
    if encoding == JPEG:
        return jpeg_bytes(frame)
    raise ValueError(f"unknown frame encoding {encoding}")


def decode(data: bytes, shape: tuple[int, ...], encoding: int) -> np.ndarray:
    """Client side: bytes -> (H, W, 3) uint8."""
    if encoding == RAW:
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
    try:
        from PIL import Image
    except ImportError:
        if encoding == PNG:
            return _png_decode(data, shape)
        raise
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()


def _png_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Decode our own unfiltered PNGs (what :func:`png_bytes` writes)."""
    pos, idat = 8, b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        if tag == b"IDAT":
            idat += data[pos + 8 : pos + 8 + n]
        pos += 12 + n
    h, w = shape[0], shape[1]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 3)
    return rows[:, 1:].reshape(h, w, 3).copy()
