"""Lesions inserted into real radiographs: real anatomy, exposure and devices, known masks.

The lung fields are estimated from the image itself (dark regions inside the body that do not
touch the border, one on each side of the midline, with size and shape checks); an image whose
lungs cannot be found that way is skipped, never guessed. Findings are then painted into the
display image inside a lung: a nodule or mass, a consolidation, an upright pleural effusion with a
meniscus, a pneumothorax (markings wiped out beyond a visceral pleural line), discoid atelectasis,
or bilateral perihilar edema. Cardiomegaly cannot be inserted and is absent from these sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

from afloc_models.evaluation.external.language import prompt_for
from afloc_models.evaluation.external.synthetic import ExternalFinding

__all__ = ["LungFields", "estimate_lungs", "insert_findings", "InsertedCase", "INSERTABLE"]

#: Findings this module can insert (no cardiomegaly: it is not a lesion one can paint in).
INSERTABLE = ("opacity", "nodule", "effusion", "pneumothorax", "atelectasis", "edema")
#: Assumed width of one lung field in mm, to size lesions when the image has no pixel spacing.
_LUNG_WIDTH_MM = 125.0
_WORK_SIDE = 256


@dataclass(frozen=True)
class LungFields:
    """Estimated lung masks ``[H, W]`` bool: ``right`` is the patient's right (image left)."""

    right: np.ndarray = field(repr=False)
    left: np.ndarray = field(repr=False)

    def side(self, name: str) -> np.ndarray:
        return self.right if name == "right" else self.left

    @property
    def both(self) -> np.ndarray:
        return self.right | self.left


@dataclass(frozen=True)
class InsertedCase:
    """A real radiograph with inserted findings: ``image`` ``[H, W]`` float in [0, 1]."""

    image: np.ndarray = field(repr=False, compare=False)
    findings: list[ExternalFinding]
    lungs: LungFields = field(repr=False, compare=False)


def estimate_lungs(pixels: np.ndarray) -> Optional[LungFields]:
    """Lung fields of a frontal radiograph ``[H, W]`` in [0, 1] (bright = dense), or None.

    None when the two fields are not found with plausible sizes and positions (cropped lungs
    touching the border, white-out, lateral views, heavy burned-in frames).
    """
    height, width = pixels.shape
    factor = _WORK_SIDE / max(height, width)
    small = ndimage.zoom(pixels.astype(np.float32), factor, order=1)
    h, w = small.shape
    small = ndimage.gaussian_filter(small, 1.5)
    low, high = np.percentile(small, [1, 99])
    small = np.clip((small - low) / max(high - low, 1e-6), 0, 1)
    core = small[int(0.15 * h) : int(0.85 * h), int(0.1 * w) : int(0.9 * w)]
    threshold = threshold_otsu(core)
    dark = ndimage.binary_opening(small < threshold, iterations=2)
    # Lungs often touch the outside air through a narrow neck, axilla or crop edge: erode more and
    # more until two separate fields show up, then grow them back inside the dark region.
    # The neck and shoulders join the apices to the air above them: as a last resort, cut the top.
    for cut in (0.0, 0.1):
        cut_dark = dark.copy()
        cut_dark[: int(cut * h)] = False
        for erosion in (0, 3, 6, 9):
            seeds = ndimage.binary_erosion(cut_dark, iterations=erosion) if erosion else cut_dark
            best = _two_fields(seeds, h, w)
            fields = None if best is None else _grow(best, cut_dark, erosion, (height, width), int(cut * h))
            if fields is not None:
                return fields
    return None


def _grow(best: dict, dark: np.ndarray, erosion: int, shape: tuple[int, int], top: int) -> Optional[LungFields]:
    """Full-resolution masks of the two chosen components, grown back by ``erosion`` inside
    ``dark``; None when a field runs along the image edge or the ``top`` rows cut away (it leaked
    into the outside air)."""
    labels = best.pop("labels")
    h, w = dark.shape
    height, width = shape
    masks = {}
    for side, (_, index) in best.items():
        region = labels == index
        if erosion:
            region = ndimage.binary_dilation(region, iterations=erosion) & dark
        region[:3], region[-3:], region[:, :3], region[:, -3:] = False, False, False, False
        labelled, parts = ndimage.label(region)
        if parts == 0:
            return None
        region = labelled == 1 + int(np.argmax(ndimage.sum(region, labelled, index=np.arange(1, parts + 1))))
        region = ndimage.binary_fill_holes(ndimage.binary_closing(region, iterations=4))
        edge = np.zeros_like(region)
        edge[: top + 6], edge[-6:], edge[:, :6], edge[:, -6:] = True, True, True, True
        if (region & edge).sum() > 0.02 * region.sum():
            return None
        full = ndimage.zoom(region.astype(np.float32), (height / h, width / w), order=1) > 0.5
        padded = np.zeros((height, width), dtype=bool)
        padded[: min(height, full.shape[0]), : min(width, full.shape[1])] = full[:height, :width]
        masks[side] = padded
    if (masks["right"] & masks["left"]).any():
        return None
    return LungFields(right=masks["right"], left=masks["left"])


def _two_fields(dark: np.ndarray, h: int, w: int) -> Optional[dict]:
    """The largest plausible lung-shaped dark component on each side, or None."""
    labels, count = ndimage.label(dark)
    if count == 0:
        return None
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    best: dict = {}
    for index, size in enumerate(sizes, start=1):
        if index in border or not 0.02 * h * w <= size <= 0.3 * h * w:
            continue
        rows, cols = np.nonzero(labels == index)
        if rows.max() - rows.min() < 0.22 * h or cols.max() - cols.min() < 0.08 * w:
            continue
        centre_col, centre_row = cols.mean() / w, rows.mean() / h
        if not 0.2 < centre_row < 0.75:
            continue
        side = "right" if centre_col < 0.5 else "left"
        if 0.08 < abs(centre_col - 0.5) and size > best.get(side, (0, 0))[0]:
            best[side] = (size, index)
    if set(best) != {"right", "left"} or not 0.45 < best["right"][0] / best["left"][0] < 2.2:
        return None
    best["labels"] = labels
    return best


def _zone_rows(lung: np.ndarray, zone: str) -> tuple[int, int]:
    rows = np.nonzero(lung.any(axis=1))[0]
    top, bottom = int(rows.min()), int(rows.max())
    index = ("upper", "middle", "lower").index(zone)
    third = (bottom - top) / 3.0
    return int(top + index * third), int(top + (index + 1) * third)


def _mm(lung: np.ndarray) -> float:
    """Pixels per mm, from the lung field's width."""
    cols = np.nonzero(lung.any(axis=0))[0]
    return max(cols.max() - cols.min(), 8) / _LUNG_WIDTH_MM


def _place(rng, lung: np.ndarray, zone: str, margin_px: float) -> tuple[float, float]:
    top, bottom = _zone_rows(lung, zone)
    inside = ndimage.distance_transform_edt(lung)
    band = np.zeros_like(lung)
    band[top:bottom] = True
    for margin in (margin_px, 0.5 * margin_px, 0.0):
        rows, cols = np.nonzero(lung & band & (inside >= margin))
        if rows.size:
            k = int(rng.integers(rows.size))
            return float(rows[k]), float(cols[k])
    rows, cols = np.nonzero(lung)
    return float(rows.mean()), float(cols.mean())


def _brighten(image: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Add density: ``amount`` in [0, 1] moves a pixel that far towards white."""
    return image + (1.0 - image) * np.clip(amount, 0.0, 1.0)


def _lumps(rng, shape, sigma: float) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(sigma, 0.5))
    return noise / max(float(noise.std()), 1e-6)


def _grids(shape):
    return np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)


def _nodule(rng, image, lungs: LungFields, side, zone, variant):
    lung = lungs.side(side)
    ppm = _mm(lung)
    radius = (rng.uniform(14.0, 26.0) if variant == "mass" else rng.uniform(5.0, 11.0)) * ppm
    r0, c0 = _place(rng, lung, zone, radius + 4 * ppm)
    rr, cc = _grids(image.shape)
    theta = np.arctan2(rr - r0, cc - c0)
    edge = radius * (1.0 + sum(rng.uniform(0, 0.08) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in range(2, 6)))
    d = np.hypot(rr - r0, cc - c0)
    profile = np.sqrt(np.clip(1.0 - (d / edge) ** 2, 0.0, 1.0))
    image = _brighten(image, rng.uniform(0.3, 0.5) * profile ** 0.6)
    return image, (d <= edge) & (lung | ndimage.binary_dilation(lung, iterations=3)), f"{2 * radius / ppm:.0f}"


def _opacity(rng, image, lungs: LungFields, side, zone, variant):
    lung = lungs.side(side)
    ppm = _mm(lung)
    r0, c0 = _place(rng, lung, zone, 15 * ppm)
    rr, cc = _grids(image.shape)
    su, sv = rng.uniform(16, 30) * ppm, rng.uniform(14, 26) * ppm
    field_ = np.exp(-0.5 * (((cc - c0) / su) ** 2 + ((rr - r0) / sv) ** 2)) * (1 + 0.3 * _lumps(rng, image.shape, 5 * ppm))
    amount = rng.uniform(0.25, 0.45) * np.clip((field_ - 0.3) / 0.3, 0, 1) * lung
    return _brighten(image, amount), (field_ > 0.45) & lung, ""


def _effusion(rng, image, lungs: LungFields, side, zone, variant):
    sides = ("right", "left") if side == "bilateral" else (side,)
    rr, cc = _grids(image.shape)
    mask = np.zeros(image.shape, dtype=bool)
    soft_level = float(np.percentile(image[~lungs.both & (image > 0.05)], 50))
    for name in sides:
        lung = lungs.side(name)
        rows, cols = np.nonzero(lung)
        top, bottom = rows.min(), rows.max()
        fraction = {"small": (0.12, 0.2), "moderate": (0.22, 0.34), "large": (0.36, 0.5)}[variant]
        level0 = bottom - rng.uniform(*fraction) * (bottom - top)
        lateral = cols.min() if name == "right" else cols.max()
        medial = cols.max() if name == "right" else cols.min()
        toward_wall = np.clip((cc - medial) / (lateral - medial + 1e-6), 0, 1)
        level = level0 - rng.uniform(0.04, 0.1) * (bottom - top) * toward_wall ** 3
        ramp = 4.0 * _mm(lung)
        weight = np.clip((rr - level) / ramp, 0, 1) * lung
        smooth = ndimage.gaussian_filter(image, 3 * _mm(lung))
        fluid = np.maximum(smooth, soft_level) + 0.05 * np.clip((rr - level) / (bottom - level + 1e-6), 0, 1)
        image = image * (1 - 0.85 * weight) + np.clip(fluid, 0, 1) * 0.85 * weight
        mask |= lung & (rr > level)
    return image, mask, ""


def _pneumothorax(rng, image, lungs: LungFields, side, zone, variant):
    lung = lungs.side(side)
    ppm = _mm(lung)
    rows, cols = np.nonzero(lung)
    top, bottom = rows.min(), rows.max()
    centre = (rows.mean(), cols.mean())
    factor = rng.uniform(0.72, 0.84) if variant == "large" else rng.uniform(0.8, 0.9)
    rr, cc = _grids(image.shape)
    # Collapsed lung: the field shrunk towards its centre (sampled back through the inverse map).
    back_r = centre[0] + (rr - centre[0]) / factor
    back_c = centre[1] + (cc - centre[1]) / factor
    collapsed = ndimage.map_coordinates(lung.astype(np.float32), [back_r, back_c], order=1) > 0.5
    if variant == "apical":
        extent = rr < top + 0.36 * (bottom - top)
    else:
        lateral_half = (cc < centre[1]) if side == "right" else (cc > centre[1])
        extent = (rr < top + 0.8 * (bottom - top)) & lateral_half
    region = lung & ~collapsed & extent
    if not region.any():
        return image, region, ""
    blurred = ndimage.gaussian_filter(image, 4 * ppm)
    darker = np.clip(blurred - rng.uniform(0.04, 0.09), 0, 1)
    soft_region = ndimage.gaussian_filter(region.astype(np.float32), 0.8 * ppm)
    image = image * (1 - soft_region) + darker * soft_region
    line = collapsed & ~ndimage.binary_erosion(collapsed, iterations=max(1, int(round(0.8 * ppm))))
    line &= ndimage.binary_dilation(region, iterations=max(2, int(2 * ppm))) & extent
    image = _brighten(image, 0.3 * ndimage.gaussian_filter(line.astype(np.float32), 0.4 * ppm) * 2)
    return image, region, ""


def _atelectasis(rng, image, lungs: LungFields, side, zone, variant):
    lung = lungs.side(side)
    ppm = _mm(lung)
    r0, c0 = _place(rng, lung, zone, 18 * ppm)
    rr, cc = _grids(image.shape)
    length, thick = rng.uniform(35, 65) * ppm, rng.uniform(2.5, 4.5) * ppm
    tilt = np.deg2rad(rng.uniform(-15, 15))
    along = (cc - c0) * np.cos(tilt) + (rr - r0) * np.sin(tilt)
    across = -(cc - c0) * np.sin(tilt) + (rr - r0) * np.cos(tilt) - rng.uniform(-0.1, 0.1) * along ** 2 / max(length, 1)
    band = (np.abs(across) < thick) & (np.abs(along) < length / 2)
    profile = np.exp(-(across / thick) ** 2) * (np.abs(along) < length / 2)
    return _brighten(image, rng.uniform(0.35, 0.55) * profile * lung), band & lung, ""


def _edema(rng, image, lungs: LungFields, side, zone, variant):
    rr, cc = _grids(image.shape)
    haze = np.zeros(image.shape, dtype=np.float32)
    for name in ("right", "left"):
        lung = lungs.side(name)
        ppm = _mm(lung)
        rows, cols = np.nonzero(lung)
        hilum_c = cols.max() - 0.2 * (cols.max() - cols.min()) if name == "right" else cols.min() + 0.2 * (cols.max() - cols.min())
        hilum_r = rows.min() + 0.45 * (rows.max() - rows.min())
        haze = np.maximum(haze, np.exp(-0.5 * (((cc - hilum_c) / (32 * ppm)) ** 2 + ((rr - hilum_r) / (50 * ppm)) ** 2)))
    haze *= 1 + 0.2 * _lumps(rng, image.shape, 4 * _mm(lungs.right))
    both = lungs.both
    amount = rng.uniform(0.25, 0.4) * np.clip((haze - 0.25) / 0.35, 0, 1) * both
    return _brighten(image, amount), (haze > 0.45) & both, ""


_INSERT = {"opacity": _opacity, "nodule": _nodule, "effusion": _effusion, "pneumothorax": _pneumothorax,
           "atelectasis": _atelectasis, "edema": _edema}


def insert_findings(rng: np.random.Generator, pixels: np.ndarray, lungs: LungFields,
                    count: Optional[int] = None) -> InsertedCase:
    """Insert one or two findings (or ``count``) into ``pixels`` ``[H, W]`` in [0, 1]."""
    count = int(rng.choice([1, 2], p=[0.6, 0.4])) if count is None else int(count)
    names = list(rng.choice(INSERTABLE, size=min(count, len(INSERTABLE)), replace=False))
    names.sort(key=lambda n: n not in ("effusion", "pneumothorax", "edema"))
    image = pixels.astype(np.float32).copy()
    findings: list[ExternalFinding] = []
    used: set[tuple[str, str]] = set()
    for name in names:
        side = str(rng.choice(["right", "left"]))
        zone = None
        variant = ""
        if name == "effusion":
            variant = str(rng.choice(["small", "moderate", "large"]))
            used |= {(side, "lower")}
        elif name == "pneumothorax":
            variant = str(rng.choice(["apical", "large"]))
            zone = "upper" if variant == "apical" else None
            used |= {(side, "upper")}
        elif name == "edema":
            side = "bilateral"
            used |= {("right", "middle"), ("left", "middle")}
        else:
            zones = ("middle", "lower") if name == "atelectasis" else ("upper", "middle", "lower")
            free = [(s, z) for s in ("right", "left") for z in zones if (s, z) not in used]
            if not free:
                continue
            side, zone = free[int(rng.integers(len(free)))]
            used.add((side, zone))
            variant = ("mass" if rng.random() < 0.3 else "nodule") if name == "nodule" else ""
        image, mask, _ = _INSERT[name](rng, image, lungs, side, zone, variant)
        if mask.any():
            findings.append(ExternalFinding(name, side, zone, prompt_for(rng, name, side, zone, variant), mask))
    return InsertedCase(image=np.clip(image, 0.0, 1.0), findings=findings, lungs=lungs)
