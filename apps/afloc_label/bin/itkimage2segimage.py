"""A DICOM-SEG writer with dcmqi's ``itkimage2segimage`` command line, built on highdicom.

MONAI Label 0.8.5 writes DICOM-SEG for a DICOMweb datastore (``final`` labels saved from OHIF,
``output=dicom_seg`` infer replies) by running dcmqi's ``itkimage2segimage``, and at server start
it downloads dcmqi from GitHub unless ``<app>/bin/itkimage2segimage`` exists. This module is that
command (the ``itkimage2segimage`` shell shim next to it runs it), so the server starts offline
and the DICOM-SEG files are written by highdicom.

Arguments (those MONAI Label passes, plus dcmqi's flags it accepts and ignores)::

    --inputImageList LABEL[,LABEL...]   label images ITK reads (.nii.gz, .nrrd, ...): [k, j, i]
    --inputDICOMDirectory DIR           the source series the labels were drawn on
    --outputDICOM FILE                  the DICOM-SEG file to write
    --inputMetadata JSON                dcmqi's metadata: series fields + segmentAttributes
    --skip / --useLabelIDAsSegmentNumber / --mergeSegments   accepted for compatibility

``segmentAttributes`` holds one list per label image; each entry maps a label value
(``labelID``) to a segment (label, codes, algorithm, colour). Segments are renumbered 1..N in
the order given; label values without an entry are left out. Slice ``k`` of a label belongs
to the ``k``-th source image in ITK's order (ascending position along the slice normal).

Exit status: 0 on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["SegmentSpec", "main", "parse_segment_specs", "rgb_to_dicom_lab", "write_dicom_seg"]

_DEFAULT_CATEGORY = ("123037004", "SCT", "Anatomical Structure")
_DEFAULT_TYPE = ("85756007", "SCT", "Tissue")
_ALGORITHM_TYPES = {"AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"}


class SegWriterError(Exception):
    """The inputs cannot be turned into a DICOM-SEG (the message says why)."""


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: which label value it takes from which input image, and how it is described."""

    image_index: int
    label_id: int
    label: str
    description: str
    algorithm_type: str
    algorithm_name: str
    category: tuple[str, str, str]
    property_type: tuple[str, str, str]
    rgb: Optional[tuple[int, int, int]]


def _code(entry: Any, default: tuple[str, str, str]) -> tuple[str, str, str]:
    if not isinstance(entry, dict):
        return default
    value = str(entry.get("CodeValue") or default[0])
    scheme = str(entry.get("CodingSchemeDesignator") or default[1])
    meaning = str(entry.get("CodeMeaning") or default[2])
    return value, scheme, meaning


def parse_segment_specs(metadata: dict[str, Any], n_images: int) -> list[SegmentSpec]:
    """The segments that dcmqi ``metadata`` describes for ``n_images`` label images."""
    groups = metadata.get("segmentAttributes")
    if not isinstance(groups, list) or not groups:
        raise SegWriterError("metadata has no 'segmentAttributes' list")
    if len(groups) != n_images:
        raise SegWriterError(f"metadata describes {len(groups)} label images but {n_images} were given")
    specs = []
    for index, group in enumerate(groups):
        if not isinstance(group, list):
            raise SegWriterError(f"segmentAttributes[{index}] must be a list of segments")
        for entry in group:
            if not isinstance(entry, dict) or "labelID" not in entry:
                raise SegWriterError(f"segmentAttributes[{index}] has an entry without 'labelID'")
            label = str(entry.get("SegmentLabel") or f"Segment {entry['labelID']}")
            algorithm_type = str(entry.get("SegmentAlgorithmType") or "AUTOMATIC").upper()
            if algorithm_type not in _ALGORITHM_TYPES:
                raise SegWriterError(f"SegmentAlgorithmType {algorithm_type!r} is not one of {sorted(_ALGORITHM_TYPES)}")
            rgb = entry.get("recommendedDisplayRGBValue")
            specs.append(
                SegmentSpec(
                    image_index=index,
                    label_id=int(entry["labelID"]),
                    label=label,
                    description=str(entry.get("SegmentDescription") or label),
                    algorithm_type=algorithm_type,
                    algorithm_name=str(entry.get("SegmentAlgorithmName") or "unknown"),
                    category=_code(entry.get("SegmentedPropertyCategoryCodeSequence"), _DEFAULT_CATEGORY),
                    property_type=_code(entry.get("SegmentedPropertyTypeCodeSequence"), _DEFAULT_TYPE),
                    rgb=tuple(int(c) for c in rgb[:3]) if isinstance(rgb, list) and len(rgb) >= 3 else None,
                )
            )
    if not specs:
        raise SegWriterError("metadata describes no segment")
    return specs


def rgb_to_dicom_lab(rgb: Sequence[int]) -> list[int]:
    """sRGB ``0..255`` -> DICOM's scaled CIELab (``L*`` 0..100 and ``a*``/``b*`` -128..127 onto 0..65535)."""
    linear = []
    for channel in rgb:
        c = min(max(float(channel), 0.0), 255.0) / 255.0
        linear.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    r, g, b = linear
    # sRGB (D65) -> XYZ, normalised by the D65 white point.
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    lightness = 116 * f(y) - 16
    a_star = 500 * (f(x) - f(y))
    b_star = 200 * (f(y) - f(z))
    return [
        int(round(min(max(lightness, 0.0), 100.0) * 65535 / 100)),
        int(round((min(max(a_star, -128.0), 127.0) + 128) * 65535 / 255)),
        int(round((min(max(b_star, -128.0), 127.0) + 128) * 65535 / 255)),
    ]


def _read_sources(folder: Path) -> list[Any]:
    """The image instances of the source series, in ITK's slice order."""
    import pydicom

    datasets = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(path))
        except Exception:  # not DICOM (a stray file in the cache folder)
            continue
        if "PixelData" in ds and ds.get("Modality") != "SEG":
            datasets.append(ds)
    if not datasets:
        raise SegWriterError(f"no DICOM image found in '{folder}'")
    if len(datasets) > 1:
        datasets.sort(key=_position_along_normal)
    return datasets


def _position_along_normal(ds: Any) -> float:
    orientation = [float(v) for v in ds.get("ImageOrientationPatient", [])]
    position = [float(v) for v in ds.get("ImagePositionPatient", [])]
    if len(orientation) != 6 or len(position) != 3:
        return float(ds.get("InstanceNumber", 0) or 0)
    normal = np.cross(orientation[:3], orientation[3:])
    return float(np.dot(normal, position))


def _read_label(path: Path) -> np.ndarray:
    """A label image as ``[K, H, W]`` integers (ITK's ``[k, j, i]``)."""
    import SimpleITK as sitk

    if not path.is_file():
        raise SegWriterError(f"label image '{path}' does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SegWriterError(f"cannot read label image '{path}': {exc}") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise SegWriterError(f"label image '{path}' has several components per pixel")
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3:
        raise SegWriterError(f"label image '{path}' has {array.ndim} dimensions; expected 2 or 3")
    return np.rint(array).astype(np.int64)


def _frame_count(sources: Sequence[Any]) -> int:
    return sum(int(ds.get("NumberOfFrames", 1) or 1) for ds in sources)


def write_dicom_seg(
    label_files: Sequence[Path], source_dir: Path, output: Path, metadata: dict[str, Any]
) -> Path:
    """Write the DICOM-SEG of ``label_files`` over the series in ``source_dir`` to ``output``."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = _read_sources(Path(source_dir))
    frames = _frame_count(sources)
    if len(sources) > 1 and frames != len(sources):
        raise SegWriterError("multi-frame source images in a multi-instance series are not supported")
    labels = [_read_label(Path(f)) for f in label_files]
    rows, columns = int(sources[0].Rows), int(sources[0].Columns)
    for path, label in zip(label_files, labels):
        if label.shape != (frames, rows, columns):
            raise SegWriterError(
                f"label image '{path}' is {label.shape[2]}x{label.shape[1]}x{label.shape[0]} (i, j, k) "
                f"but the source series is {columns}x{rows}x{frames}"
            )
    specs = parse_segment_specs(metadata, len(labels))

    masks = np.stack([labels[s.image_index] == s.label_id for s in specs], axis=-1)  # [K, H, W, S]
    descriptions = []
    for number, spec in enumerate(specs, start=1):
        algorithm = None
        if spec.algorithm_type != "MANUAL":
            algorithm = hd.AlgorithmIdentificationSequence(
                name=spec.algorithm_name[:64], version="unknown", family=codes.cid7162.ArtificialIntelligence
            )
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=spec.label[:64],
            segmented_property_category=hd.sr.CodedConcept(spec.category[0], spec.category[1], spec.category[2][:64]),
            segmented_property_type=hd.sr.CodedConcept(
                spec.property_type[0], spec.property_type[1], spec.property_type[2][:64]
            ),
            algorithm_type=spec.algorithm_type,
            algorithm_identification=algorithm,
        )
        description.SegmentDescription = spec.description[:64]
        if spec.rgb is not None:
            description.RecommendedDisplayCIELabValue = rgb_to_dicom_lab(spec.rgb)
        descriptions.append(description)

    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(metadata.get("SeriesNumber") or 300),
        sop_instance_uid=hd.UID(),
        instance_number=int(metadata.get("InstanceNumber") or 1),
        manufacturer="AFLoc Label",
        manufacturer_model_name="itkimage2segimage (highdicom)",
        software_versions=hd.__version__,
        device_serial_number="0",
        content_label=_content_label(metadata.get("ContentLabel")),
        content_description=str(metadata.get("ContentDescription") or "")[:64] or None,
        content_creator_name=str(metadata.get("ContentCreatorName") or "") or None,
        series_description=str(metadata.get("SeriesDescription") or "Segmentation")[:64],
        omit_empty_frames=False,
    )
    _complete_pixel_measures(seg)
    body_part = metadata.get("BodyPartExamined") or sources[0].get("BodyPartExamined")
    if body_part:
        seg.BodyPartExamined = str(body_part)[:16]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(output))
    return output


def _complete_pixel_measures(seg: Any) -> None:
    """Make the shared Pixel Measures of a projection-image SEG readable by DICOM-SEG readers.

    For source images without a frame of reference (CR, DX) highdicom copies only Pixel Spacing,
    and its own reader then refuses the file for want of Slice Thickness: a 2D image counts as
    one 1 mm slice, as in ITK. A spacing that is not positive (``0\\0`` in some CR
    files) describes nothing, so the item is dropped rather than passed on.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" not in shared:
        return
    measures = shared.PixelMeasuresSequence[0]
    spacing = [float(v) for v in measures.get("PixelSpacing", [])]
    if len(spacing) != 2 or min(spacing) <= 0:
        del shared.PixelMeasuresSequence
        return
    if "SliceThickness" not in measures:
        measures.SliceThickness = 1.0


def _content_label(value: Any) -> str:
    """A valid Content Label (CS: upper case, digits, space, underscore; 16 characters)."""
    text = "".join(c if c.isalnum() or c in " _" else "_" for c in str(value or "SEGMENTATION").upper())
    return text[:16].strip() or "SEGMENTATION"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="itkimage2segimage", description="Write a DICOM-SEG from ITK label images (dcmqi interface, highdicom)."
    )
    parser.add_argument("--inputImageList", required=True, help="comma-separated label image files")
    parser.add_argument("--inputDICOMDirectory", required=True, type=Path)
    parser.add_argument("--outputDICOM", required=True, type=Path)
    parser.add_argument("--inputMetadata", required=True, type=Path)
    for flag in ("--skip", "--useLabelIDAsSegmentNumber", "--mergeSegments"):
        parser.add_argument(flag, action="store_true", help="accepted for dcmqi compatibility; no effect")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        try:
            metadata = json.loads(args.inputMetadata.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SegWriterError(f"cannot read metadata '{args.inputMetadata}': {exc}") from None
        if not isinstance(metadata, dict):
            raise SegWriterError(f"metadata '{args.inputMetadata}' must be a JSON object")
        labels = [Path(p) for p in args.inputImageList.split(",") if p.strip()]
        if not labels:
            raise SegWriterError("--inputImageList names no file")
        written = write_dicom_seg(labels, args.inputDICOMDirectory, args.outputDICOM, metadata)
    except SegWriterError as exc:
        print(f"itkimage2segimage: {exc}", file=sys.stderr)
        return 1
    print(f"itkimage2segimage: wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
