"""Just enough NIfTI-1 to read the server's heatmaps and labels without nibabel.

The server writes float heatmaps as NIfTI (``.nii``, or ``.nii.gz``). Read here: single-file
NIfTI-1 (``n+1``), either byte order, the numeric data types, ``scl_slope``/``scl_inter``
scaling, and the affine from the sform (else the qform, else the voxel sizes), as ITK does.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import ResultFormatError
from .volume import RAS_LPS, Volume

_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
_HEADER_BYTES = 348


def read_nifti(path: str | Path) -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file: data ``[I, J, K]`` (extra axes kept) and its LPS geometry."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ResultFormatError(f"cannot read NIfTI file '{path}': {exc}") from None
    if len(raw) < _HEADER_BYTES:
        raise ResultFormatError(f"'{path}' is too short to be a NIfTI file")
    endian = "<" if struct.unpack("<i", raw[:4])[0] == _HEADER_BYTES else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != _HEADER_BYTES or raw[344:347] not in (b"n+1", b"ni1"):
        raise ResultFormatError(f"'{path}' is not a NIfTI-1 file")
    if raw[344:347] == b"ni1":
        raise ResultFormatError(f"'{path}' is a two-file NIfTI (.hdr/.img), which is not supported")

    def unpack(fmt: str, offset: int) -> tuple:
        return struct.unpack_from(endian + fmt, raw, offset)

    dim = unpack("8h", 40)
    datatype = unpack("h", 70)[0]
    pixdim = unpack("8f", 76)
    vox_offset = int(unpack("f", 108)[0])
    slope, inter = unpack("2f", 112)
    qform_code, sform_code = unpack("2h", 252)
    code = _DTYPES.get(datatype)
    if code is None:
        raise ResultFormatError(f"NIfTI file '{path}' has unsupported data type {datatype}")
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ResultFormatError(f"NIfTI file '{path}' has invalid dimension count {ndim}")
    shape = tuple(int(d) for d in dim[1 : ndim + 1])
    dtype = np.dtype(endian + code if code[1] != "1" else code)
    count = int(np.prod(shape))
    if len(raw) < vox_offset + count * dtype.itemsize:
        raise ResultFormatError(f"NIfTI file '{path}' is truncated")
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=vox_offset).reshape(shape, order="F")
    data = data.astype(dtype.newbyteorder("="), copy=False)
    if slope not in (0.0, 1.0) or inter != 0.0:
        if math.isfinite(slope) and slope != 0.0:
            data = data.astype(np.float32) * np.float32(slope) + np.float32(inter)
    while data.ndim < 3:
        data = data[..., np.newaxis]

    if sform_code > 0:
        ras = np.eye(4)
        ras[0], ras[1], ras[2] = unpack("4f", 280), unpack("4f", 296), unpack("4f", 312)
    elif qform_code > 0:
        ras = _qform(unpack("3f", 256), unpack("3f", 268), pixdim)
    else:
        ras = np.diag([pixdim[1] or 1.0, pixdim[2] or 1.0, pixdim[3] or 1.0, 1.0])
    return Volume(data=data, ijk_to_lps=RAS_LPS @ ras)


def _qform(quaternion: tuple, offset: tuple, pixdim: tuple) -> np.ndarray:
    b, c, d = (float(v) for v in quaternion)
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    scales = np.array([pixdim[1] or 1.0, pixdim[2] or 1.0, (pixdim[3] or 1.0) * qfac])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * scales
    matrix[:3, 3] = offset
    return matrix
