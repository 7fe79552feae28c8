"""Read 2D medical images into float pixels and letterbox them with an exactly invertible geometry.

``read_image`` turns DICOM (CR/DX and other single-frame images), PNG, JPEG, other Pillow formats,
NIfTI and ``.npy`` files into a :class:`LoadedImage` whose ``pixels`` are float32 in ``[0, 1]``:
``[H, W]`` for grayscale, ``[H, W, 3]`` for colour (fundus, histopathology). Every problem a user
can cause (missing, empty, corrupt or truncated file, no pixel data, a volume, an image too small or
too large) raises :class:`~afloc_models.errors.ImageReadError`; decoder tracebacks never escape.

``letterbox`` fits an image into a ``size x size`` square (long side resized to ``size``, short side
padded with zeros on both sides) and returns a :class:`Letterbox` that maps any map computed on that
square, at any resolution, back onto the original pixel grid.

Intensity conventions (the model sees the image the way a reader sees it in a viewer):

- DICOM: Modality LUT (LUT sequence or rescale slope/intercept), then the first VOI LUT or
  window centre/width; without either, a robust 0.5-99.5 percentile stretch (the stored-bits range
  is often far wider than the values actually used, which would leave the image nearly black).
  MONOCHROME1 is inverted so that dense tissue is bright. YBR colour is converted to RGB.
- PNG/JPEG/TIFF: divided by the type's maximum (255 or 65535); 16-bit colour PNGs are reduced to
  8 bits by Pillow. RGBA/LA drop alpha, grayscale palettes become grayscale, EXIF orientation is
  not applied (ITK, hence MONAI Label, does not apply it either, and labels must align).
- NIfTI and ``.npy``: ``uint8`` divided by 255, booleans as 0/1, floats already in ``[0, 1]`` kept,
  anything else robustly stretched like DICOM without a window.

This module imports numpy, Pillow, pydicom and nibabel only (never torch) so that command-line tools
and the server can import it cheaply; pydicom and nibabel are imported on first use.
"""

from __future__ import annotations

import gzip
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from afloc_models.errors import ImageReadError

__all__ = [
    "MAX_DECODED_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_INFLATED_DICOM_BYTES",
    "MAX_IMAGE_SIDE",
    "MIN_IMAGE_SIDE",
    "LoadedImage",
    "Letterbox",
    "letterbox",
    "read_image",
    "to_grayscale",
]

# A side longer than this, or more pixels than MAX_IMAGE_PIXELS (8192 x 8192; the largest
# radiograph detectors are about 4300 x 4300), is refused before decoding: these limits, with
# MAX_DECODED_BYTES below, bound what one image may cost in memory (its float32 copy: 256 MiB).
MAX_IMAGE_SIDE = 16384
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
# Bytes the decoded (stored) pixel data may take, computed from the header before decoding
# (rows x columns x frames x samples x bytes per sample), and the most a deflated DICOM dataset
# may inflate to (checked by streaming, before pydicom inflates it whole in memory).
MAX_DECODED_BYTES = 256 * 1024 * 1024
MAX_INFLATED_DICOM_BYTES = MAX_DECODED_BYTES + 16 * 1024 * 1024
# Below this the letterbox and the encoders' downsampling have nothing left to work with.
MIN_IMAGE_SIDE = 16

# Percentiles of the robust stretch used when a file carries no display window.
_STRETCH_PERCENTILES = (0.5, 99.5)

_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded 2D image.

    Attributes:
        pixels: float32 array in ``[0, 1]``, ``[H, W]`` (grayscale) or ``[H, W, 3]`` (RGB).
        spacing: physical pixel size in mm as ``(row spacing, column spacing)``, or ``None`` when
            the file does not state a usable one (PNG and JPEG never do).
        source: the format it was read as: ``"dicom"``, ``"png"``, ``"jpeg"``, ``"nifti"``,
            ``"npy"`` or another Pillow format name in lower case (``"tiff"``, ``"bmp"``).
        path: the file that was read.
    """

    pixels: np.ndarray
    spacing: tuple[float, float] | None
    source: str
    path: Path

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)`` of the original pixel grid."""
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @property
    def is_color(self) -> bool:
        return self.pixels.ndim == 3


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def read_image(path: str | Path, jpeg_min_side: Optional[int] = None) -> LoadedImage:
    """Read one 2D image file into float32 pixels in ``[0, 1]``.

    ``jpeg_min_side``: for JPEG files only, decode at the smallest DCT scale (1/2, 1/4 or 1/8)
    that keeps both sides at least this many pixels (Pillow's draft mode). Training sets this
    to its letterbox size: a 2,000-pixel radiograph then decodes at 500 pixels, several times
    faster, and is resized less. Size limits are checked on the file's full size.

    The format is recognised from the file's signature first and its extension second, so a
    DICOM file named ``image`` or a PNG named ``x.dcm`` still reads.

    Raises:
        ImageReadError: the file is missing, a directory, empty, corrupt or truncated, has no
            pixel data, holds more than one slice/frame, is smaller than ``MIN_IMAGE_SIDE`` or
            larger than ``MAX_IMAGE_SIDE`` / ``MAX_IMAGE_PIXELS``, or needs a decoder that is
            not installed.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")

    kind = _sniff_format(path, head)
    try:
        if kind == "jpeg" and jpeg_min_side:
            image = _read_pillow(path, draft_side=int(jpeg_min_side))
        else:
            image = _READERS[kind](path)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(path, "not enough memory to decode the image") from None
    except Exception as exc:  # decoder internals must never reach the user as a traceback
        reason = f"corrupt or unsupported {kind} file ({_describe(exc)})"
        raise ImageReadError(path, reason) from None

    pixels = np.clip(np.nan_to_num(image.pixels, nan=0.0), 0.0, 1.0).astype(np.float32, copy=False)
    return LoadedImage(pixels=pixels, spacing=image.spacing, source=image.source, path=path)


def to_grayscale(pixels: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` RGB -> ``[H, W]`` luma (ITU-R BT.601 weights); ``[H, W]`` is returned as is."""
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected [H, W] or [H, W, 3] pixels, got shape {pixels.shape}")
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (pixels.astype(np.float32, copy=False) @ weights).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Format recognition and shared checks
# --------------------------------------------------------------------------------------------


def _sniff_format(path: Path, head: bytes) -> str:
    name = path.name.lower()
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or name.endswith(_NIFTI_SUFFIXES):
        return "nifti"
    if head.startswith(b"\x1f\x8b") and name.endswith(".gz"):
        return "nifti"
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return "dicom"  # DICOM without the 128-byte preamble: pydicom reads it with force=True
    if path.suffix.lower() == ".npy":
        return "npy"
    # Anything else goes to Pillow (TIFF, BMP, GIF, ...); it fails cleanly on non-images.
    return "pillow"


def _check_size(path: Path, rows: int, cols: int) -> None:
    """Refuse images too small to localize in, or too large to decode safely, before decoding."""
    if rows < MIN_IMAGE_SIDE or cols < MIN_IMAGE_SIDE:
        raise ImageReadError(
            path,
            f"image is {rows}x{cols} pixels; at least {MIN_IMAGE_SIDE} pixels a side are needed",
        )
    if max(rows, cols) > MAX_IMAGE_SIDE:
        raise ImageReadError(
            path,
            f"image is {rows}x{cols} pixels; the limit is {MAX_IMAGE_SIDE} pixels a side "
            "(MAX_IMAGE_SIDE)",
        )
    if rows * cols > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            path,
            f"image is {rows}x{cols} = {rows * cols} pixels; the limit is {MAX_IMAGE_PIXELS} "
            "pixels (MAX_IMAGE_PIXELS)",
        )


def _check_decoded_bytes(path: Path, nbytes: int) -> None:
    """Refuse pixel data whose decoded size (from the header) exceeds :data:`MAX_DECODED_BYTES`."""
    if nbytes > MAX_DECODED_BYTES:
        raise ImageReadError(
            path,
            f"decoded pixel data would take {nbytes} bytes; the limit is {MAX_DECODED_BYTES} bytes "
            "(MAX_DECODED_BYTES)",
        )


_DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
_INFLATE_CHUNK = 1 << 20


def _check_deflated_size(path: Path) -> None:
    """For a Deflated Explicit VR DICOM, count what the dataset inflates to before pydicom does.

    pydicom inflates the whole dataset in memory while reading; a few hundred kilobytes can
    inflate to gigabytes. The stream is inflated here chunk by chunk (constant memory) and the
    file refused once it passes :data:`MAX_INFLATED_DICOM_BYTES`. Files that are not deflated, or
    whose header cannot be read, are left to the normal reader.
    """
    import zlib

    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        with path.open("rb") as handle:
            read_preamble(handle, True)
            meta = _read_file_meta_info(handle)
            if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED_SYNTAX:
                return
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            total = 0
            while True:
                chunk = handle.read(_INFLATE_CHUNK)
                if not chunk:
                    break
                while chunk:
                    total += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                    chunk = inflater.unconsumed_tail
                    if total > MAX_INFLATED_DICOM_BYTES:
                        raise ImageReadError(
                            path,
                            f"deflated DICOM dataset inflates to more than {MAX_INFLATED_DICOM_BYTES} "
                            "bytes (MAX_INFLATED_DICOM_BYTES); refused before decoding",
                        )
                if inflater.eof:
                    break
    except ImageReadError:
        raise
    except Exception:  # unreadable header or stream: the normal reader reports it
        return


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _robust_stretch(values: np.ndarray) -> np.ndarray:
    """Map values to ``[0, 1]`` between their 0.5th and 99.5th percentiles (NaN ignored).

    Falls back to the full min-max range when the percentiles coincide (a small bright object on
    a flat background), and to zeros for a constant image.
    """
    values = values.astype(np.float64, copy=False)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = np.percentile(finite, _STRETCH_PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _scale_array(values: np.ndarray) -> np.ndarray:
    """Intensity mapping for formats without display metadata (NIfTI, ``.npy``)."""
    if values.dtype == np.bool_:
        return values.astype(np.float32)
    if values.dtype == np.uint8:
        return values.astype(np.float32) / 255.0
    if np.issubdtype(values.dtype, np.floating):
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return values.astype(np.float32)
    return _robust_stretch(values)


@dataclass(frozen=True, eq=False)
class _Decoded:
    pixels: np.ndarray
    spacing: tuple[float, float] | None
    source: str


def _as_image_array(path: Path, data: np.ndarray, what: str) -> np.ndarray:
    """Squeeze singleton axes beyond the first two; refuse real volumes and odd channel counts.

    Accepts ``[H, W]``, ``[H, W, 1]`` (-> ``[H, W]``), ``[H, W, 3]`` and ``[H, W, 4]`` (alpha
    dropped). ``what`` names the layout in error messages.
    """
    shape = data.shape
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        return data
    if data.ndim == 3 and data.shape[2] in (3, 4):
        return data[..., :3]
    if data.ndim >= 3:
        raise ImageReadError(
            path,
            f"{what} of shape {shape} is a volume or series with more than one slice; "
            "only single 2D images are supported",
        )
    raise ImageReadError(path, f"{what} of shape {shape} is not a 2D image")


# --------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------


def _read_dicom(path: Path) -> _Decoded:
    import pydicom
    from pydicom.errors import InvalidDicomError

    _check_deflated_size(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(str(path), force=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, struct.error) as exc:
            raise ImageReadError(path, f"not a readable DICOM file ({_describe(exc)})") from None
    truncated = any("end of file" in str(w.message).lower() for w in caught)

    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if truncated:
            raise ImageReadError(path, "DICOM file is truncated: the pixel data is incomplete")
        if "SOPClassUID" not in ds and "Rows" not in ds:
            raise ImageReadError(path, "not a DICOM file (no DICOM header found)")
        sop = getattr(ds.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise ImageReadError(path, f"DICOM file has no pixel data ({sop})")

    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    _check_size(path, rows, cols)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageReadError(
            path,
            f"DICOM holds {frames} frames (a volume or cine); only single 2D images are supported",
        )
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    _check_decoded_bytes(path, rows * cols * max(frames, 1) * max(samples, 1) * max(1, (bits + 7) // 8))
    _ensure_transfer_syntax(ds)
    _require_decoder(path, ds)

    try:
        with warnings.catch_warnings():
            # Decoder chatter (e.g. Bits Stored vs JPEG 2000 precision) is not actionable here.
            warnings.simplefilter("ignore", UserWarning)
            stored = ds.pixel_array
    except Exception as exc:
        reason = _describe(exc)
        if truncated or "length of the pixel data" in str(exc).lower():
            reason = f"DICOM pixel data is truncated or incomplete ({reason})"
        raise ImageReadError(path, reason) from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper().strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3 or photometric in ("RGB", "PALETTE COLOR") or photometric.startswith("YBR"):
        pixels = _dicom_color(path, ds, stored, photometric)
    else:
        pixels = _dicom_grayscale(path, ds, _as_image_array(path, stored, "DICOM pixel data"))
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
    return _Decoded(pixels=pixels, spacing=_dicom_spacing(path, ds), source="dicom")


def _ensure_transfer_syntax(ds: Any) -> None:
    """Give files without File Meta Information (no preamble) the syntax they were parsed with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in meta:
        return
    if ds.is_implicit_VR:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif ds.is_little_endian:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRBigEndian


def _require_decoder(path: Path, ds: Any) -> None:
    """Fail with a clear message when the transfer syntax needs a decoder that is not installed."""
    import pydicom.config

    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax is None or not getattr(syntax, "is_compressed", False):
        return
    handlers = pydicom.config.pixel_data_handlers
    if any(h.supports_transfer_syntax(syntax) and h.is_available() for h in handlers):
        return
    raise ImageReadError(
        path,
        f"no decoder installed for the DICOM transfer syntax '{syntax.name}' ({syntax}); install "
        "one of pylibjpeg with pylibjpeg-libjpeg / pylibjpeg-openjpeg, or python-gdcm",
    )


def _dicom_grayscale(path: Path, ds: Any, stored: np.ndarray) -> np.ndarray:
    """Stored values ``[H, W]`` -> display values in ``[0, 1]`` (before MONOCHROME1 inversion)."""
    from pydicom.pixel_data_handlers.util import apply_modality_lut

    values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)

    voi_sequence = ds.get("VOILUTSequence")
    if voi_sequence:
        return _apply_voi_table(values, voi_sequence[0])

    center, width = _first_value(ds.get("WindowCenter")), _first_value(ds.get("WindowWidth"))
    if center is not None and width is not None:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper().strip()
        windowed = _apply_window(values, center, width, function)
        if windowed is not None:
            return windowed
        warnings.warn(
            f"{path}: ignoring unusable window centre/width ({center}, {width}); "
            "using a percentile stretch instead",
            stacklevel=4,
        )
    return _robust_stretch(values)


def _first_value(element: Any) -> float | None:
    """WindowCenter/WindowWidth may be multi-valued; the first pair is the default view."""
    if isinstance(element, Sequence) and not isinstance(element, (str, bytes)):
        element = element[0] if len(element) else None
    if element is None or element == "":
        return None
    try:
        value = float(element)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _apply_window(
    values: np.ndarray, center: float, width: float, function: str
) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing, with the output range scaled to ``[0, 1]``.

    Returns ``None`` for a width the standard does not allow (LINEAR needs ``width >= 1``, the
    others ``width > 0``).
    """
    if function == "SIGMOID":
        if width <= 0:
            return None
        return (1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((values - center) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if width < 1:
        return None
    if width == 1:  # a pure threshold in the standard's formula
        return (values > center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0).astype(np.float32)


def _apply_voi_table(values: np.ndarray, item: Any) -> np.ndarray:
    """Look values up in a VOI LUT table and scale its output range to ``[0, 1]``."""
    descriptor = [int(v) for v in item.LUTDescriptor]
    entries = descriptor[0] or 65536  # 0 means 2**16 entries
    first = descriptor[1]
    raw = item.LUTData
    if isinstance(raw, (bytes, bytearray)):
        table = np.frombuffer(raw, dtype=np.uint16 if descriptor[2] > 8 else np.uint8)
    else:
        table = np.asarray(raw if isinstance(raw, (list, tuple)) else [raw], dtype=np.float64)
    table = table[:entries].astype(np.float64)
    index = np.clip(np.rint(values - first), 0, table.size - 1).astype(np.intp)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return ((table[index] - low) / (high - low)).astype(np.float32)


def _dicom_color(path: Path, ds: Any, stored: np.ndarray, photometric: str) -> np.ndarray:
    from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
        max_value = float(2 ** (16 if bits > 8 else 8) - 1)
    else:
        rgb = stored
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            # pydicom 2.x leaves JPEG and uncompressed YBR data as YCbCr.
            rgb = convert_color_space(rgb, photometric, "RGB")
        bits = int(ds.get("BitsStored", 8) or 8)
        max_value = float(2**bits - 1)
    rgb = _as_image_array(path, rgb, "DICOM colour pixel data")
    if rgb.ndim != 3:
        raise ImageReadError(
            path, f"DICOM colour pixel data has shape {rgb.shape}, expected [H, W, 3]"
        )
    return np.clip(rgb.astype(np.float32) / max_value, 0.0, 1.0)


def _dicom_spacing(path: Path, ds: Any) -> tuple[float, float] | None:
    """``(row, column)`` spacing in mm from PixelSpacing, else ImagerPixelSpacing.

    PixelSpacing is preferred because, when present on CR/DX, it is already corrected for
    geometric magnification. A zero, negative or malformed value (real CR files carry
    ``0.000\\0.000``) is skipped with a warning that names the file.
    """
    rejected: list[str] = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        element = ds.get(keyword)
        if element is None or element == "":
            continue
        is_multi = isinstance(element, Sequence) and not isinstance(element, str)
        items = element if is_multi else [element]
        try:
            values = [float(v) for v in items]
        except (TypeError, ValueError):
            values = []
        if len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values):
            return float(values[0]), float(values[1])
        rejected.append(f"{keyword}={element!r}")
    if rejected:
        warnings.warn(
            f"{path}: unusable pixel spacing ({', '.join(rejected)}); spacing is unknown",
            stacklevel=4,
        )
    return None


# --------------------------------------------------------------------------------------------
# PNG, JPEG and other Pillow formats
# --------------------------------------------------------------------------------------------


def _read_pillow(path: Path, draft_side: Optional[int] = None) -> _Decoded:
    with warnings.catch_warnings():
        # This reader enforces its own size limit; Pillow's bomb warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(
                path,
                f"image is too large to decode safely ({exc}); this reader accepts at most "
                f"{MAX_IMAGE_SIDE} pixels a side and {MAX_IMAGE_PIXELS} pixels",
            ) from None
        except UnidentifiedImageError:
            raise ImageReadError(
                path,
                "unrecognised or corrupt image file (expected DICOM, PNG, JPEG, TIFF, NIfTI "
                "or .npy)",
            ) from None
        with image:
            fmt = (image.format or path.suffix.lstrip(".") or "image").lower()
            cols, rows = image.size
            frames = int(getattr(image, "n_frames", 1) or 1)
            if frames > 1:
                raise ImageReadError(
                    path, f"{fmt} file holds {frames} frames; only single 2D images are supported"
                )
            _check_size(path, rows, cols)
            _check_decoded_bytes(path, rows * cols * max(1, len(image.getbands())) * (2 if "16" in image.mode else 1))
            if draft_side and image.format == "JPEG" and image.mode in ("L", "RGB"):
                image.draft(image.mode, (draft_side, draft_side))
            try:
                image.load()
            except (OSError, SyntaxError, ValueError) as exc:
                reason = f"truncated or corrupt {fmt} file ({_describe(exc)})"
                raise ImageReadError(path, reason) from None
            pixels = _pillow_to_unit(path, image)
    return _Decoded(pixels=pixels, spacing=None, source=fmt)


def _pillow_to_unit(path: Path, image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.float32)
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float32) / 65535.0
    if mode == "I":
        data = np.asarray(image)
        if data.size and data.min() >= 0 and data.max() <= 65535:
            return data.astype(np.float32) / 65535.0
        return _robust_stretch(data)
    if mode == "F":
        return _scale_array(np.asarray(image))
    if mode in ("P", "PA"):
        image = image.convert("L") if _palette_is_gray(image) else image.convert("RGB")
    elif mode in ("LA", "La"):
        image = image.convert("L")
    elif mode != "L" and mode != "RGB":
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as exc:
            reason = f"unsupported image mode '{mode}' ({_describe(exc)})"
            raise ImageReadError(path, reason) from None
    return np.asarray(image, dtype=np.float32) / 255.0


def _palette_is_gray(image: Image.Image) -> bool:
    palette = image.getpalette() or []
    triples = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
    return bool(triples.size) and bool(np.all(triples == triples[:, :1]))


# --------------------------------------------------------------------------------------------
# NIfTI and .npy
# --------------------------------------------------------------------------------------------


def _read_nifti(path: Path) -> _Decoded:
    """NIfTI ``[X, Y]`` or ``[X, Y, 1]`` -> pixels ``[H, W] = data.T``.

    Convention: the first voxel axis ``i`` is the image column and the second, ``j``, the row,
    which is how ITK (and so MONAI Label and 3D Slicer) index a 2D image written from a PNG or
    DICOM; the array is transposed and never reoriented by the affine. Spacing comes from the
    header's zooms, converted to mm from the declared spatial unit (unknown units are taken as mm).
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
        raise ImageReadError(path, f"not a readable NIfTI file ({_describe(exc)})") from None
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 2:
        raise ImageReadError(path, f"NIfTI data of shape {shape} is not a 2D image")
    if any(s > 1 for s in shape[2:]):
        raise ImageReadError(
            path,
            f"NIfTI data of shape {shape} is a volume or series with more than one slice; "
            "only 2D images (X x Y or X x Y x 1) are supported",
        )
    _check_size(path, shape[1], shape[0])
    _check_decoded_bytes(path, shape[0] * shape[1] * int(image.get_data_dtype().itemsize))
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, gzip.BadGzipFile) as exc:
        raise ImageReadError(path, f"truncated or corrupt NIfTI data ({_describe(exc)})") from None
    data = data.reshape(shape[:2])

    if data.dtype.names:  # RGB24 / RGBA32 NIfTI: a structured array of channels
        data = np.stack([data[name] for name in data.dtype.names[:3]], axis=-1)
        pixels = data.astype(np.float32) / 255.0
        pixels = np.transpose(pixels, (1, 0, 2))
    else:
        pixels = _scale_array(np.asarray(data).T)

    header = image.header
    zooms = header.get_zooms()
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    to_mm = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}.get(unit, 1.0)
    spacing: tuple[float, float] | None = None
    if len(zooms) >= 2 and all(np.isfinite(z) and z > 0 for z in zooms[:2]):
        spacing = (float(zooms[1]) * to_mm, float(zooms[0]) * to_mm)
    return _Decoded(pixels=pixels, spacing=spacing, source="nifti")


def _read_npy(path: Path) -> _Decoded:
    """``.npy`` holding ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3|4]``; spacing is unknown."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ImageReadError(path, f"not a plain numeric .npy array ({_describe(exc)})") from None
    except (OSError, EOFError) as exc:
        raise ImageReadError(path, f"truncated or corrupt .npy file ({_describe(exc)})") from None
    if not isinstance(data, np.ndarray) or data.ndim < 2:
        shape = getattr(data, "shape", "?")
        raise ImageReadError(path, f".npy array of shape {shape} is not a 2D image")
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise ImageReadError(path, f".npy array has non-numeric dtype {data.dtype}")
    data = _as_image_array(path, data, ".npy array")
    _check_size(path, int(data.shape[0]), int(data.shape[1]))
    _check_decoded_bytes(path, int(data.nbytes))
    pixels = _scale_array(np.array(data))
    return _Decoded(pixels=pixels, spacing=None, source="npy")


_READERS: dict[str, Callable[[Path], _Decoded]] = {
    "dicom": _read_dicom,
    "png": _read_pillow,
    "jpeg": _read_pillow,
    "pillow": _read_pillow,
    "nifti": _read_nifti,
    "npy": _read_npy,
}


# --------------------------------------------------------------------------------------------
# Letterboxing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Where an ``[H, W]`` image sits inside its ``size x size`` letterboxed square.

    The image was resized to ``resized_shape`` (long side == ``size``) and placed at
    ``(pad_top, pad_left)``; the remaining border is zero. When the padding is odd, the extra
    pixel goes to the bottom/right. ``scale`` is ``size / max(H, W)``; the per-axis factors
    ``resized_shape / original_shape`` differ from it by the rounding of the short side, and the
    inverse maps use those exact per-axis factors.
    """

    original_shape: tuple[int, int]
    size: int
    resized_shape: tuple[int, int]
    pad_top: int
    pad_left: int
    scale: float

    @classmethod
    def for_shape(cls, shape: tuple[int, ...], size: int, floor: bool = False) -> "Letterbox":
        """Geometry for an image of ``shape`` (``[H, W]`` or ``[H, W, C]``), without resampling.

        The short side is rounded to the nearest pixel, or truncated with ``floor`` (the
        published code's ``int(short * size / long)``).
        """
        if size < 1:
            raise ValueError(f"letterbox size must be positive, got {size}")
        height, width = int(shape[0]), int(shape[1])
        if height < 1 or width < 1:
            raise ValueError(f"cannot letterbox an empty image of shape {tuple(shape)}")
        scale = size / max(height, width)
        if floor:
            # Same float expression as the published code, so truncation agrees to the pixel.
            long_side = float(max(height, width))
            new_h = size if height >= width else max(1, int(float(height) * (float(size) / long_side)))
            new_w = size if width > height else max(1, int(float(width) * (float(size) / long_side)))
        else:
            new_h = min(size, max(1, int(round(height * scale))))
            new_w = min(size, max(1, int(round(width * scale))))
        return cls(
            original_shape=(height, width),
            size=int(size),
            resized_shape=(new_h, new_w),
            pad_top=(size - new_h) // 2,
            pad_left=(size - new_w) // 2,
            scale=scale,
        )

    def to_original(self, map_: np.ndarray) -> np.ndarray:
        """Resample a map covering the square onto the original pixel grid.

        Args:
            map_: ``[h, w]`` (or ``[h, w, C]``) float map of the whole ``size x size`` square at
                any resolution (e.g. a ``[14, 14]`` patch grid or a ``[size, size]`` heatmap).

        Returns:
            float32 ``[H, W]`` (or ``[H, W, C]``): the padding cropped away and the content
            bilinearly interpolated at each original pixel centre (edge values extended).
        """
        map_ = np.asarray(map_)
        if map_.ndim not in (2, 3) or map_.shape[0] < 1 or map_.shape[1] < 1:
            raise ValueError(f"expected a [h, w] or [h, w, C] map, got shape {map_.shape}")
        height, width = self.original_shape
        rows = self._centres_in_map(height, self.resized_shape[0], self.pad_top, map_.shape[0])
        cols = self._centres_in_map(width, self.resized_shape[1], self.pad_left, map_.shape[1])
        # Columns first, on the small map; then the large pass blends whole rows, which are
        # contiguous: about half the time of the other order on a 2k x 2k radiograph.
        narrow = _linear_along(map_.astype(np.float32, copy=False), cols, axis=1)
        return _lerp_rows(narrow, rows)

    def box_to_original(
        self, box: tuple[float, float, float, float], map_size: int | None = None
    ) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in square pixel coordinates -> original pixel coordinates.

        Coordinates are continuous edges (pixel ``k`` spans ``[k, k + 1)``). ``map_size`` is the
        side of the square the box refers to when it is not ``size`` (a box on a 14x14 grid).
        The result is clipped to the image.
        """
        factor = self.size / float(map_size or self.size)
        x0, y0, x1, y1 = (float(v) * factor for v in box)
        height, width = self.original_shape
        sx = width / self.resized_shape[1]
        sy = height / self.resized_shape[0]
        ox0, ox1 = ((x - self.pad_left) * sx for x in (x0, x1))
        oy0, oy1 = ((y - self.pad_top) * sy for y in (y0, y1))
        return (
            float(np.clip(ox0, 0, width)),
            float(np.clip(oy0, 0, height)),
            float(np.clip(ox1, 0, width)),
            float(np.clip(oy1, 0, height)),
        )

    def box_from_original(
        self, box: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` in original pixel coordinates -> square pixel coordinates."""
        x0, y0, x1, y1 = (float(v) for v in box)
        height, width = self.original_shape
        sx = self.resized_shape[1] / width
        sy = self.resized_shape[0] / height
        return (
            x0 * sx + self.pad_left,
            y0 * sy + self.pad_top,
            x1 * sx + self.pad_left,
            y1 * sy + self.pad_top,
        )

    def _centres_in_map(self, n_original: int, n_resized: int, pad: int, n_map: int) -> np.ndarray:
        # Original pixel k has its centre at k + 0.5; in the square it sits at
        # pad + (k + 0.5) * n_resized / n_original; map pixel m covers [m, m + 1) * size / n_map,
        # so in map index units (centres at integers) subtract 0.5 after rescaling.
        centres = pad + (np.arange(n_original, dtype=np.float64) + 0.5) * (n_resized / n_original)
        return centres * (n_map / self.size) - 0.5


def letterbox(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Fit ``[H, W]`` or ``[H, W, C]`` pixels into a zero-padded ``[size, size(, C)]`` square.

    The long side is resized to ``size`` with an anti-aliased bilinear filter (Pillow's, whose
    support widens when shrinking), keeping the aspect ratio; the short side is centred.

    Returns:
        The float32 square and the :class:`Letterbox` that maps results back.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2, 3):
        raise ValueError(f"expected [H, W] or [H, W, C] pixels, got shape {pixels.shape}")
    box = Letterbox.for_shape(pixels.shape, size)
    new_h, new_w = box.resized_shape
    out = np.zeros((size, size) + pixels.shape[2:], dtype=np.float32)
    resized = _resize(pixels.astype(np.float32, copy=False), new_h, new_w)
    out[box.pad_top : box.pad_top + new_h, box.pad_left : box.pad_left + new_w] = resized
    return out, box


def letterbox_published(pixels: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """The published preprocessing: 8-bit grayscale, area-averaged letterbox, zero padding.

    ``[H, W]`` (or ``[H, W, 3]``, converted to luma first) pixels in ``[0, 1]`` are quantised to
    8 bits as the published code reads images (``cv2.imread(path, 0)``), the long side is
    brought to ``size`` with area averaging (OpenCV's ``INTER_AREA``, see
    :func:`resize_area_uint8`), the short side truncated (``Letterbox.for_shape(floor=True)``)
    and centred with zero padding (extra pixel bottom/right).

    Returns:
        The float32 ``[size, size]`` square in ``[0, 1]`` (multiples of 1/255) and its
        :class:`Letterbox`.
    """
    pixels = to_grayscale(np.asarray(pixels))
    if pixels.ndim != 2:
        raise ValueError(f"expected [H, W] or [H, W, 3] pixels, got shape {pixels.shape}")
    box = Letterbox.for_shape(pixels.shape, size, floor=True)
    codes = np.rint(np.clip(np.nan_to_num(pixels.astype(np.float64), nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    new_h, new_w = box.resized_shape
    out = np.zeros((size, size), dtype=np.float32)
    resized = resize_area_uint8(codes, new_h, new_w)
    out[box.pad_top : box.pad_top + new_h, box.pad_left : box.pad_left + new_w] = resized.astype(np.float32) / np.float32(255.0)
    return out, box


def resize_area_uint8(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Area-averaging resize of a ``uint8`` ``[H, W]`` image, as OpenCV's ``INTER_AREA``.

    When shrinking, each output pixel is the mean of the source area it covers, partially
    covered source pixels weighted by the covered fraction (fractions under 1e-3 ignored, as
    OpenCV does), then rounded to the nearest integer. When enlarging, OpenCV's ``INTER_AREA``
    interpolates linearly with clamped fractional weights in 11-bit fixed point, reproduced here.
    The result matched ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` on the images
    measured in docs/inference.md.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
    height, width = image.shape
    if new_h <= height and new_w <= width:
        rows = _area_weights(height, new_h)  # [new_h, H]
        cols = _area_weights(width, new_w)  # [new_w, W]
        values = rows @ image.astype(np.float64) @ cols.T
        if height % new_h == 0 and width % new_w == 0:
            # Whole-number factors take OpenCV's integer path, which rounds halves up.
            return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    # Enlarging (either axis): OpenCV's linear path with 11-bit fixed-point weights.
    rows = np.rint(_area_weights(height, new_h) * 2048).astype(np.int64)
    cols = np.rint(_area_weights(width, new_w) * 2048).astype(np.int64)
    values = rows @ image.astype(np.int64) @ cols.T
    return np.clip((values + (1 << 21)) >> 22, 0, 255).astype(np.uint8)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` interpolation matrix of OpenCV's ``INTER_AREA`` along one axis."""
    weights = np.zeros((n_out, n_in), dtype=np.float64)
    inv = n_out / n_in
    scale = 1.0 / inv  # OpenCV's own expression: the last bit decides some floors below
    if n_out < n_in or (n_out == n_in and n_in > 0):
        for dx in range(n_out):
            fsx1 = dx * scale
            fsx2 = fsx1 + scale
            cell = min(scale, n_in - fsx1)
            sx1, sx2 = int(np.ceil(fsx1)), int(np.floor(fsx2))
            sx2 = min(sx2, n_in - 1)
            sx1 = min(sx1, sx2)
            if sx1 - fsx1 > 1e-3:
                weights[dx, sx1 - 1] += np.float32((sx1 - fsx1) / cell)
            for sx in range(sx1, sx2):
                weights[dx, sx] += np.float32(1.0 / cell)
            if fsx2 - sx2 > 1e-3:
                weights[dx, sx2] += np.float32(min(min(fsx2 - sx2, 1.0), cell) / cell)
        return weights
    # Enlarging: linear interpolation whose fraction is 0 unless the output pixel straddles
    # a source pixel boundary (OpenCV's INTER_AREA upscaling table).
    for dx in range(n_out):
        sx = int(np.floor(dx * scale))
        frac = float(np.float32((dx + 1) - (sx + 1) * inv))
        frac = 0.0 if frac <= 0 else frac - np.floor(frac)
        if sx < 0:
            weights[dx, 0] = 1.0
        elif sx >= n_in - 1:
            weights[dx, n_in - 1] = 1.0
        else:
            weights[dx, sx] = 1.0 - frac
            weights[dx, sx + 1] = frac
    return weights


def _resize(pixels: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Anti-aliased bilinear resize of ``[H, W]`` or ``[H, W, C]`` float32, channel by channel."""
    if pixels.shape[:2] == (new_h, new_w):
        return pixels.copy()
    if pixels.ndim == 2:
        return _resize_plane(pixels, new_h, new_w)
    planes = [_resize_plane(pixels[..., c], new_h, new_w) for c in range(pixels.shape[2])]
    return np.stack(planes, axis=-1)


def _resize_plane(plane: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32))
    resized = image.resize((new_w, new_h), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def _lerp_rows(values: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of the rows of float32 ``values`` at fractional row indices ``coords``.

    Same result as ``_linear_along(values, coords, axis=0)``, computed with ``torch.lerp`` on
    whole rows (multi-threaded, one pass over the output).
    """
    import torch

    n = values.shape[0]
    coords = np.clip(coords, 0.0, n - 1)
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    frac = torch.from_numpy((coords - low).astype(np.float32)).view(-1, *([1] * (values.ndim - 1)))
    source = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    low_t, high_t = torch.from_numpy(low), torch.from_numpy(high)
    return torch.lerp(source[low_t], source[high_t], frac).numpy()


def _linear_along(values: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` at fractional indices ``coords`` along one axis.

    Indices outside ``[0, n - 1]`` take the edge value.
    """
    n = values.shape[axis]
    coords = np.clip(coords, 0.0, n - 1)
    low = np.floor(coords).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    frac = (coords - low).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(values, low, axis=axis) * (1.0 - frac) + np.take(values, high, axis=axis) * frac
