"""Writing AFLoc results as files viewers open on top of the source image.

- :func:`write_label`: an integer label ``[H, W]`` (0 background, segment ``i`` has value
  ``i + 1``) as NRRD (3D Slicer segmentation fields included, so the file is also a valid
  ``.seg.nrrd`` that ``slicerio`` and Slicer read with one named segment per prompt), NIfTI, or
  DICOM-SEG (highdicom; DICOM sources only).
- :func:`write_heatmap`: a float32 heatmap ``[H, W]`` as uncompressed NIfTI (a full-size float
  map barely compresses and gzip would cost about 0.5 s per radiograph).

Text from prompts (segment names) may hold any Unicode character. NRRD headers are ASCII (NRRD
format spec), so :func:`nrrd_header_value` percent-encodes (UTF-8, as in URLs) every character
outside printable ASCII and ``%`` itself: "right pleural effusion" is written as is,
"épanchement pleural" as ``%C3%A9panchement pleural``; :func:`nrrd_header_text` decodes it (the
Slicer client does). DICOM-SEG files declare ``SpecificCharacterSet`` ``ISO_IR 192`` (UTF-8) and
keep segment labels in Unicode. Control characters never reach a header: NRRD encodes them,
DICOM labels get a space instead.

Both keep the source's geometry (:class:`~lib.geometry.Geometry`): NRRD files are 3D with one
slice (``sizes W H 1``, as Slicer holds a 2D image), NIfTI files are ``[W, H]`` (or the source
NIfTI's own shape) with ITK's index convention.
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lib.errors import BadRequestError
from lib.geometry import Geometry

__all__ = ["SEGMENT_COLORS", "Segment", "dicom_text", "nrrd_header_text", "nrrd_header_value", "write_heatmap", "write_label"]

#: Segment colours (RGB in [0, 1]), one per prompt, distinct on a grey radiograph.
SEGMENT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.95, 0.30, 0.25),
    (0.20, 0.65, 0.95),
    (0.35, 0.85, 0.35),
    (0.98, 0.80, 0.20),
    (0.80, 0.40, 0.90),
    (0.10, 0.85, 0.80),
    (0.98, 0.55, 0.10),
    (0.95, 0.45, 0.70),
)
# zlib level for NRRD labels: mostly-zero masks compress as well at 1 as at 9, and faster.
_GZIP_LEVEL = 1
_DICOM_LABEL_MAX_CHARS = 64  # SegmentLabel is an LO element
# Printable ASCII but '%' stays as it is in NRRD header values; everything else is percent-encoded.
_NRRD_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def nrrd_header_value(text: str) -> str:
    """``text`` as an ASCII NRRD header value: non-printable-ASCII characters and ``%`` percent-encoded (UTF-8).

    Spaces at either end are encoded too: NRRD readers strip them from values.
    """
    encoded = urllib.parse.quote(text, safe=_NRRD_SAFE)
    core = encoded.strip(" ")
    if core == encoded:
        return encoded
    start = encoded.index(core) if core else len(encoded)
    return "%20" * start + core + "%20" * (len(encoded) - start - len(core))


def nrrd_header_text(value: str) -> str:
    """The text :func:`nrrd_header_value` encoded (values without ``%`` escapes come back unchanged)."""
    return urllib.parse.unquote(value)


def dicom_text(text: str, max_chars: int = _DICOM_LABEL_MAX_CHARS, fallback: str = "finding") -> str:
    """``text`` fit for a DICOM LO element: invisible characters replaced by spaces, at most ``max_chars``."""
    # Control, format, private-use and unassigned code points (category C*) and line separators.
    cleaned = "".join(" " if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") else c for c in text)
    cleaned = " ".join(cleaned.split())[:max_chars].strip()
    return cleaned or fallback


@dataclass(frozen=True)
class Segment:
    """One named segment of a label: ``value`` is its pixel value, ``name`` the prompt."""

    name: str
    value: int
    color: tuple[float, float, float]


def write_label(
    path: Path,
    label: np.ndarray,
    segments: Sequence[Segment],
    geometry: Geometry,
    dtype: str = "uint8",
    compress: bool = True,
    source_dicom: Optional[Path] = None,
    model_version: str = "",
    series_description: str = "AFLoc text-prompted localization (draft)",
) -> Path:
    """Write ``label`` ``[H, W]`` to ``path``; the format follows the suffix (see module docstring).

    ``model_version`` and ``series_description`` are used by DICOM-SEG only.
    """
    if label.shape != geometry.shape:
        raise ValueError(f"label shape {label.shape} does not match the image grid {geometry.shape}")
    name = path.name.lower()
    if name.endswith(".nrrd"):
        _write_nrrd(path, label.astype(dtype), geometry, compress, segments)
    elif name.endswith((".nii", ".nii.gz")):
        _write_nifti(path, label.astype(dtype), geometry)
    elif name.endswith(".dcm"):
        if source_dicom is None:
            raise BadRequestError(
                "result_extension '.dcm' (DICOM-SEG) needs a DICOM source image; use '.nrrd' or '.nii.gz'"
            )
        _write_dicom_seg(path, label, segments, geometry, source_dicom, model_version, series_description)
    else:
        raise ValueError(f"unsupported label file type: {path.name}")
    return path


def write_heatmap(path: Path, heatmap: np.ndarray, geometry: Geometry) -> Path:
    """Write a float heatmap ``[H, W]`` as float32 NIfTI (``.nii``) or NRRD with the image's geometry."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != geometry.shape:
        raise ValueError(f"heatmap shape {heatmap.shape} does not match the image grid {geometry.shape}")
    if path.name.lower().endswith(".nrrd"):
        _write_nrrd(path, heatmap, geometry, compress=False, segments=())
    else:
        _write_nifti(path, heatmap, geometry)
    return path


# --------------------------------------------------------------------------------------------
# NRRD (+ Slicer segmentation fields)
# --------------------------------------------------------------------------------------------


def _write_nrrd(path: Path, data: np.ndarray, geometry: Geometry, compress: bool, segments: Sequence[Segment]) -> None:
    import nrrd

    height, width = geometry.shape
    ijk = geometry.ijk_to_lps()
    header: dict[str, object] = {
        "type": _NRRD_TYPES[data.dtype.name],
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": [width, height, 1],
        # pynrrd takes one row per axis: the LPS step of i, j, k.
        "space directions": ijk[:3, :3].T,
        "kinds": ["domain", "domain", "domain"],
        "space origin": ijk[:3, 3],
        "encoding": "gzip" if compress else "raw",
    }
    if segments:
        header.update(_segmentation_fields(segments, width, height))
    # [H, W] -> [W, H, 1] = (i, j, k), written in Fortran order as NRRD expects.
    volume = data.T[:, :, np.newaxis]
    nrrd.write(str(path), volume, header, index_order="F", compression_level=_GZIP_LEVEL)


_NRRD_TYPES = {
    "uint8": "uint8",
    "uint16": "uint16",
    "int16": "int16",
    "int32": "int32",
    "uint32": "uint32",
    "float32": "float",
}


def _segmentation_fields(segments: Sequence[Segment], width: int, height: int) -> dict[str, str]:
    """3D Slicer's ``.seg.nrrd`` custom fields: one layer, one label value per segment."""
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extent = f"0 {width - 1} 0 {height - 1} 0 0"
    for index, segment in enumerate(segments):
        prefix = f"Segment{index}_"
        fields[prefix + "ID"] = f"Segment_{segment.value}"
        fields[prefix + "Name"] = nrrd_header_value(segment.name)
        fields[prefix + "NameAutoGenerated"] = "0"
        fields[prefix + "LabelValue"] = str(segment.value)
        fields[prefix + "Layer"] = "0"
        fields[prefix + "Color"] = " ".join(f"{c:.6f}" for c in segment.color)
        fields[prefix + "ColorAutoGenerated"] = "0"
        fields[prefix + "Extent"] = extent
        fields[prefix + "Tags"] = "Segmentation.Status:inprogress|"
    return fields


# --------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------


def _write_nifti(path: Path, data: np.ndarray, geometry: Geometry) -> None:
    import nibabel as nib

    # [H, W] -> [W, H] = (i, j). The transposed view is Fortran-ordered, which is NIfTI's own
    # voxel order, so nibabel writes the buffer as it is (a contiguous copy costs 3x the time).
    volume = data.T
    if geometry.nifti_shape is not None and int(np.prod(geometry.nifti_shape)) == volume.size:
        volume = volume.reshape(geometry.nifti_shape, order="F")
    affine = geometry.ras_affine()
    image = nib.Nifti1Image(volume, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(path))


# --------------------------------------------------------------------------------------------
# DICOM-SEG
# --------------------------------------------------------------------------------------------


def _write_dicom_seg(
    path: Path,
    label: np.ndarray,
    segments: Sequence[Segment],
    geometry: Geometry,
    source: Path,
    model_version: str,
    series_description: str,
) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    import afloc_models

    source_ds = pydicom.dcmread(str(source), force=True)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=segment.value,
            segment_label=dicom_text(segment.name),
            # A text-prompted finding has no fixed code: "morphologically abnormal structure".
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.MorphologicallyAbnormalStructure,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="AFLoc",
                version=dicom_text(model_version or "unknown", fallback="unknown"),
                family=codes.cid7162.ArtificialIntelligence,
            ),
        )
        for segment in segments
    ]
    seg = hd.seg.Segmentation(
        source_images=[source_ds],
        pixel_array=label.astype(np.uint8)[np.newaxis],  # [1, H, W]: values are segment numbers
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="AFLoc Label",
        manufacturer_model_name="AFLoc",
        software_versions=afloc_models.__version__,
        device_serial_number="0",
        series_description=series_description[:64],
        omit_empty_frames=False,
        # Stated explicitly: highdicom would copy an unusable source spacing (real CR files carry
        # 0\0) and omit the slice thickness its own reader requires.
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=list(geometry.spacing), slice_thickness=1.0),
    )
    # Segment labels are prompts in any language: declare UTF-8 so pydicom encodes them as such.
    seg.SpecificCharacterSet = "ISO_IR 192"
    seg.save_as(str(path))
