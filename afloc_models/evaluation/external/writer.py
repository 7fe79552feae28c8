"""Write the external test sets to disk in the mask-folder layout ``afloc-eval`` reads.

::

    OUT/synthetic/ext_00000.png (or .dcm)   a simulated study; ext_00000.txt its report
    OUT/synthetic/ground_truth/findings.csv image, finding, side, zone, prompt, mask_file
    OUT/synthetic/ground_truth/masks/*.png  0/255 masks on the image's pixel grid
    OUT/synthetic/ground_truth/manifest.json
    OUT/real/real_cxr_0001_0.png            a real radiograph with inserted findings (same layout)

Usage::

    python -m afloc_models.evaluation.external --out DIR [--n 200] [--seed 7] [--size 320]
        [--cxr-notes DIR] [--no-real] [--variants 4] [--overwrite]

The real set is built from ``../shared/data/cxr-notes`` next to the repository (or
``--cxr-notes``) and from pydicom-data's ``RG1_UNCI.dcm`` when they are there; without them only
the synthetic set is written (with a message saying so). Only the cxr-notes patients of the test
half of :func:`afloc_models.radiograph_split.radiograph_split` are used: the other half may serve
as backgrounds of training studies. Same arguments, same files.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from afloc_models.errors import AFLocError, ConfigError
from afloc_models.radiograph_split import TRAIN, default_cxr_notes, radiograph_split

__all__ = ["SYNTHETIC_DIR", "REAL_DIR", "default_cxr_notes", "write_external_sets", "write_real_set",
           "write_synthetic_set", "main"]

SYNTHETIC_DIR = "synthetic"
REAL_DIR = "real"
GROUND_TRUTH = "ground_truth"
COLUMNS = ("image", "finding", "side", "zone", "prompt", "mask_file")
#: Long side of the real images as written (the sources are 1024 px and 1955 px).
REAL_SIDE = 512
FORMAT_VERSION = 1




def _atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(image: np.ndarray, monochrome1: bool, key: str) -> bytes:
    """A 12-bit CR DICOM of ``image`` (display values, bright = dense); UIDs derived from ``key``."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    values = np.round(np.clip(image, 0, 1) * 4095).astype(np.uint16)
    if monochrome1:
        values = (4095 - values).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.Modality, ds.PatientID, ds.PatientName = "CR", key, "EXTERNAL^SYNTHETIC"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.PixelData = values.tobytes()
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, write_like_original=False)
    return buffer.getvalue()


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path '{out}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder '{out}' is not empty; choose an empty folder or pass --overwrite")
        if not (out / GROUND_TRUTH).is_dir():
            raise ConfigError(f"refusing to overwrite '{out}': it is not an external test set (no {GROUND_TRUTH}/)")
        shutil.rmtree(out)
    (out / GROUND_TRUTH / "masks").mkdir(parents=True, exist_ok=True)


def _finish(out: Path, rows: list[dict], manifest: dict) -> None:
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic(out / GROUND_TRUTH / "findings.csv", table.getvalue().encode("utf-8"))
    _atomic(out / GROUND_TRUTH / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))


def _rows(stem: str, image_name: str, findings, out: Path) -> list[dict]:
    rows = []
    for k, finding in enumerate(findings):
        mask_name = f"{stem}_{k}_{finding.name}.png"
        _atomic(out / GROUND_TRUTH / "masks" / mask_name, _png(finding.mask.astype(np.uint8) * 255))
        rows.append({"image": f"../{image_name}", "finding": finding.name, "side": finding.side or "",
                     "zone": finding.zone or "", "prompt": finding.prompt, "mask_file": f"masks/{mask_name}"})
    return rows


def write_synthetic_set(out_dir: str | os.PathLike, n: int, seed: int, size: int = 320, overwrite: bool = False) -> Path:
    """Write ``n`` simulated studies (case ``i`` depends only on ``(seed, i)``)."""
    from afloc_models.evaluation.external.synthetic import generate_case

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"number of external cases must be a positive integer, got {n!r}")
    out = Path(out_dir)
    _prepare(out, overwrite)
    rows: list[dict] = []
    storages: dict[str, int] = {}
    for index in range(int(n)):
        case = generate_case(np.random.default_rng([int(seed), 7919, index]), size)
        stem = f"ext_{index:05d}"
        rows += _rows(stem, f"{stem}.{'png' if case.storage == 'png8' else 'dcm'}", case.findings, out)
        _atomic(out / f"{stem}.txt", case.report.encode("utf-8"))
        storages[case.storage] = storages.get(case.storage, 0) + 1
        if case.storage == "png8":
            _atomic(out / f"{stem}.png", _png(np.round(case.image * 255).astype(np.uint8)))
        else:
            _atomic(out / f"{stem}.dcm", _dicom(case.image, case.storage == "dicom-mono1", f"{seed}-{index}"))
    _finish(out, rows, {"generator": "afloc-external-synthetic", "format_version": FORMAT_VERSION, "n": int(n),
                        "seed": int(seed), "size": int(size), "storage": storages,
                        "convention": "patient right = image left", "use": "evaluation only"})
    return out


def _real_sources(cxr_notes: Optional[Path]) -> list[tuple[str, Path]]:
    sources: list[tuple[str, Path]] = []
    if cxr_notes is not None and (cxr_notes / "pairs.csv").is_file():
        with (cxr_notes / "pairs.csv").open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                image = cxr_notes / row["file"]
                # Patients of the training split may be backgrounds of training studies
                # (afloc-phantoms --real-fraction): never test on them.
                if radiograph_split(row.get("patient", row["id"])) == TRAIN:
                    continue
                if image.is_file():
                    sources.append((row["id"], image))
    spec = importlib.util.find_spec("data_store")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "RG1_UNCI.dcm"
        if candidate.is_file():
            sources.append(("RG1_UNCI", candidate))
            break
    return sources


def write_real_set(out_dir: str | os.PathLike, seed: int, cxr_notes: Optional[Path] = None, variants: int = 4,
                   overwrite: bool = False, limit: Optional[int] = None) -> Optional[Path]:
    """Insert findings into every real radiograph whose lung fields are found, ``variants`` times
    each (RG1_UNCI.dcm: ``3 * variants``). Returns None when no real radiograph is available."""
    from scipy import ndimage

    from afloc_models.evaluation.external.inserted import estimate_lungs, insert_findings
    from afloc_models.imaging import read_image, to_grayscale

    sources = _real_sources(cxr_notes)
    if limit is not None:
        sources = sources[: int(limit)] + [s for s in sources[int(limit):] if s[0] == "RG1_UNCI"]
    if not sources:
        return None
    out = Path(out_dir)
    _prepare(out, overwrite)
    rows: list[dict] = []
    used, skipped = [], []
    for number, (name, path) in enumerate(sources):
        pixels = read_image(path).pixels
        pixels = to_grayscale(pixels) if pixels.ndim == 3 else pixels
        factor = REAL_SIDE / max(pixels.shape)
        pixels = np.clip(ndimage.zoom(pixels.astype(np.float32), factor, order=1), 0, 1)
        lungs = estimate_lungs(pixels)
        if lungs is None:
            skipped.append(name)
            continue
        used.append(name)
        for variant in range(variants * (3 if name == "RG1_UNCI" else 1)):
            case = insert_findings(np.random.default_rng([int(seed), 104729, number, variant]), pixels, lungs)
            if not case.findings:
                continue
            stem = f"real_{name}_{variant}"
            rows += _rows(stem, f"{stem}.png", case.findings, out)
            _atomic(out / f"{stem}.png", _png(np.round(case.image * 255).astype(np.uint8)))
    _finish(out, rows, {"generator": "afloc-external-inserted", "format_version": FORMAT_VERSION,
                        "seed": int(seed), "variants": int(variants), "long_side": REAL_SIDE,
                        "sources_used": used, "sources_skipped_no_lung_fields": skipped,
                        "convention": "patient right = image left", "use": "evaluation only",
                        "licences": "cxr-notes images keep their pairs.csv licence (CC BY / CC BY-SA / "
                                    "CC BY-NC-SA); RG1_UNCI.dcm: pydicom-data (MIT)"})
    return out


def write_external_sets(out_dir: str | os.PathLike, n: int = 200, seed: int = 7, size: int = 320,
                        cxr_notes: Optional[Path] = None, real: bool = True, variants: int = 4,
                        overwrite: bool = False) -> dict[str, Path]:
    """Both sets under ``out_dir``; returns ``{"synthetic": path, "real": path}`` (real only if built)."""
    out = Path(out_dir)
    sets = {"synthetic": write_synthetic_set(out / SYNTHETIC_DIR, n, seed, size, overwrite)}
    if real:
        built = write_real_set(out / REAL_DIR, seed, cxr_notes if cxr_notes is not None else default_cxr_notes(),
                               variants, overwrite)
        if built is not None:
            sets["real"] = built
    return sets


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m afloc_models.evaluation.external",
                                     description="Write the external localization test sets (evaluation only).")
    parser.add_argument("--out", type=Path, required=True, help="output folder (synthetic/ and real/ inside)")
    parser.add_argument("--n", type=int, default=200, help="simulated studies (default 200)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--size", type=int, default=320, help="long side of simulated images (default 320)")
    parser.add_argument("--cxr-notes", type=Path, default=None, help="real radiographs (default ../shared/data/cxr-notes)")
    parser.add_argument("--variants", type=int, default=4, help="inserted-finding versions per real image (default 4)")
    parser.add_argument("--no-real", action="store_true", help="only the synthetic set")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing external set in --out")
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error(f"--n must be a positive integer, got {args.n}")
    if args.variants <= 0:
        parser.error(f"--variants must be a positive integer, got {args.variants}")
    try:
        sets = write_external_sets(args.out, args.n, args.seed, args.size, args.cxr_notes, not args.no_real,
                                   args.variants, args.overwrite)
    except AFLocError as error:
        print(f"afloc-external: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"afloc-external: error: cannot write to '{args.out}': {error.strerror or error}", file=sys.stderr)
        return 1
    for name, path in sets.items():
        print(f"{name}: {path}")
    if "real" not in sets and not args.no_real:
        print("real: not built (no cxr-notes folder and no pydicom-data RG1_UNCI.dcm found)")
    return 0
