"""Ground-truth readers: MS-CXR, RSNA Pneumonia, COCO boxes and mask folders -> ``GroundTruthCase``.

Every reader returns a list of :class:`GroundTruthCase`, one per (image, finding, prompt), whose
``mask(shape)`` rasterises the ground truth onto the pixel grid of the image as actually read:

- boxes are ``(x, y, w, h)`` in pixels of the frame they were drawn on (``annotation_size``,
  ``(H, W)``); when the image read from disk has another size (a downsampled JPEG of a DICOM),
  they are scaled per axis. Several boxes of one case are united.
- mask files are nonzero-is-inside images; several files of one case are united, and a mask of
  another size is resampled (nearest neighbour) to the image.

Paths in a table are resolved against ``images_dir`` (by default the table's own folder).
Problems in the files a user points at raise :class:`GroundTruthError` naming the file, row and
column.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from afloc_models.errors import AFLocError

__all__ = [
    "Box",
    "GroundTruthCase",
    "GroundTruthError",
    "load_ground_truth",
    "read_coco",
    "read_mask_folder",
    "read_ms_cxr",
    "read_rsna_pneumonia",
]

Box = tuple[float, float, float, float]
"""``(x, y, w, h)``: left, top, width, height in pixels (``x`` along columns)."""

MS_CXR_COLUMNS = ("path", "category_name", "label_text", "x", "y", "w", "h")
RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
MASK_FOLDER_COLUMNS = ("image", "finding", "prompt", "mask_file")
RSNA_IMAGE_SIZE = (1024, 1024)  # every RSNA Pneumonia Detection Challenge image is 1024 x 1024

# How many missing files an error message lists before "...".
_LISTED = 3


class GroundTruthError(AFLocError):
    """A ground-truth table, JSON or mask file is missing, malformed, or points at missing files."""


@dataclass(frozen=True)
class GroundTruthCase:
    """One localization target: an image, what to look for, and where it is.

    Attributes:
        image_path: the image file.
        category: finding class used to group metrics (e.g. ``"Pneumothorax"``).
        prompt: the text the model is asked to localize.
        boxes: ``(x, y, w, h)`` boxes in the ``annotation_size`` frame.
        mask_files: mask images (nonzero inside) on the image's pixel grid.
        annotation_size: ``(H, W)`` of the frame the boxes were drawn on; ``None`` means the
            image's own size (no scaling).
        mask_fn: optional custom rasteriser ``(H, W) -> bool [H, W]`` used instead of boxes and
            files, for sources these readers do not cover.
        case_id: a label for reports (row key, patient id, COCO image id).
    """

    image_path: Path
    category: str
    prompt: str
    boxes: tuple[Box, ...] = ()
    mask_files: tuple[Path, ...] = ()
    annotation_size: tuple[int, int] | None = None
    mask_fn: Callable[[tuple[int, int]], np.ndarray] | None = field(default=None, compare=False)
    case_id: str = ""

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Rasterise the ground truth onto an image of ``shape`` (``(H, W)`` or ``(H, W, C)``).

        A pixel is inside a box when its centre is; a box thinner than a pixel still marks one.

        Returns:
            bool ``[H, W]``.
        """
        height, width = int(shape[0]), int(shape[1])
        if self.mask_fn is not None:
            custom = np.asarray(self.mask_fn((height, width))).astype(bool)
            if custom.shape != (height, width):
                raise GroundTruthError(
                    f"mask function of case '{self.case_id}' returned shape {custom.shape}, "
                    f"expected {(height, width)}"
                )
            return custom
        out = np.zeros((height, width), dtype=bool)
        if self.boxes:
            ann_h, ann_w = self.annotation_size or (height, width)
            sy, sx = height / ann_h, width / ann_w
            for x, y, w, h in self.boxes:
                r0, r1 = _pixel_span(y * sy, (y + h) * sy, height)
                c0, c1 = _pixel_span(x * sx, (x + w) * sx, width)
                out[r0:r1, c0:c1] = True
        for mask_file in self.mask_files:
            out |= _read_mask(mask_file, height, width)
        return out


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_ms_cxr(
    csv_path: str | Path, images_dir: str | Path | None = None, check_files: bool = True
) -> list[GroundTruthCase]:
    """MS-CXR style CSV: one row per box; rows of one image and phrase form one case.

    Required columns: ``path, category_name, label_text, x, y, w, h``; optional
    ``image_width, image_height`` (the frame the boxes were drawn on). ``label_text`` is the
    prompt, ``category_name`` the category.
    """
    csv_path = Path(csv_path)
    root = Path(images_dir) if images_dir is not None else csv_path.parent
    rows = _read_csv(csv_path, MS_CXR_COLUMNS, "an MS-CXR style table")
    grouped: dict[tuple[str, str, str], dict] = {}
    for line, row in rows:
        key = (row["path"].strip(), row["category_name"].strip(), row["label_text"].strip())
        if not key[0]:
            raise GroundTruthError(f"{csv_path}: row {line}: column 'path' is empty")
        box = _box(csv_path, line, row, ("x", "y", "w", "h"))
        size = _optional_size(csv_path, line, row, "image_height", "image_width")
        case = grouped.setdefault(key, {"boxes": [], "size": size})
        case["boxes"].append(box)
    cases = [
        GroundTruthCase(
            image_path=_resolve(root, path),
            category=category,
            prompt=label_text or category,
            boxes=tuple(case["boxes"]),
            annotation_size=case["size"],
            case_id=f"{path}|{label_text}",
        )
        for (path, category, label_text), case in grouped.items()
    ]
    if check_files:
        _check_exist(csv_path, [c.image_path for c in cases], "images")
    return cases


def read_rsna_pneumonia(
    csv_path: str | Path,
    images_dir: str | Path | None = None,
    extension: str = ".dcm",
    category: str = "Pneumonia",
    prompt: str = "Findings suggesting pneumonia",
    annotation_size: tuple[int, int] | None = RSNA_IMAGE_SIZE,
    check_files: bool = True,
) -> list[GroundTruthCase]:
    """RSNA Pneumonia Detection style CSV: ``patientId, x, y, width, height, Target``.

    Rows with ``Target`` 0 are negatives and are skipped (nothing to localize); the boxes of a
    positive patient are united into one case. The image is ``images_dir / (patientId +
    extension)``. Boxes are in the original 1024 x 1024 frame unless ``annotation_size`` says
    otherwise.
    """
    csv_path = Path(csv_path)
    root = Path(images_dir) if images_dir is not None else csv_path.parent
    if extension and not extension.startswith("."):
        extension = "." + extension
    rows = _read_csv(csv_path, RSNA_COLUMNS, "an RSNA Pneumonia style table")
    boxes: dict[str, list[Box]] = {}
    for line, row in rows:
        patient = row["patientId"].strip()
        if not patient:
            raise GroundTruthError(f"{csv_path}: row {line}: column 'patientId' is empty")
        target = _number(csv_path, line, row, "Target")
        if target not in (0.0, 1.0):
            raise GroundTruthError(
                f"{csv_path}: row {line}: column 'Target' must be 0 or 1, got {row['Target']!r}"
            )
        if target == 0.0:
            continue
        box = _box(csv_path, line, row, ("x", "y", "width", "height"))
        boxes.setdefault(patient, []).append(box)
    cases = [
        GroundTruthCase(
            image_path=root / f"{patient}{extension}",
            category=category,
            prompt=prompt,
            boxes=tuple(patient_boxes),
            annotation_size=annotation_size,
            case_id=patient,
        )
        for patient, patient_boxes in boxes.items()
    ]
    if check_files:
        _check_exist(csv_path, [c.image_path for c in cases], "images")
    return cases


def read_coco(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    prompts: Mapping[str, str] | None = None,
    prompt_template: str = "Findings suggesting {name}",
    check_files: bool = True,
) -> list[GroundTruthCase]:
    """COCO detection JSON (``images``, ``annotations`` with ``bbox [x, y, w, h]``, ``categories``).

    One case per (image, category), uniting that category's boxes. The prompt is
    ``prompts[category name]`` when given, else ``prompt_template`` with the name in lower case.
    Boxes refer to the image's ``height`` x ``width`` entry when present.
    """
    json_path = Path(json_path)
    root = Path(images_dir) if images_dir is not None else json_path.parent
    document = _read_json(json_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise GroundTruthError(f"{json_path}: COCO JSON needs a list under '{key}'")

    images: dict[object, dict] = {}
    for index, entry in enumerate(document["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            raise GroundTruthError(f"{json_path}: images[{index}] needs 'id' and 'file_name'")
        images[entry["id"]] = entry
    names: dict[object, str] = {}
    for index, entry in enumerate(document["categories"]):
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise GroundTruthError(f"{json_path}: categories[{index}] needs 'id' and 'name'")
        names[entry["id"]] = str(entry["name"])

    grouped: dict[tuple[object, object], list[Box]] = {}
    for index, entry in enumerate(document["annotations"]):
        where = f"{json_path}: annotations[{index}]"
        if not isinstance(entry, dict):
            raise GroundTruthError(f"{where} is not an object")
        for key in ("image_id", "category_id", "bbox"):
            if key not in entry:
                raise GroundTruthError(f"{where} has no '{key}'")
        if entry["image_id"] not in images:
            raise GroundTruthError(f"{where} refers to unknown image_id {entry['image_id']!r}")
        if entry["category_id"] not in names:
            raise GroundTruthError(
                f"{where} refers to unknown category_id {entry['category_id']!r}"
            )
        bbox = entry["bbox"]
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise GroundTruthError(
                f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}"
            ) from None
        _check_box(where, (x, y, w, h))
        grouped.setdefault((entry["image_id"], entry["category_id"]), []).append((x, y, w, h))

    cases = []
    for (image_id, category_id), boxes in grouped.items():
        image = images[image_id]
        name = names[category_id]
        prompt = (prompts or {}).get(name) or prompt_template.format(name=name.lower())
        size = None
        if image.get("height") and image.get("width"):
            size = (int(image["height"]), int(image["width"]))
        cases.append(
            GroundTruthCase(
                image_path=_resolve(root, str(image["file_name"])),
                category=name,
                prompt=prompt,
                boxes=tuple(boxes),
                annotation_size=size,
                case_id=str(image_id),
            )
        )
    if check_files:
        _check_exist(json_path, [c.image_path for c in cases], "images")
    return cases


def read_mask_folder(csv_path: str | Path, check_files: bool = True) -> list[GroundTruthCase]:
    """A CSV ``image, finding, prompt, mask_file`` next to mask PNGs (the phantom generator's
    ``findings.csv``); paths are relative to the CSV's folder.

    Rows with the same image, finding and prompt are united. An empty prompt falls back to the
    finding's name.
    """
    csv_path = Path(csv_path)
    root = csv_path.parent
    rows = _read_csv(csv_path, MASK_FOLDER_COLUMNS, "a mask-folder table")
    grouped: dict[tuple[str, str, str], list[Path]] = {}
    for line, row in rows:
        image, finding = row["image"].strip(), row["finding"].strip()
        prompt, mask_file = row["prompt"].strip(), row["mask_file"].strip()
        for column, value in (("image", image), ("finding", finding), ("mask_file", mask_file)):
            if not value:
                raise GroundTruthError(f"{csv_path}: row {line}: column '{column}' is empty")
        key = (image, finding, prompt or finding)
        grouped.setdefault(key, []).append(_resolve(root, mask_file))
    cases = [
        GroundTruthCase(
            image_path=_resolve(root, image),
            category=finding,
            prompt=prompt,
            mask_files=tuple(masks),
            case_id=f"{image}|{prompt}",
        )
        for (image, finding, prompt), masks in grouped.items()
    ]
    if check_files:
        _check_exist(csv_path, [c.image_path for c in cases], "images")
        _check_exist(csv_path, [m for c in cases for m in c.mask_files], "mask files")
    return cases


def load_ground_truth(path: str | Path, **options: object) -> list[GroundTruthCase]:
    """Pick the reader from the file: ``.json`` is COCO; a CSV by its columns (``mask_file``:
    mask folder, ``patientId`` + ``Target``: RSNA, ``label_text`` + ``category_name``: MS-CXR).

    ``options`` go to the chosen reader (``images_dir``, ``check_files``, ...).
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        return read_coco(path, **options)  # type: ignore[arg-type]
    header = set(_read_header(path))
    if "mask_file" in header:
        return read_mask_folder(path, **options)  # type: ignore[arg-type]
    if {"patientId", "Target"} <= header:
        return read_rsna_pneumonia(path, **options)  # type: ignore[arg-type]
    if {"label_text", "category_name"} <= header:
        return read_ms_cxr(path, **options)  # type: ignore[arg-type]
    raise GroundTruthError(
        f"{path}: cannot tell the ground-truth format from its columns {sorted(header)}; expected "
        f"MS-CXR ({', '.join(MS_CXR_COLUMNS)}), RSNA ({', '.join(RSNA_COLUMNS)}) or a mask "
        f"folder ({', '.join(MASK_FOLDER_COLUMNS)}), or a COCO .json"
    )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _pixel_span(start: float, stop: float, limit: int) -> tuple[int, int]:
    """Pixels whose centres ``k + 0.5`` lie in ``[start, stop)``, at least one, clipped."""
    if stop <= 0 or start >= limit:
        return 0, 0  # entirely outside the image
    first = math.ceil(start - 0.5)
    last = math.ceil(stop - 0.5)
    if last <= first:
        first = min(max(math.floor(start), 0), limit - 1)
        last = first + 1
    return max(first, 0), min(max(last, 0), limit)


def _read_mask(path: Path, height: int, width: int) -> np.ndarray:
    """Nonzero-is-inside mask file -> bool ``[height, width]`` (nearest resampling if needed)."""
    try:
        with Image.open(path) as image:
            data = np.asarray(image)
    except FileNotFoundError:
        raise GroundTruthError(f"mask file '{path}' does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise GroundTruthError(f"cannot read mask file '{path}': {exc}") from None
    mask = data != 0
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    if mask.shape != (height, width):
        # Nearest neighbour at pixel centres keeps the mask binary and aligned edge to edge.
        rows = _nearest_indices(height, mask.shape[0])
        cols = _nearest_indices(width, mask.shape[1])
        mask = mask[rows[:, None], cols[None, :]]
    return mask


def _nearest_indices(n_out: int, n_in: int) -> np.ndarray:
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out)
    return np.minimum(centres.astype(np.intp), n_in - 1)


def _read_header(path: Path) -> list[str]:
    _require_file(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            first = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GroundTruthError(f"cannot read '{path}': {exc}") from None
    if not first:
        raise GroundTruthError(f"{path} is empty: no header row")
    return [name.strip() for name in first]


def _read_csv(path: Path, required: tuple[str, ...], what: str) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, {column: text})`` after checking the required columns."""
    header = _read_header(path)
    missing = [name for name in required if name not in header]
    if missing:
        raise GroundTruthError(
            f"{path} is missing required column(s) {', '.join(repr(m) for m in missing)} for "
            f"{what} (found: {', '.join(header)})"
        )
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            next(reader)
            for values in reader:
                if not any(v.strip() for v in values):
                    continue  # blank line
                values = values + [""] * (len(header) - len(values))
                row = dict(zip(header, values))
                rows.append((reader.line_num, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GroundTruthError(f"cannot read '{path}': {exc}") from None
    return rows


def _read_json(path: Path) -> dict:
    _require_file(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read '{path}': {exc}") from None
    except json.JSONDecodeError as exc:
        raise GroundTruthError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise GroundTruthError(f"{path}: expected a JSON object at the top level")
    return document


def _require_file(path: Path) -> None:
    if not path.exists():
        raise GroundTruthError(f"ground-truth file '{path}' does not exist")
    if path.is_dir():
        raise GroundTruthError(f"ground-truth path '{path}' is a directory, expected a file")


def _number(path: Path, line: int, row: Mapping[str, str], column: str) -> float:
    text = row[column].strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise GroundTruthError(f"{path}: row {line}: column '{column}' is not a number: {text!r}")
    return value


def _box(path: Path, line: int, row: Mapping[str, str], columns: tuple[str, str, str, str]) -> Box:
    box = tuple(_number(path, line, row, c) for c in columns)
    _check_box(f"{path}: row {line}", box)  # type: ignore[arg-type]
    return box  # type: ignore[return-value]


def _check_box(where: str, box: Box) -> None:
    if box[2] <= 0 or box[3] <= 0:
        raise GroundTruthError(f"{where}: box {box} has a non-positive width or height")


def _optional_size(
    path: Path, line: int, row: Mapping[str, str], height_column: str, width_column: str
) -> tuple[int, int] | None:
    if not row.get(height_column, "").strip() or not row.get(width_column, "").strip():
        return None
    height = _number(path, line, row, height_column)
    width = _number(path, line, row, width_column)
    if height <= 0 or width <= 0:
        raise GroundTruthError(f"{path}: row {line}: image size {height} x {width} is not positive")
    return int(round(height)), int(round(width))


def _resolve(root: Path, name: str) -> Path:
    candidate = Path(name)
    return candidate if candidate.is_absolute() else root / candidate


def _check_exist(source: Path, paths: list[Path], what: str) -> None:
    missing = [p for p in dict.fromkeys(paths) if not p.is_file()]
    if missing:
        listed = ", ".join(f"'{p}'" for p in missing[:_LISTED])
        more = ", ..." if len(missing) > _LISTED else ""
        raise GroundTruthError(
            f"{len(missing)} of the {len(set(paths))} {what} listed in {source} are missing: "
            f"{listed}{more} (pass check_files=False to skip this check)"
        )
