"""Just enough NRRD to read and write labels, heatmaps and ``.seg.nrrd`` segmentations.

Slicer's own loaders read these files inside Slicer; this module lets the client (and its tests)
do the same without Slicer or pynrrd. Supported: attached data with ``raw`` or ``gzip``
encoding, the numeric pixel types, ``space``/``space directions``/``space origin`` geometry
(``none`` for a non-spatial list axis) and ``key:=value`` pairs, which is what Slicer and ITK
write. Detached data files and ``ascii``/``bzip2`` encodings raise :class:`ResultFormatError`.

Arrays are indexed like the file's axes, fastest axis first (``[i, j, k]``, as pynrrd's
default), so ``array[i, j, k]`` is voxel ``(i, j, k)`` of the geometry.
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from .errors import ResultFormatError
from .volume import Volume

_TYPES: dict[str, str] = {
    "signed char": "i1", "int8": "i1", "int8_t": "i1", "char": "i1",
    "uchar": "u1", "unsigned char": "u1", "uint8": "u1", "uint8_t": "u1",
    "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2", "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2", "uint16": "u2", "uint16_t": "u2",
    "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "longlong": "i8", "long long": "i8", "long long int": "i8", "int64": "i8", "int64_t": "i8",
    "ulonglong": "u8", "unsigned long long": "u8", "unsigned long long int": "u8", "uint64": "u8", "uint64_t": "u8",
    "float": "f4", "double": "f8",
}  # fmt: skip
_WRITE_TYPES = {"i1": "int8", "u1": "uint8", "i2": "int16", "u2": "uint16", "i4": "int32", "u4": "uint32",
                "i8": "int64", "u8": "uint64", "f4": "float", "f8": "double"}  # fmt: skip
_SPACE_TO_LPS = {
    "left-posterior-superior": np.diag([1.0, 1.0, 1.0]),
    "lps": np.diag([1.0, 1.0, 1.0]),
    "right-anterior-superior": np.diag([-1.0, -1.0, 1.0]),
    "ras": np.diag([-1.0, -1.0, 1.0]),
}


def read_nrrd(path: str | Path) -> Volume:
    """Read a ``.nrrd`` / ``.seg.nrrd`` file with attached data."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ResultFormatError(f"cannot read NRRD file '{path}': {exc.strerror or exc}") from None
    if not raw.startswith(b"NRRD000"):
        raise ResultFormatError(f"'{path}' is not a NRRD file (no NRRD magic)")
    end = raw.find(b"\n\n")
    if end < 0:
        raise ResultFormatError(f"'{path}' has no end of NRRD header")
    # Slicer writes segment names as UTF-8; ITK headers are plain ASCII, a subset of it.
    header_text = raw[:end].decode("utf-8", errors="replace").replace("\r", "")
    payload = raw[end + 2 :]
    fields, key_values = _parse_header(header_text)
    data = _decode_data(path, fields, payload)
    return Volume(data=data, ijk_to_lps=_geometry(fields), fields=fields, key_values=key_values)


def _parse_header(text: str) -> tuple[dict[str, str], dict[str, str]]:
    fields: dict[str, str] = {}
    key_values: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        if not line or line.startswith("#"):
            continue
        if ":=" in line:
            key, _, value = line.partition(":=")
            # NRRD escapes newlines and backslashes in key/value pairs.
            key_values[key] = value.replace("\\n", "\n").replace("\\\\", "\\")
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            raise ResultFormatError(f"malformed NRRD header line: {line!r}")
        fields[key.strip().lower()] = value.strip()
    return fields, key_values


def _decode_data(path: Path, fields: dict[str, str], payload: bytes) -> np.ndarray:
    for required in ("type", "sizes", "encoding"):
        if required not in fields:
            raise ResultFormatError(f"NRRD file '{path}' has no '{required}' field")
    if "data file" in fields or "datafile" in fields:
        raise ResultFormatError(f"NRRD file '{path}' has detached data, which is not supported")
    code = _TYPES.get(fields["type"].lower())
    if code is None:
        raise ResultFormatError(f"NRRD file '{path}' has unsupported pixel type '{fields['type']}'")
    endian = "<" if fields.get("endian", "little").lower() == "little" else ">"
    dtype = np.dtype(endian + code if code[1] != "1" else code)
    sizes = tuple(int(s) for s in fields["sizes"].split())
    encoding = fields["encoding"].lower()
    if encoding in ("gzip", "gz"):
        try:
            payload = gzip.decompress(payload)
        except (OSError, EOFError, zlib.error) as exc:
            raise ResultFormatError(f"NRRD file '{path}' has corrupt gzip data ({exc})") from None
    elif encoding != "raw":
        raise ResultFormatError(f"NRRD file '{path}' uses unsupported encoding '{encoding}'")
    expected = int(np.prod(sizes)) * dtype.itemsize
    if len(payload) < expected:
        raise ResultFormatError(f"NRRD file '{path}' is truncated: {len(payload)} of {expected} data bytes")
    # Line skip / byte skip are not used by Slicer or ITK; the data ends the file.
    data = np.frombuffer(payload[len(payload) - expected :], dtype=dtype)
    return data.reshape(sizes, order="F").astype(dtype.newbyteorder("="), copy=False)


def _vector(text: str) -> list[float] | None:
    text = text.strip()
    if text == "none":
        return None
    return [float(v) for v in text.strip("()").split(",")]


def _geometry(fields: dict[str, str]) -> np.ndarray:
    matrix = np.eye(4)
    space = fields.get("space", "left-posterior-superior").lower()
    to_lps = _SPACE_TO_LPS.get(space)
    if to_lps is None:
        raise ResultFormatError(f"unsupported NRRD space '{space}' (expected LPS or RAS)")
    directions = fields.get("space directions")
    if directions:
        tokens = re.findall(r"none|\([^)]*\)", directions)
        vectors = [v for v in (_vector(t) for t in tokens) if v is not None]
        columns = np.array(vectors, dtype=float).T  # one column per spatial axis
        dims = min(3, columns.shape[0])
        matrix[:dims, : columns.shape[1]] = columns[:dims]
    origin = fields.get("space origin")
    if origin:
        values = _vector(origin) or []
        matrix[: len(values), 3] = values
    matrix[:3, :] = to_lps @ matrix[:3, :]
    return matrix


def write_nrrd(
    path: str | Path,
    data: np.ndarray,
    ijk_to_lps: np.ndarray,
    key_values: dict[str, str] | None = None,
    list_axis: bool = False,
    compress: bool = True,
) -> Path:
    """Write ``data`` (``[I, J, K]``, or ``[L, I, J, K]`` with ``list_axis``) as a NRRD file.

    Args:
        ijk_to_lps: ``[4, 4]`` voxel -> LPS matrix of the spatial axes.
        key_values: ``key:=value`` pairs; values may not contain line breaks.
        list_axis: the first axis is a non-spatial list (``kinds: list domain domain domain``).
    """
    path = Path(path)
    data = np.asarray(data)
    code = data.dtype.str[1:]
    if code not in _WRITE_TYPES:
        raise ValueError(f"cannot write pixel type {data.dtype} to NRRD")
    spatial = data.ndim - (1 if list_axis else 0)
    if spatial < 1 or spatial > 3:
        raise ValueError(f"NRRD writer expects 1 to 3 spatial axes, got array of shape {data.shape}")
    matrix = np.asarray(ijk_to_lps, dtype=float)
    directions = ["(" + ",".join(_fmt(v) for v in matrix[:3, axis]) + ")" for axis in range(spatial)]
    kinds = ["domain"] * spatial
    if list_axis:
        directions.insert(0, "none")
        kinds.insert(0, "list")
    lines = [
        "NRRD0004",
        "# Complete NRRD file format specification at:",
        "# http://teem.sourceforge.net/nrrd/format.html",
        f"type: {_WRITE_TYPES[code]}",
        f"dimension: {data.ndim}",
        "space: left-posterior-superior",
        "sizes: " + " ".join(str(s) for s in data.shape),
        "space directions: " + " ".join(directions),
        "kinds: " + " ".join(kinds),
        "endian: little",
        f"encoding: {'gzip' if compress else 'raw'}",
        "space origin: (" + ",".join(_fmt(v) for v in matrix[:3, 3]) + ")",
    ]
    for key, value in (key_values or {}).items():
        if "\n" in key or "\n" in str(value) or ":=" in key:
            raise ValueError(f"NRRD key/value pair cannot hold line breaks or ':=' in the key: {key!r}")
        lines.append(f"{key}:={value}")
    payload = np.asarray(data, dtype=data.dtype.newbyteorder("<")).tobytes(order="F")
    if compress:
        # Level 1: masks are mostly zeros and compress about as well as at 9, several times faster.
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    path.write_bytes(("\n".join(lines) + "\n\n").encode("utf-8") + payload)
    return path


def _fmt(value: float) -> str:
    return repr(float(value))
