"""Colour images for the server: a Slicer vector volume written as an RGB PNG, standard library only.

A colour photograph (fundus, dermoscopy, a screenshot of a radiograph) loads in Slicer as a vector
volume, ``arrayFromVolume`` ``[K, J, I, C]`` with ``K = 1``. Slicer's own NIfTI export of such a
volume writes a 5-D vector image that the server does not read as a 2D picture, so the module
writes the pixels as a PNG, which the server reads as colour ``[H, W, 3]`` (rows ``J``, columns
``I``, the same grid as the volume, so the server's heatmaps land back on it unchanged).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import AFLocClientError


def color_pixels(slicer_array: np.ndarray) -> np.ndarray:
    """``[K, J, I, C]`` (``K = 1``, ``C`` 3 or 4) -> ``[J, I, 3]`` uint8 or uint16 (alpha dropped).

    Other integer or float types are stretched to 8 bits over their own min..max.

    Raises:
        AFLocClientError: not a single-slice RGB(A) array (the message names the shape).
    """
    array = np.asarray(slicer_array)
    if array.ndim != 4 or array.shape[0] != 1 or array.shape[3] not in (3, 4):
        raise AFLocClientError(
            f"a colour image must be one slice with 3 (RGB) or 4 (RGBA) components; this volume has "
            f"voxel array shape {array.shape} ([slices, rows, columns, components])"
        )
    rgb = array[0, :, :, :3]
    if rgb.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(rgb)
    values = rgb.astype(np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.nan_to_num((values - low) * scale), 0, 255).astype(np.uint8)


def write_png(path: str | Path, pixels: np.ndarray) -> Path:
    """Write ``[H, W, 3]`` uint8 or uint16 pixels as an RGB PNG (no filtering, zlib level 6)."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"write_png takes [H, W, 3] uint8/uint16 pixels, got {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    depth = 8 if pixels.dtype == np.uint8 else 16
    rows = pixels.astype(">u2") if depth == 16 else pixels
    raw = b"".join(b"\x00" + rows[r].tobytes() for r in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)  # colour type 2: truecolour
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path = Path(path)
    temp = path.with_name(path.name + ".part")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)
    return path
