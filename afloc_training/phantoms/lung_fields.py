"""Lung fields of a real frontal chest radiograph, found from the pixels alone.

Used to place findings on real anatomy (:mod:`.radiographs`). The lungs are the two large dark
regions inside the body, one on each side of the midline, that do not touch the image border
(the air outside the patient does). The estimate is deliberately conservative: when the two
regions are not found with plausible sizes and shapes, :func:`find_lung_fields` returns ``None``
and the image is not used, rather than used with a wrong guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage

_WORK_SIDE = 192  # the estimate runs on a copy with this long side


@dataclass(frozen=True)
class Lungs:
    """Boolean masks ``[H, W]`` of the patient's right lung (image left) and left lung."""

    right: np.ndarray
    left: np.ndarray

    def side(self, name: str) -> np.ndarray:
        return self.right if name == "right" else self.left


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=64, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centres)
    total_w, total_m = weight[-1], mean[-1]
    between = (total_m * weight - mean * total_w) ** 2 / np.maximum(weight * (total_w - weight), 1e-9)
    return float(centres[int(np.argmax(between[:-1]))])


def find_lung_fields(pixels: np.ndarray) -> Optional[Lungs]:
    """The two lung fields of a grayscale radiograph ``[H, W]`` in [0, 1] (bright = dense), as
    masks on the same grid, or ``None`` when they cannot be found with confidence."""
    image = np.asarray(pixels, dtype=np.float32)
    height, width = image.shape
    factor = _WORK_SIDE / max(height, width)
    small = ndimage.zoom(image, factor, order=1) if factor < 1 else image.copy()
    h, w = small.shape
    small = ndimage.gaussian_filter(small, 1.5)
    # Contrast from the central part (the chest), ignoring borders, labels and shutters.
    centre = small[int(0.15 * h): int(0.85 * h), int(0.15 * w): int(0.85 * w)]
    low, high = np.percentile(centre, [2, 98])
    if high - low < 0.1:
        return None
    small = np.clip((small - low) / (high - low), 0.0, 1.0)
    threshold = _otsu(small[int(0.15 * h): int(0.85 * h), int(0.15 * w): int(0.85 * w)].ravel())
    for shift in (0.0, -0.05, 0.05, -0.1):
        found = _two_fields(small < threshold + shift, h, w)
        if found is not None:
            break
    else:
        return None
    right, left = found
    zoom = (height / h, width / w)
    return Lungs(right=_upsample(right, zoom, (height, width)), left=_upsample(left, zoom, (height, width)))


def _upsample(mask: np.ndarray, zoom: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    big = ndimage.zoom(mask.astype(np.float32), zoom, order=1)
    out = np.zeros(shape, dtype=bool)
    hh, ww = min(shape[0], big.shape[0]), min(shape[1], big.shape[1])
    out[:hh, :ww] = big[:hh, :ww] > 0.5
    return out


def _two_fields(dark: np.ndarray, h: int, w: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The best dark region on each side of the midline, or None."""
    dark = dark.copy()
    dark[:, int(0.48 * w): int(0.52 * w) + 1] = False  # the lungs never cross the midline
    for erosion in (2, 4, 6, 8):
        opened = ndimage.binary_opening(dark, iterations=erosion)
        labels, count = ndimage.label(opened)
        if count == 0:
            continue
        border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
        best: dict[str, tuple[float, np.ndarray]] = {}
        for index in range(1, count + 1):
            if index in border:
                continue
            region = labels == index
            area = region.sum() / (h * w)
            if not 0.03 <= area <= 0.3:
                continue
            rows, cols = np.nonzero(region)
            tall = (rows.max() - rows.min()) / h
            wide = (cols.max() - cols.min()) / w
            cx = cols.mean() / w
            if tall < 0.25 or wide < 0.1 or tall < 0.9 * wide:
                continue
            side = "right" if cx < 0.5 else "left"
            if not (0.1 < cx < 0.45 or 0.55 < cx < 0.9):
                continue
            if side not in best or area > best[side][0]:
                best[side] = (area, region)
        if len(best) == 2:
            right, left = best["right"][1], best["left"][1]
            # Similar sizes and heights: two lungs, not one lung and a stray dark patch.
            ratio = right.sum() / left.sum()
            r_rows, l_rows = np.nonzero(right)[0], np.nonzero(left)[0]
            overlap = min(r_rows.max(), l_rows.max()) - max(r_rows.min(), l_rows.min())
            if 0.4 < ratio < 2.5 and overlap > 0.5 * min(np.ptp(r_rows), np.ptp(l_rows)):
                grow = erosion  # give back what the opening took
                right = ndimage.binary_dilation(right, iterations=grow) & dark
                left = ndimage.binary_dilation(left, iterations=grow) & dark
                return ndimage.binary_fill_holes(right), ndimage.binary_fill_holes(left)
    return None
