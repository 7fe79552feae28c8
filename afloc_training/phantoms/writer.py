"""Writing phantoms as a MONAI Label datastore folder with ground truth (``afloc-phantoms``)."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

from afloc_models.errors import ConfigError
from afloc_training.phantoms.findings import FINDING_NAMES
from afloc_training.phantoms.generator import DEFAULT_STYLE, MAX_SIZE, MIN_SIZE, generate_phantom
from afloc_training.phantoms.radiographs import default_background_folder, find_backgrounds, generate_on_radiograph
from afloc_training.phantoms.style import STYLES

# Share of studies drawn on real radiographs when a background folder is there (Python API).
DEFAULT_REAL_FRACTION = 0.0

#: The training recipe: ``afloc-phantoms``' defaults (docs/quality-log.md).
#: Varied phantoms with 30% of the studies drawn on real radiographs raised the external pointing
#: game over plain phantoms (15 min of ``small`` on the 2-core CPU); the Python API keeps plain
#: phantoms as its default, which the tests and the demo datastore use.
RECIPE_STYLE = "varied"
RECIPE_REAL_FRACTION = 0.3


def _background_folder(backgrounds: Union[str, os.PathLike, None]) -> Optional[Path]:
    """The cxr-notes folder to draw backgrounds from, or None."""
    if backgrounds is None:
        return None
    if str(backgrounds) == "auto":
        folder = default_background_folder()
        return folder if (folder / "pairs.csv").is_file() else None
    folder = Path(backgrounds)
    if not (folder / "pairs.csv").is_file():
        raise ConfigError(f"background folder '{folder}' has no pairs.csv (expected a cxr-notes folder)")
    return folder

# Ground truth lives here, inside the datastore folder. MONAI Label's LocalDatastore (0.8.5) only
# lists files directly in the images folder and label files under ``labels/<tag>/``, so files in
# this sub-folder are never taken for images or labels.
GROUND_TRUTH_DIR = "ground_truth"


MASKS_DIR = "masks"


FINDINGS_CSV = "findings.csv"


MANIFEST_JSON = "manifest.json"


CSV_COLUMNS = ("image", "finding", "side", "zone", "prompt", "mask_file")


_IMAGE_NAME = re.compile(r"phantom_\d{5,}\.(?:png|txt)")


def _png_bytes(array: np.ndarray) -> bytes:
    """8-bit grayscale PNG of a ``[H, W]`` uint8 array (deterministic: no timestamps)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write via a hidden temp file in the same folder and ``os.replace``.

    An interrupted run leaves either the old file, the complete new one, or a stray
    ``.<name>.*.tmp`` that no datastore pattern (``*.png``) matches: never half a PNG.
    """
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def _check_arguments(out_dir: Path, n: int, size: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ConfigError(f"number of phantoms must be a positive integer, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(
            f"phantom size must be an integer between {MIN_SIZE} and {MAX_SIZE} pixels, got {size!r}"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output path '{out_dir}' is a file, not a folder")


def _clear_previous(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier phantom set, or (``overwrite``) remove that set first."""
    if not out_dir.is_dir():
        return
    old = [p for p in out_dir.iterdir() if _IMAGE_NAME.fullmatch(p.name)]
    ground_truth = out_dir / GROUND_TRUTH_DIR
    if not old and not ground_truth.exists():
        return
    if not overwrite:
        raise ConfigError(
            f"output folder '{out_dir}' already holds phantoms ({len(old)} phantom files"
            f"{' and ' + GROUND_TRUTH_DIR + '/' if ground_truth.exists() else ''}); "
            "choose an empty folder or pass --overwrite to replace them"
        )
    for path in old:
        path.unlink()
    if ground_truth.is_dir():
        shutil.rmtree(ground_truth)
    elif ground_truth.exists():
        ground_truth.unlink()


def _draw(seed: int, size: int, style: str, backgrounds: Optional[str], real_fraction: float, index: int):
    """Study ``index``: on a real background with probability ``real_fraction`` (when there are
    backgrounds), else a phantom. Depends only on the arguments."""
    rng = np.random.default_rng([seed, index])
    if backgrounds and real_fraction > 0:
        choice = np.random.default_rng([seed, index, 1])
        found = find_backgrounds(Path(backgrounds), size)
        if found and choice.random() < real_fraction:
            return generate_on_radiograph(rng, found[int(choice.integers(len(found)))])
    return generate_phantom(rng, size, style)


def _write_phantom(
    out: Path, seed: int, size: int, style: str, backgrounds: Optional[str], real_fraction: float, width: int,
    index: int,
) -> list[dict[str, str]]:
    """Draw study ``index`` and write its report, masks and image; return its findings.csv rows."""
    phantom = _draw(seed, size, style, backgrounds, real_fraction, index)
    stem = f"phantom_{index:0{width}d}"
    masks_dir = out / GROUND_TRUTH_DIR / MASKS_DIR
    _atomic_write(out / f"{stem}.txt", phantom.report.encode("utf-8"))
    rows = []
    for k, finding in enumerate(phantom.findings):
        mask_name = f"{stem}_{k}_{finding.name}.png"
        _atomic_write(masks_dir / mask_name, _png_bytes(finding.mask.astype(np.uint8) * 255))
        rows.append(
            {
                "image": f"../{stem}.png",
                "finding": finding.name,
                "side": finding.side or "",
                "zone": finding.zone or "",
                "prompt": finding.prompt,
                "mask_file": f"{MASKS_DIR}/{mask_name}",
            }
        )
    # The image last: an image that exists always has its report and masks.
    _atomic_write(out / f"{stem}.png", _png_bytes(phantom.image))
    return rows


def write_phantom_datastore(
    out_dir: str | os.PathLike, n: int, seed: int, size: int = 256, overwrite: bool = False, workers: int = 1,
    style: str = DEFAULT_STYLE, backgrounds: Union[str, os.PathLike, None] = "auto",
    real_fraction: float = DEFAULT_REAL_FRACTION,
) -> Path:
    """Write ``n`` phantoms as a MONAI Label local datastore folder and return its path.

    Layout::

        out_dir/phantom_00000.png          8-bit grayscale image, patient's right on the image left
        out_dir/phantom_00000.txt          its report (UTF-8)
        out_dir/ground_truth/findings.csv  image, finding, side, zone, prompt, mask_file: one row
                                           per finding (normal studies have none); paths are
                                           relative to the CSV's folder ("../phantom_00000.png",
                                           "masks/phantom_00000_0_opacity.png"), as
                                           afloc_models.evaluation.read_mask_folder expects
        out_dir/ground_truth/masks/phantom_00000_0_opacity.png   0/255 mask per finding
        out_dir/ground_truth/manifest.json generator settings (n, seed, size)

    Images are 8-bit: every viewer and MONAI Label reader opens them, and the contrast of the
    findings needs no more. Phantom ``i`` depends only on ``(seed, i)``, so the same arguments give
    byte-identical files and a smaller ``n`` gives a prefix of a larger one. Every file is written
    atomically; the image last, so an image that exists always has its report and masks.
    ``workers`` > 1 draws phantoms in that many processes; the files are the same either way.

    ``style`` is the phantoms' look (``plain`` or ``varied``, see :mod:`.style`). With
    ``backgrounds`` (a cxr-notes folder; ``"auto"``: ``../shared/data/cxr-notes`` beside the
    repository when it exists, else none), a ``real_fraction`` share of the studies draws findings
    into real radiographs of that folder's training split instead (:mod:`.radiographs`); without
    one, every study is a phantom.
    Raises ConfigError for bad arguments or when ``out_dir`` already holds phantoms and
    ``overwrite`` is False.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    out = Path(out_dir)
    _check_arguments(out, n, size)
    if style not in STYLES:
        raise ConfigError(f"unknown phantom style {style!r} (known: {', '.join(STYLES)})")
    if not 0.0 <= float(real_fraction) <= 1.0:
        raise ConfigError(f"real_fraction must be between 0 and 1, got {real_fraction!r}")
    folder = _background_folder(backgrounds)
    n_backgrounds = len(find_backgrounds(folder, int(size))) if folder is not None and real_fraction > 0 else 0
    _clear_previous(out, overwrite)
    masks_dir = out / GROUND_TRUTH_DIR / MASKS_DIR
    masks_dir.mkdir(parents=True, exist_ok=True)

    width = max(5, len(str(n - 1)))
    write = functools.partial(
        _write_phantom, out, int(seed), int(size), style, str(folder) if n_backgrounds else None,
        float(real_fraction), width,
    )
    rows: list[dict[str, str]] = []
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=n, desc="afloc-phantoms", unit="image", disable=n <= 50, file=sys.stderr))
        mapper = map
        if workers > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=int(workers)))
            # Ordered results keep findings.csv in index order, as a single process writes it.
            mapper = functools.partial(pool.map, chunksize=16)
        for phantom_rows in mapper(write, range(n)):
            rows.extend(phantom_rows)
            bar.update(1)

    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(out / GROUND_TRUTH_DIR / FINDINGS_CSV, table.getvalue().encode("utf-8"))
    manifest = {
        "generator": "afloc-phantoms",
        "format_version": 1,
        "n": int(n),
        "seed": int(seed),
        "size": int(size),
        "style": style,
        "real_fraction": float(real_fraction) if n_backgrounds else 0.0,
        "real_backgrounds": n_backgrounds,
        "image_bits": 8,
        "convention": "patient right = image left",
        "findings": list(FINDING_NAMES),
    }
    manifest_text = json.dumps(manifest, indent=2) + "\n"
    _atomic_write(out / GROUND_TRUTH_DIR / MANIFEST_JSON, manifest_text.encode("utf-8"))
    return out
