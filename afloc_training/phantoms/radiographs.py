"""Training studies on real anatomy: findings drawn into real chest radiographs.

The training half of ``../shared/data/cxr-notes`` (see :mod:`afloc_models.radiograph_split`;
the other half is kept for the real external test set) gives real backgrounds: real ribs, vessels,
devices, exposure and noise that no phantom has. Each background's lung fields are found from its
pixels (:mod:`.lung_fields`; images where that fails are not used). A study draws 1-3 findings
with the phantoms' choice of findings and report language, places them inside a lung zone, and
writes their masks. Cardiomegaly cannot be drawn into a real image and is left out of these studies.

The backgrounds may already show disease that the written report does not mention (many of these
images are COVID-19 cases): that is label noise the model has to live with, as with real reports.

Nothing here is needed: without the folder, :func:`find_backgrounds` returns an empty list and the
generator draws phantoms only.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from afloc_models.radiograph_split import TRAIN, default_cxr_notes, radiograph_split
from afloc_training.phantoms.anatomy import ZONES, _smooth_noise
from afloc_training.phantoms.findings import _FIELD_OF_VIEW_MM, _Spec, _choose_specs, _prompt
from afloc_training.phantoms.generator import Finding, Phantom
from afloc_training.phantoms.lung_fields import Lungs, find_lung_fields
from afloc_training.phantoms.language import _write_report

__all__ = ["Background", "default_background_folder", "find_backgrounds", "generate_on_radiograph"]

def default_background_folder() -> Path:
    """``../shared/data/cxr-notes`` beside the repository (it may not exist)."""
    return default_cxr_notes()


@dataclass(frozen=True)
class Background:
    """A real radiograph letterboxed to ``[size, size]`` in [0, 1] with its lung fields."""

    name: str
    pixels: np.ndarray
    lungs: Lungs


def find_backgrounds(folder: Optional[Path], size: int) -> list[Background]:
    """The training-split radiographs of a cxr-notes folder whose lungs were found, letterboxed to
    ``size``; an empty list when the folder (or its ``pairs.csv``) is missing."""
    if folder is None or not (Path(folder) / "pairs.csv").is_file():
        return []
    return list(_load_backgrounds(str(Path(folder).resolve()), int(size)))


@functools.lru_cache(maxsize=4)
def _load_backgrounds(folder: str, size: int) -> tuple[Background, ...]:
    from afloc_models.imaging import read_image

    root = Path(folder)
    out = []
    with (root / "pairs.csv").open(newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row.get("id", ""))
    for row in rows:
        if radiograph_split(row.get("patient", row.get("id", ""))) != TRAIN:
            continue
        path = root / row.get("file", "")
        try:
            pixels = read_image(path).pixels
        except Exception:  # noqa: BLE001 - an unreadable background is skipped, never fatal
            continue
        if pixels.ndim == 3:
            pixels = pixels.mean(axis=-1)
        square = _letterbox(pixels.astype(np.float32), size)
        lungs = find_lung_fields(square)
        if lungs is not None:
            out.append(Background(name=row.get("id", path.stem), pixels=square, lungs=lungs))
    return tuple(out)


def _letterbox(pixels: np.ndarray, size: int) -> np.ndarray:
    """Aspect-kept resize into a black ``[size, size]`` square, centred.

    Not :func:`afloc_models.imaging.letterbox` (anti-aliased): that one finds lung fields in 39
    of the cxr-notes training radiographs instead of 37, which changes the recipe's training set
    and, measured, cost the demo recipe's seed 1 most of its maps (docs/quality-log.md, seventeenth
    session). Replace it only together with a new choice of the demo model's seed.
    """
    height, width = pixels.shape
    scale = size / max(height, width)
    resized = ndimage.zoom(pixels, (round(height * scale) / height, round(width * scale) / width), order=1)
    resized = np.clip(resized[:size, :size], 0.0, 1.0)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - resized.shape[0]) // 2, (size - resized.shape[1]) // 2
    out[top: top + resized.shape[0], left: left + resized.shape[1]] = resized
    return out


# ---------------------------------------------------------------------------------------------
# Findings drawn in pixel space


def _rows_of(mask: np.ndarray) -> tuple[int, int]:
    rows = np.nonzero(mask.any(axis=1))[0]
    return int(rows[0]), int(rows[-1])


def _zone_band(lung: np.ndarray, zone: str) -> np.ndarray:
    top, bottom = _rows_of(lung)
    third = (bottom - top + 1) / 3.0
    i = ZONES.index(zone)
    band = np.zeros_like(lung)
    band[int(top + i * third): int(top + (i + 1) * third) + 1] = True
    return band & lung


def _point(rng: np.random.Generator, region: np.ndarray, margin: int) -> tuple[float, float]:
    inner = ndimage.binary_erosion(region, iterations=max(margin, 1)) if margin > 0 else region
    if not inner.any():
        inner = region
    rows, cols = np.nonzero(inner)
    k = int(rng.integers(len(rows)))
    return float(rows[k]), float(cols[k])


def _nodule(rng, image, lungs: Lungs, spec: _Spec, yy, xx):
    size = image.shape[0]
    lung = lungs.side(spec.side)
    radius = rng.uniform(0.014, 0.036) * size
    cy, cx = _point(rng, _zone_band(lung, spec.zone), int(radius) + 2)
    angle = np.arctan2(yy - cy, xx - cx)
    wobble = 1.0 + rng.uniform(0.0, 0.15) * np.sin(rng.integers(3, 7) * angle + rng.uniform(0, 6.3))
    r = np.hypot(yy - cy, xx - cx) / (radius * wobble)
    image += rng.uniform(0.12, 0.3) * np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0))
    return (r <= 0.95) & lung, f"{2 * radius / size * _FIELD_OF_VIEW_MM:.0f}"


def _opacity(rng, image, lungs: Lungs, spec: _Spec, yy, xx):
    size = image.shape[0]
    lung = lungs.side(spec.side)
    cy, cx = _point(rng, _zone_band(lung, spec.zone), int(0.03 * size))
    sigma = rng.uniform(0.03, 0.05) * size
    blob = np.zeros_like(image)
    for _ in range(int(rng.integers(3, 6))):
        oy, ox = rng.normal(0.0, 0.45 * sigma, size=2)
        s = sigma * rng.uniform(0.7, 1.15)
        blob += np.exp(-((yy - cy - oy) ** 2 + (xx - cx - ox) ** 2) / (2 * s * s))
    blob /= max(float(blob.max()), 1e-6)
    strength = np.clip((blob - 0.25) / 0.45, 0.0, 1.0) * lung
    image += rng.uniform(0.12, 0.28) * strength * (1.0 + 0.3 * np.clip(_smooth_noise(rng, image.shape, 1.5), -2, 2) / 2)
    return (blob > 0.45) & lung, ""


def _atelectasis(rng, image, lungs: Lungs, spec: _Spec, yy, xx):
    size = image.shape[0]
    lung = lungs.side(spec.side)
    cy, cx = _point(rng, _zone_band(lung, spec.zone), int(0.03 * size))
    angle = np.deg2rad(rng.uniform(-20, 20))
    length, thickness = rng.uniform(0.1, 0.16) * size, rng.uniform(0.015, 0.03) * size
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    profile = np.exp(-((across / (thickness / 2)) ** 4)) * np.exp(-((along / (length / 2)) ** 8))
    image += rng.uniform(0.15, 0.3) * profile * lung
    return (np.abs(across) < thickness / 2) & (np.abs(along) < length / 2) & lung, ""


def _effusion(rng, image, lungs: Lungs, spec: _Spec, yy, xx):
    sides = ("right", "left") if spec.side == "bilateral" else (spec.side,)
    mask = np.zeros(image.shape, dtype=bool)
    for side in sides:
        lung = lungs.side(side)
        top, bottom = _rows_of(lung)
        cols = np.nonzero(lung.any(axis=0))[0]
        lateral = cols[0] if side == "right" else cols[-1]  # patient right = image left
        width = max(cols[-1] - cols[0], 1)
        depth = (bottom - top) * (rng.uniform(0.15, 0.25) if spec.variant == "small" else rng.uniform(0.25, 0.4))
        towards_medial = np.clip(np.abs(xx - lateral) / width, 0.0, 1.0)
        level = bottom - depth + depth * 0.5 * towards_medial**1.5
        fill = np.clip((yy - level) / (0.02 * image.shape[0]), 0.0, 1.0) * lung
        fluid = float(np.percentile(image[~(lungs.right | lungs.left) & (image > 0.05)], 70)) if image.max() > 0 else 0.7
        image[...] = image * (1.0 - 0.85 * fill) + 0.85 * fill * (fluid + 0.03 * _smooth_noise(rng, image.shape, 3.0))
        mask |= lung & (yy > level)
    return mask, ""


def _pneumothorax(rng, image, lungs: Lungs, spec: _Spec, yy, xx):
    size = image.shape[0]
    lung = lungs.side(spec.side)
    top, bottom = _rows_of(lung)
    depth = int(rng.uniform(0.025, 0.05) * size)
    collapsed = ndimage.binary_erosion(lung, iterations=max(depth, 1))
    if spec.variant == "apical":
        extent = yy < top + (bottom - top) / 3.0
    else:
        cols = np.nonzero(lung.any(axis=0))[0]
        middle = (cols[0] + cols[-1]) / 2.0
        lateral = xx < middle if spec.side == "right" else xx > middle
        extent = lateral & (yy < top + rng.uniform(0.55, 0.8) * (bottom - top))
    region = lung & ~collapsed & extent
    line = collapsed & ~ndimage.binary_erosion(collapsed, iterations=1) & extent
    # Air without lung markings: the detail is smoothed away and the region darkens.
    smooth = ndimage.gaussian_filter(image, 0.02 * size)
    image[...] = np.where(region, 0.6 * smooth + 0.4 * image - rng.uniform(0.05, 0.12), image)
    image += 0.15 * line
    return region, ""


def _edema(rng, image, lungs: Lungs, spec: _Spec, yy, xx):
    size = image.shape[0]
    haze = np.zeros_like(image)
    sigma = rng.uniform(0.08, 0.12) * size
    for side in ("right", "left"):
        lung = lungs.side(side)
        top, bottom = _rows_of(lung)
        cols = np.nonzero(lung.any(axis=0))[0]
        hx = cols[-1] if side == "right" else cols[0]  # the medial edge
        hy = top + 0.45 * (bottom - top)
        haze = np.maximum(haze, np.exp(-(((xx - hx) / sigma) ** 2 + ((yy - hy) / (1.3 * sigma)) ** 2) / 2))
    both = lungs.right | lungs.left
    image += rng.uniform(0.12, 0.22) * haze * both * (1.0 + 0.3 * np.clip(_smooth_noise(rng, image.shape, 1.2), -2, 2) / 2)
    return (haze > 0.45) & both, ""


_DRAW = {
    "nodule": _nodule,
    "opacity": _opacity,
    "atelectasis": _atelectasis,
    "effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "edema": _edema,
}


def generate_on_radiograph(rng: np.random.Generator, background: Background) -> Phantom:
    """One training study on a real radiograph: a :class:`~afloc_training.phantoms.Phantom` whose
    ``image`` is the background ``[size, size]`` uint8 with 1-3 findings drawn in, and their masks."""
    specs: list[_Spec] = []
    for _ in range(20):
        specs = [spec for spec in _choose_specs(rng) if spec.name != "cardiomegaly"]
        if specs:
            break
    image = background.pixels.copy()
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    findings, details = [], []
    for spec in specs:
        mask, detail = _DRAW[spec.name](rng, image, background.lungs, spec, yy, xx)
        findings.append(Finding(name=spec.name, side=spec.side, zone=spec.zone, prompt=_prompt(spec), mask=mask))
        details.append(detail)
    report = _write_report(rng, specs, details)
    out = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Phantom(image=out, report=report, findings=[f for f in findings if f.mask.any()])
