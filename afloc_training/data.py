"""Image-report pairs for AFLoc training: sources, a torch ``Dataset`` and its collate function.

Four sources are recognised by :func:`load_pairs`:

- **MONAI Label datastore folder**: images at the top level of the folder (or of the
  ``images_dir`` named in ``datastore_v2.json``). The report of image ``<id>.<ext>`` is the
  ``report`` field of its image info in ``datastore_v2.json`` (set through
  ``PUT /datastore/image/info``) or, failing that, the sidecar file ``<id>.txt`` next to it.
  Images that are on disk but not yet in ``datastore_v2.json`` are included too.
- **CSV manifest** (a ``.csv`` file): one row per image with an image path column (``file``,
  ``image``, ``path``, ``image_path`` or ``filename``) and a ``report`` (or ``text``) column.
  Relative paths resolve against the CSV's folder. Optional ``id`` and ``patient`` /
  ``subject_id`` columns name the pair and keep one patient's images on one side of the
  train/validation split.
- **MIMIC-CXR-JPG**: a folder holding ``files/pXX/pSUBJECT/sSTUDY/*.jpg``. The study's report
  ``sSTUDY.txt`` from mimic-cxr-reports is looked up at ``files/pXX/pSUBJECT/sSTUDY.txt`` (unzip
  the reports into the same root) or under ``reports_root``. With
  ``mimic-cxr-2.0.0-metadata.csv(.gz)`` in the root only the views in ``views`` (PA, AP) are
  kept; with ``mimic-cxr-2.0.0-split.csv(.gz)`` the official ``validate`` split becomes the
  validation set and the ``test`` split is left out.
- **DICOMweb** (an ``http(s)://`` URL): every CR/DX series whose study has a report in a DICOM
  SR, images downloaded once into a cache (:mod:`afloc_training.dicomweb`).

Every pair skipped while listing (missing image, empty report, other view) is counted in
:class:`PairList` and, except for view filtering, named in a warning. An image that exists but
cannot be decoded is found later, when :class:`PairDataset` loads it: the dataset returns
``None`` for it with a warning, and :class:`ReportCollate` drops it from the batch and reports it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from afloc_models.config import SWAP_KINDS, DataConfig
from afloc_models.errors import AFLocError, EmptyReportError, ImageReadError
from afloc_models.imaging import letterbox, read_image, to_grayscale
from afloc_models.intensity import equalize_content
from afloc_models.text_normalization import is_negated, mirror_sides
from afloc_models.tokenization import ReportTokenizer, TokenizedReports
from afloc_training.finding_swap import swap_finding
from afloc_training.location_swap import swap_location
from afloc_training.reports import parse_report

logger = logging.getLogger("afloc.training")

#: Image file endings recognised when scanning a datastore folder (lower case, longest first).
IMAGE_SUFFIXES = (".nii.gz", ".dicom", ".jpeg", ".tiff", ".nii", ".dcm", ".png", ".jpg", ".tif", ".bmp", ".npy")
DATASTORE_FILE = "datastore_v2.json"
CSV_IMAGE_COLUMNS = ("file", "image", "path", "image_path", "filename")
CSV_REPORT_COLUMNS = ("report", "text")
CSV_GROUP_COLUMNS = ("patient", "patient_id", "subject_id", "subject")
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
_MIMIC_DIR = re.compile(r"^p\d{2}$")
#: Warnings kept in a PairList (all are logged); beyond this only the counts grow.
MAX_KEPT_WARNINGS = 1000


@dataclass(frozen=True)
class ImageReportPair:
    """One training pair.

    Attributes:
        id: a name for the pair (datastore image id, CSV ``id``, MIMIC dicom id).
        image: the image file.
        sentences: the parsed report (non-empty normalised sentences).
        group: patient (or other unit) that must stay on one side of the validation split.
        split: the source's own split (``train``, ``validate``), or None when it has none.
    """

    id: str
    image: Path
    sentences: tuple[str, ...]
    group: str
    split: Optional[str] = None


@dataclass
class PairList(Sequence):
    """The usable pairs of a source, with what was skipped and why.

    ``skipped`` counts by reason: ``empty_report`` (no report, or nothing left after parsing),
    ``missing_image``, ``other_view`` (MIMIC view filter) and ``test_split`` (MIMIC test split).
    """

    pairs: list[ImageReportPair]
    source: Union[Path, str]  #: a folder or file, or a DICOMweb URL
    kind: str  #: ``datastore``, ``csv``, ``mimic`` or ``dicomweb``
    skipped: Counter = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index):  # type: ignore[override]
        return self.pairs[index]

    def __iter__(self) -> Iterator[ImageReportPair]:
        return iter(self.pairs)

    @property
    def skipped_empty_report(self) -> int:
        return self.skipped["empty_report"]

    @property
    def skipped_missing_image(self) -> int:
        return self.skipped["missing_image"]

    def summary(self) -> str:
        """One line: how many pairs, from where, and what was skipped."""
        parts = [f"{len(self.pairs)} image-report pairs from {self.kind} '{self.source}'"]
        skipped = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.skipped.items()) if n)
        if skipped:
            parts.append(f"skipped: {skipped}")
        return "; ".join(parts)

    def _skip(self, reason: str, message: Optional[str]) -> None:
        self.skipped[reason] += 1
        if message is None:
            return
        logger.warning(message)
        if len(self.warnings) < MAX_KEPT_WARNINGS:
            self.warnings.append(message)


# ----------------------------------------------------------------------------------- sources
def load_pairs(
    source: Union[str, Path],
    reports_root: Union[str, Path, None] = None,
    views: Sequence[str] = ("PA", "AP"),
) -> PairList:
    """List the image-report pairs of a datastore folder, a CSV manifest or a MIMIC-CXR-JPG tree.

    Args:
        source: a folder (MONAI Label datastore or MIMIC-CXR-JPG root), a ``.csv`` file or a
            DICOMweb URL (``http(s)://host/dicom-web``).
        reports_root: MIMIC only: where the mimic-cxr-reports tree lives, if not in ``source``.
        views: MIMIC only: ``ViewPosition`` values to keep when the metadata CSV is present.

    Raises:
        AFLocError: the source does not exist, is malformed, or yields no usable pair.
    """
    if isinstance(source, str) and source.strip().lower().startswith(("http://", "https://")):
        from afloc_training.dicomweb import load_dicomweb_pairs

        pairs = load_dicomweb_pairs(source.strip())
        if not pairs.pairs:
            detail = f" ({'; '.join(pairs.warnings[:3])}{' ...' if len(pairs.warnings) > 3 else ''})" if pairs.warnings else ""
            raise AFLocError(f"no usable image-report pairs at '{source}': {pairs.summary()}{detail}")
        return pairs
    path = Path(source).expanduser()
    if not path.exists():
        raise AFLocError(f"training data '{path}' does not exist")
    if path.is_file():
        if not path.name.lower().endswith((".csv", ".csv.gz")):
            raise AFLocError(f"training data '{path}' is a file but not a .csv manifest")
        pairs = _csv_pairs(path)
    elif (path / "files").is_dir() and any(_MIMIC_DIR.match(p.name) for p in (path / "files").iterdir()):
        pairs = _mimic_pairs(path, Path(reports_root) if reports_root else None, views)
    else:
        pairs = _datastore_pairs(path)
    if not pairs.pairs:
        detail = f" ({'; '.join(pairs.warnings[:3])}{' ...' if len(pairs.warnings) > 3 else ''})" if pairs.warnings else ""
        raise AFLocError(f"no usable image-report pairs in '{path}': {pairs.summary()}{detail}")
    return pairs


def _datastore_pairs(root: Path) -> PairList:
    result = PairList(pairs=[], source=root, kind="datastore")
    image_dir, listed = root, {}
    config_file = root / DATASTORE_FILE
    if config_file.is_file():
        try:
            document = json.loads(config_file.read_text(encoding="utf-8"))
            image_dir = root / str(document.get("images_dir") or ".")
            listed = {str(k): v for k, v in (document.get("objects") or {}).items()}
            if not all(isinstance(v, dict) for v in listed.values()):
                raise ValueError("'objects' entries must be mappings")
        except (ValueError, AttributeError, UnicodeDecodeError) as exc:
            raise AFLocError(f"'{config_file}' is not a valid MONAI Label datastore file: {exc}") from None

    entries: dict[str, tuple[Path, object]] = {}
    for image_id, obj in listed.items():
        image = obj.get("image") or {}
        info = image.get("info") or {}
        entries[image_id] = (image_dir / f"{image_id}{image.get('ext', '')}", info.get("report"))
    if image_dir.is_dir():
        for file in sorted(image_dir.iterdir()):
            suffix = _image_suffix(file.name)
            if suffix and file.is_file():
                entries.setdefault(file.name[: -len(suffix)], (file, None))

    for image_id in sorted(entries):
        image, report = entries[image_id]
        sidecar = image_dir / f"{image_id}.txt"
        if not image.is_file():
            result._skip("missing_image", f"skipped '{image_id}': image file '{image}' does not exist")
            continue
        if _is_blank(report) and sidecar.is_file():
            report = _read_text(sidecar)
        if _is_blank(report):
            result._skip(
                "empty_report",
                f"skipped image '{image}': no report (no sidecar '{sidecar.name}' and no 'report' in its datastore info)",
            )
            continue
        _add(result, image_id, image, report, group=image_id, origin=str(image))
    return result


def _csv_pairs(csv_path: Path) -> PairList:
    result = PairList(pairs=[], source=csv_path, kind="csv")
    rows = _read_csv_rows(csv_path)
    header = list(rows[0].keys()) if rows else _csv_header(csv_path)
    image_col = next((c for c in CSV_IMAGE_COLUMNS if c in header), None)
    report_col = next((c for c in CSV_REPORT_COLUMNS if c in header), None)
    if image_col is None or report_col is None:
        raise AFLocError(
            f"CSV manifest '{csv_path}' needs an image column ({' or '.join(CSV_IMAGE_COLUMNS)}) and a "
            f"report column ({' or '.join(CSV_REPORT_COLUMNS)}); found columns: {', '.join(header) or 'none'}"
        )
    group_col = next((c for c in CSV_GROUP_COLUMNS if c in header), None)
    base = csv_path.parent
    for line, row in enumerate(rows, start=2):
        name = (row.get(image_col) or "").strip()
        pair_id = (row.get("id") or "").strip() or (Path(name).stem if name else f"row{line}")
        where = f"'{csv_path.name}' line {line}"
        if not name:
            result._skip("missing_image", f"skipped {where}: the '{image_col}' cell is empty")
            continue
        image = Path(name).expanduser()
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            result._skip("missing_image", f"skipped {where}: image file '{image}' does not exist")
            continue
        group = (row.get(group_col) or "").strip() if group_col else ""
        _add(result, pair_id, image, row.get(report_col), group=group or pair_id, origin=f"{where} ('{image}')")
    return result


def _mimic_pairs(root: Path, reports_root: Optional[Path], views: Sequence[str]) -> PairList:
    result = PairList(pairs=[], source=root, kind="mimic")
    view_of = _mimic_table(root, MIMIC_METADATA, "ViewPosition")
    split_of = _mimic_table(root, MIMIC_SPLIT, "split")
    wanted = {v.upper() for v in views}
    if view_of is None:
        message = f"'{root}' has no {MIMIC_METADATA}(.gz): images of every view are used"
        logger.warning(message)
        result.warnings.append(message)
    report_bases = [reports_root / "files", reports_root] if reports_root else []
    report_bases.append(root / "files")
    for group_dir in _sorted_dirs(root / "files", _MIMIC_DIR):
        for subject_dir in _sorted_dirs(group_dir, re.compile(r"^p\d+$")):
            for study_dir in _sorted_dirs(subject_dir, re.compile(r"^s\d+$")):
                images = sorted(p for p in study_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
                report_text, report_file = None, None
                for base in report_bases:
                    candidate = base / group_dir.name / subject_dir.name / f"{study_dir.name}.txt"
                    if candidate.is_file():
                        report_file, report_text = candidate, _read_text(candidate)
                        break
                for image in images:
                    dicom_id = image.stem
                    if view_of is not None and view_of.get(dicom_id, "").upper() not in wanted:
                        result._skip("other_view", None)
                        continue
                    split = split_of.get(dicom_id) if split_of is not None else None
                    if split == "test":
                        result._skip("test_split", None)
                        continue
                    if report_file is None:
                        result._skip(
                            "empty_report",
                            f"skipped image '{image}': no report '{study_dir.name}.txt' found for study {study_dir.name}",
                        )
                        continue
                    _add(
                        result, dicom_id, image, report_text, group=subject_dir.name,
                        origin=f"'{image}' (report '{report_file}')", split=split,
                    )
    return result


def _add(
    result: PairList, pair_id: str, image: Path, report: object, group: str, origin: str, split: Optional[str] = None
) -> None:
    if isinstance(report, (list, tuple)):
        report = " ".join(str(s) for s in report)
    sentences = parse_report(report)
    if not sentences:
        result._skip("empty_report", f"skipped {origin}: the report is empty after parsing")
        return
    result.pairs.append(ImageReportPair(pair_id, image, tuple(sentences), group, split))


def _mimic_table(root: Path, name: str, column: str) -> Optional[dict[str, str]]:
    """``dicom_id -> column`` from a MIMIC metadata CSV (plain or gzipped), or None if absent."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            rows = _read_csv_rows(candidate)
            if rows and ("dicom_id" not in rows[0] or column not in rows[0]):
                raise AFLocError(f"'{candidate}' lacks the 'dicom_id' or '{column}' column")
            return {row["dicom_id"]: (row[column] or "").strip() for row in rows}
    return None


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    try:
        raw = gzip.open(path, "rb").read() if path.name.lower().endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise AFLocError(f"cannot read CSV '{path}': {exc}") from None
    return rows


def _csv_header(path: Path) -> list[str]:
    try:
        first = path.read_text(encoding="utf-8-sig").splitlines()[:1]
    except (OSError, UnicodeDecodeError):
        return []
    return [c.strip() for c in next(csv.reader(first), [])] if first else []


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        logger.warning("cannot read report '%s': %s", path, exc)
        return None


def _is_blank(report: object) -> bool:
    if report is None:
        return True
    if isinstance(report, str):
        return not report.strip()
    if isinstance(report, (list, tuple)):
        return not any(str(s).strip() for s in report)
    return False


def _image_suffix(name: str) -> Optional[str]:
    lower = name.lower()
    return next((name[len(name) - len(s):] for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def _sorted_dirs(parent: Path, pattern: re.Pattern) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir() and pattern.match(p.name))


# ------------------------------------------------------------------------------------- split
def split_pairs(
    pairs: Sequence[ImageReportPair], val_fraction: float, seed: int = 0
) -> tuple[list[ImageReportPair], list[ImageReportPair]]:
    """Deterministic train/validation split that keeps each ``group`` (patient) on one side.

    When the source has its own split (MIMIC's ``validate``), that split is used as is.
    Otherwise about ``val_fraction`` of the pairs go to validation (at least 2 when the fraction is
    positive and at least 4 pairs would remain for training, so a contrastive validation loss exists).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise AFLocError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if any(p.split for p in pairs):
        return [p for p in pairs if p.split != "validate"], [p for p in pairs if p.split == "validate"]
    target = int(round(len(pairs) * val_fraction))
    if val_fraction > 0:
        target = max(target, 2)
    if target == 0 or len(pairs) - target < 4:
        return list(pairs), []
    groups = sorted({p.group for p in pairs})
    random.Random(seed).shuffle(groups)
    sizes = Counter(p.group for p in pairs)
    val_groups: set[str] = set()
    taken = 0
    for group in groups:
        if taken >= target:
            break
        val_groups.add(group)
        taken += sizes[group]
    return [p for p in pairs if p.group not in val_groups], [p for p in pairs if p.group in val_groups]


# ------------------------------------------------------------------------------------ dataset
@dataclass
class Sample:
    """One loaded pair: ``image`` ``[C, crop, crop]`` normalised, its report, its dataset index."""

    image: torch.Tensor
    sentences: tuple[str, ...]
    index: int
    #: The report with its sides or zones exchanged, or with a finding renamed (a hard negative;
    #: ``loss.swap_negatives``), None when it has nothing to swap or negatives are off.
    negative: Optional[tuple[str, ...]] = None


@dataclass
class Skipped:
    """Stand-in for a pair whose image could not be decoded."""

    index: int
    path: str
    reason: str


class PairDataset(Dataset):
    """Loads, letterboxes, crops and normalises the images of ``pairs``.

    Training crops are random but reproducible: the crop of item ``i`` in epoch ``e`` depends only on
    ``(seed, e, i)``, so a resumed run sees exactly the crops an uninterrupted run would have seen,
    whatever the number of DataLoader workers. Call :meth:`set_epoch` before iterating an epoch
    (workers are re-created per epoch, so they pick it up).

    Args:
        pairs: the pairs to serve.
        data: ``resize`` (letterbox side), ``crop``, ``mean``, ``std``.
        channels: 1 (grayscale; colour becomes luma) or 3 (grayscale is repeated).
        train: random crop when True, centre crop when False.
        seed: base seed of the crops.
        negatives: training items also carry a swapped copy of their report: ``location``
            (or True) its sides or zones exchanged (:mod:`afloc_training.location_swap`),
            ``finding`` one finding renamed (:mod:`afloc_training.finding_swap`); never for
            validation. False or None: no copies.
    """

    def __init__(
        self,
        pairs: Sequence[ImageReportPair],
        data: DataConfig,
        channels: int,
        train: bool,
        seed: int = 0,
        negatives: Union[bool, str, None] = False,
    ):
        if data.crop > data.resize:
            raise AFLocError(f"data.crop ({data.crop}) must not exceed data.resize ({data.resize})")
        if data.std <= 0:
            raise AFLocError(f"data.std must be positive, got {data.std}")
        self.pairs = list(pairs)
        self.data = data
        self.channels = channels
        self.train = train
        self.seed = seed
        kind = "location" if negatives is True else (negatives or None)
        if kind is not None and kind not in SWAP_KINDS:
            raise AFLocError(f"negatives must be one of {', '.join(SWAP_KINDS)}, True, False or None; got {negatives!r}")
        #: What training items' negative copies exchange (None: no copies).
        self.negative_kind: Optional[str] = kind if train else None
        self.epoch = 0

    @property
    def negatives(self) -> bool:
        """Whether training items carry a swapped copy of their report."""
        return self.negative_kind is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Union[Sample, Skipped]:
        pair = self.pairs[index]
        try:
            draft = self.data.resize if self.data.jpeg_draft else None
            pixels = read_image(pair.image, jpeg_min_side=draft).pixels
        except ImageReadError as exc:
            logger.warning("skipped unreadable image: %s", exc)
            return Skipped(index=index, path=str(pair.image), reason=exc.reason)
        sentences = self.sentences(pair.sentences, index)
        mirrored = self.mirrored(index)
        if mirrored:
            sentences = tuple(mirror_sides(sentence) for sentence in sentences)
        negative = None
        if self.negatives:
            swap = swap_finding if self.negative_kind == "finding" else swap_location
            negative = swap(sentences, np.random.default_rng([self.seed, self.epoch, index, 2]))
        image = self.transform(pixels, index)
        if mirrored:
            image = image.flip(-1)
        return Sample(image=image, sentences=sentences, index=index, negative=negative)

    def mirrored(self, index: int) -> bool:
        """Whether item ``index`` is mirrored left-right this epoch (``data.hflip``; reproducible
        from ``(seed, epoch, index)`` like the crops, and drawn from a stream of its own)."""
        if not (self.train and self.data.hflip > 0):
            return False
        return bool(np.random.default_rng([self.seed, self.epoch, index, 3]).random() < self.data.hflip)

    def sentences(self, sentences: tuple[str, ...], index: int) -> tuple[str, ...]:
        """The report sentences item ``index`` trains on this epoch (``data.drop_negated``,
        ``data.min_sentence_words``, ``data.sample_sentences``; reproducible from ``(seed, epoch,
        index)`` like the crops)."""
        if self.data.drop_negated:
            stated = tuple(s for s in sentences if not is_negated(s))
            sentences = stated or sentences
        long_enough = tuple(s for s in sentences if len(s.split()) >= self.data.min_sentence_words)
        sentences = long_enough or sentences
        if not (self.train and self.data.sample_sentences) or len(sentences) < 2:
            return sentences
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        chosen = rng.choice(len(sentences), size=int(rng.integers(1, len(sentences))), replace=False)
        return tuple(sentences[i] for i in chosen)

    def transform(self, pixels: np.ndarray, index: int) -> torch.Tensor:
        """``[H, W]`` or ``[H, W, 3]`` pixels in [0, 1] -> ``[C, crop, crop]`` normalised tensor."""
        if self.channels == 1 and pixels.ndim == 3:
            pixels = to_grayscale(pixels)
        if self.train and self.data.augment > 0:
            # Its own stream, so the crops below stay those of a run without augmentation.
            variation = np.random.default_rng([self.seed, self.epoch, index, 1])
            if variation.random() < self.data.augment:
                from afloc_training.augment import augment_radiograph

                gray = pixels if pixels.ndim == 2 else to_grayscale(pixels)
                pixels = augment_radiograph(gray, variation, invert=self.data.augment_invert)
        square, box = letterbox(pixels, self.data.resize)
        if self.data.equalize:
            square = equalize_content(square, box.pad_top, box.pad_left, *box.resized_shape)
        size, crop = self.data.resize, self.data.crop
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            top, left = (int(v) for v in rng.integers(0, size - crop + 1, size=2))
        else:
            top = left = (size - crop) // 2
        square = square[top : top + crop, left : left + crop]
        tensor = torch.from_numpy(np.ascontiguousarray(square, dtype=np.float32))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        if tensor.shape[0] != self.channels:
            tensor = tensor.expand(self.channels, -1, -1).contiguous()
        return (tensor - self.data.mean) / self.data.std


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images: ``[B, C, H, W]`` normalised images (B may be 0 when every image was unreadable).
        tokens: tokenized reports (None when B is 0).
        indices: ``[B]`` dataset indices.
        skipped: pairs dropped from this batch (unreadable image, untokenizable report).
    """

    images: torch.Tensor
    tokens: Optional[TokenizedReports]
    indices: torch.Tensor
    skipped: list[Skipped]
    #: ``[B]`` bool when the batch carries location-swapped reports: ``tokens`` then holds 2B
    #: reports, the B true ones followed by B swapped ones (a report without a swapped copy
    #: repeats itself there and is marked False here).
    negative_valid: Optional[torch.Tensor] = None
    #: K > 0 when the batch carries mirrored reports for the mirror consistency
    #: (``loss.mirror_consistency``): ``tokens`` then ends with the first K samples' reports, sides
    #: exchanged sentence by sentence, after the true (and swapped) ones.
    mirror_rows: int = 0

    def __len__(self) -> int:
        return int(self.images.shape[0])


class ReportCollate:
    """Collate function: drops unreadable items and tokenizes the reports (runs in DataLoader workers)."""

    def __init__(self, tokenizer: ReportTokenizer, channels: int, crop: int, mirror_rows: int = 0):
        self.tokenizer = tokenizer
        self.empty_shape = (0, channels, crop, crop)
        self.mirror_rows = mirror_rows  # mirrored reports of the first K samples (see Batch)

    def __call__(self, items: Sequence[Union[Sample, Skipped]]) -> Batch:
        skipped = [s for s in items if isinstance(s, Skipped)]
        samples = [s for s in items if isinstance(s, Sample)]
        tokens = None
        if samples:
            try:
                tokens = self.tokenizer(_reports(samples, self.mirror_rows))
            except EmptyReportError:
                samples, tokens = self._tokenize_one_by_one(samples, skipped)
        if not samples:
            return Batch(torch.zeros(self.empty_shape), None, torch.zeros(0, dtype=torch.long), skipped)
        negative_valid = None
        if any(s.negative is not None for s in samples):
            negative_valid = torch.tensor([s.negative is not None for s in samples], dtype=torch.bool)
        return Batch(
            images=torch.stack([s.image for s in samples]),
            tokens=tokens,
            indices=torch.tensor([s.index for s in samples], dtype=torch.long),
            skipped=skipped,
            negative_valid=negative_valid,
            mirror_rows=min(self.mirror_rows, len(samples)),  # as many as _reports appended
        )

    def _tokenize_one_by_one(self, samples: list[Sample], skipped: list[Skipped]):
        """Find the reports the tokenizer refuses (no known token), drop them, tokenize the rest."""
        kept = []
        for sample in samples:
            try:
                self.tokenizer([list(sample.sentences)])
                kept.append(sample)
            except EmptyReportError as exc:
                logger.warning("skipped item %d: %s", sample.index, exc)
                skipped.append(Skipped(sample.index, "", f"report not tokenizable: {exc}"))
        tokens = self.tokenizer(_reports(kept, self.mirror_rows)) if kept else None
        return kept, tokens


def _reports(samples: Sequence[Sample], mirror_rows: int = 0) -> list[list[str]]:
    """The reports a batch tokenizes: the samples' own, then, when any sample carries a
    location-swapped copy, one copy per sample (a sample without one repeats its report; swapping
    words keeps every word the tokenizer knew, so the copies tokenize whenever the reports do),
    then the first ``mirror_rows`` samples' reports (all of them when there are fewer) with their
    sides exchanged."""
    reports = [list(s.sentences) for s in samples]
    if any(s.negative is not None for s in samples):
        reports += [list(s.negative or s.sentences) for s in samples]
    reports += [[mirror_sides(sentence) for sentence in s.sentences] for s in samples[:mirror_rows]]
    return reports


def describe_skipped(pairs: Sequence[ImageReportPair], skipped: Skipped) -> str:
    """A log line naming a pair dropped at load time."""
    path = skipped.path or str(pairs[skipped.index].image)
    return f"skipped '{path}': {skipped.reason}"


__all__ = [
    "Batch",
    "ImageReportPair",
    "PairDataset",
    "PairList",
    "ReportCollate",
    "Sample",
    "Skipped",
    "describe_skipped",
    "load_pairs",
    "split_pairs",
]
