"""Synthetic chest-radiograph phantoms with reports and ground-truth finding masks.

Each phantom is a frontal (PA) chest-radiograph-like image, a free-text report that names every
finding with its side and lung zone, and one mask per finding. They give training data with known
ground truth for tests, the demo and the localization benchmark: findings are clearly visible and
their location is written in the report, so a model trained from scratch on a few thousand pairs
can learn to localize them from the text alone.

Radiology convention: images are displayed as if facing the patient, so the patient's RIGHT is on
the IMAGE LEFT (low column index). "right" in a report or a ``Finding.side`` is the patient's side.

Geometry is defined in an "anatomical frame": ``x`` from 0 (image left) to 1 (image right), ``y``
from 0 (top) to 1 (bottom). A random pose (rotation, scale, shift) maps it onto the pixel grid, and
every structure and mask is evaluated on the same mapped grid, so masks match the image exactly.

Public API:
    generate_phantom(rng, size=256) -> Phantom
    write_phantom_datastore(out_dir, n, seed, size=256, overwrite=False) -> Path
    main(argv=None) -> int            (console script ``afloc-phantoms``)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from afloc_models.errors import AFLocError, ConfigError

__all__ = [
    "FINDING_NAMES",
    "Finding",
    "Phantom",
    "generate_phantom",
    "write_phantom_datastore",
    "main",
    "GROUND_TRUTH_DIR",
    "MIN_SIZE",
    "SIDES",
    "ZONES",
]

FINDING_NAMES = ("opacity", "nodule", "effusion", "pneumothorax", "atelectasis", "cardiomegaly", "edema")
SIDES = ("right", "left", "bilateral")
ZONES = ("upper", "middle", "lower")
MIN_SIZE = 64
MAX_SIZE = 2048
# Ground truth lives here, inside the datastore folder. MONAI Label's LocalDatastore (0.8.5) only
# lists files directly in the images folder and label files under ``labels/<tag>/``, so files in
# this sub-folder are never taken for images or labels.
GROUND_TRUTH_DIR = "ground_truth"
MASKS_DIR = "masks"
FINDINGS_CSV = "findings.csv"
MANIFEST_JSON = "manifest.json"
CSV_COLUMNS = ("image", "finding", "side", "zone", "prompt", "mask_file")
# The image field of view assumed when a report quotes a size in mm.
_FIELD_OF_VIEW_MM = 400.0
_LUNG_EXPONENT = 2.5


@dataclass(frozen=True)
class Finding:
    """One finding of a phantom.

    ``side`` is the patient's side ("right" is on the image left), or "bilateral", or None
    (cardiomegaly). ``zone`` is the lung zone (upper/middle/lower thirds of the lung height) or
    None. ``prompt`` is a short canonical text ("right lower zone opacity"). ``mask`` is ``[H, W]``
    bool, True where the finding is.
    """

    name: str
    side: Optional[str]
    zone: Optional[str]
    prompt: str
    mask: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Phantom:
    """A synthetic study: ``image`` is ``[H, W]`` uint8 (0 = black/air, 255 = white/bone)."""

    image: np.ndarray = field(repr=False, compare=False)
    report: str
    findings: list[Finding]


# ==================================================================================================
# Anatomy
# ==================================================================================================


@dataclass(frozen=True)
class _Lung:
    """One lung in the anatomical frame: an ellipse cut by its diaphragm dome and the mediastinum.

    ``lateral`` is -1 for the patient's right lung (image left) and +1 for the left lung.
    """

    side: str
    lateral: int
    cx: float
    cy: float
    rx: float
    ry: float
    apex: float
    dome_cx: float
    dome_half_width: float
    dome_base: float
    dome_height: float
    hilum: tuple[float, float]

    def dome_y(self, x: np.ndarray) -> np.ndarray:
        """Height of the diaphragm dome under ``x`` (the lung lies above it)."""
        bulge = np.clip(1.0 - ((x - self.dome_cx) / self.dome_half_width) ** 2, 0.0, 1.0)
        return self.dome_base - self.dome_height * bulge

    @property
    def bottom(self) -> float:
        """Lowest lung point at the lung's centre line, used to split the lung into zones."""
        return float(self.dome_y(np.float32(self.cx)))

    def zone_band(self, zone: str) -> tuple[float, float]:
        """``(top, bottom)`` of a lung zone: thirds of the apex-to-dome height."""
        third = (self.bottom - self.apex) / 3.0
        index = ZONES.index(zone)
        return self.apex + index * third, self.apex + (index + 1) * third

    def outline_radius(self, x, y, margin: float = 0.0):
        """Normalised radius of the lung's outer (rib) outline: 1 on it, 0 at its centre.

        The outline is a superellipse (exponent 2.5): squarer than an ellipse, which gives a
        rounded apex and a wide base like a real lung. ``margin`` shrinks it on every side.
        """
        u = np.abs((x - self.cx) / (self.rx - margin)) ** _LUNG_EXPONENT
        v = np.abs((y - self.cy) / (self.ry - margin)) ** _LUNG_EXPONENT
        return (u + v) ** (1.0 / _LUNG_EXPONENT)


@dataclass(frozen=True)
class _Anatomy:
    """Sampled body habitus; every length is a fraction of the image side."""

    thorax_half_width: float
    neck_half_width: float
    shoulder_y: float
    lungs: tuple[_Lung, _Lung]  # (patient right = image left, patient left = image right)
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    heart_tilt: float  # radians; the long axis points down towards the patient's left
    mediastinum_half_width: float
    aortic_knob: tuple[float, float, float]
    carina_y: float
    rib_top: float
    rib_spacing: float

    def lung(self, side: str) -> _Lung:
        return self.lungs[0] if side == "right" else self.lungs[1]

    def enlarge_heart(self, rng: np.random.Generator) -> "_Anatomy":
        """Cardiomegaly: a wider, slightly taller heart that grows mostly to the patient's left."""
        grow_x = rng.uniform(1.35, 1.5)
        new_rx = self.heart_rx * grow_x
        return replace(
            self,
            heart_rx=new_rx,
            heart_ry=self.heart_ry * rng.uniform(1.08, 1.16),
            heart_cx=self.heart_cx + 0.45 * (new_rx - self.heart_rx),
        )


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    thorax = rng.uniform(0.40, 0.45)
    apex = rng.uniform(0.09, 0.13)
    base = rng.uniform(0.76, 0.83)
    lungs = []
    for side, lateral in (("right", -1), ("left", 1)):
        rx = thorax * rng.uniform(0.36, 0.40)
        cx = 0.5 + lateral * (thorax * rng.uniform(0.48, 0.52))
        side_apex = apex + rng.uniform(-0.01, 0.01)
        # The liver pushes the right hemidiaphragm up by a couple of centimetres.
        side_base = base - (rng.uniform(0.015, 0.035) if side == "right" else 0.0)
        ry = (side_base - side_apex) * 0.85
        lungs.append(
            _Lung(
                side=side,
                lateral=lateral,
                cx=cx,
                cy=side_apex + ry,
                rx=rx,
                ry=ry,
                apex=side_apex,
                dome_cx=cx - lateral * rx * 0.15,
                dome_half_width=rx * 1.15,
                dome_base=side_base,
                dome_height=rng.uniform(0.06, 0.09),
                hilum=(
                    0.5 + lateral * rng.uniform(0.075, 0.095),
                    side_apex + (0.30 if side == "right" else 0.28),
                ),
            )
        )
    right, left = lungs
    return _Anatomy(
        thorax_half_width=thorax,
        neck_half_width=rng.uniform(0.09, 0.12),
        shoulder_y=rng.uniform(0.06, 0.10),
        lungs=(right, left),
        heart_cx=0.5 + rng.uniform(0.045, 0.065),
        heart_cy=base - rng.uniform(0.13, 0.15),
        heart_rx=thorax * rng.uniform(0.33, 0.38),
        heart_ry=rng.uniform(0.12, 0.14),
        heart_tilt=float(np.deg2rad(rng.uniform(20, 32))),
        mediastinum_half_width=rng.uniform(0.045, 0.055),
        aortic_knob=(0.5 + rng.uniform(0.045, 0.06), apex + rng.uniform(0.15, 0.18), rng.uniform(0.03, 0.04)),
        carina_y=apex + rng.uniform(0.20, 0.24),
        rib_top=apex - rng.uniform(0.0, 0.02),
        rib_spacing=(base - apex) * rng.uniform(0.115, 0.13),
    )


# ==================================================================================================
# Pixel grid and shape masks
# ==================================================================================================


@dataclass(frozen=True)
class _Grid:
    """Anatomical coordinates of every pixel after the random pose: ``x``, ``y`` are ``[H, W]``.

    The pose maps an anatomical point ``p`` to normalised image coordinates
    ``R(angle) (p - 0.5) * scale + 0.5 + shift``.
    """

    x: np.ndarray
    y: np.ndarray
    angle: float
    scale: float
    shift: tuple[float, float]

    @property
    def size(self) -> int:
        return int(self.x.shape[0])

    @property
    def pixel(self) -> float:
        """One pixel's length in anatomical units."""
        return 1.0 / (self.size * self.scale)

    def window(self, x0: float, y0: float, x1: float, y1: float) -> tuple[slice, slice]:
        """Pixel rows and columns covering the anatomical box ``[x0, x1] x [y0, y1]``."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        xs, ys = [], []
        for cx, cy in ((x0, y0), (x1, y0), (x0, y1), (x1, y1)):
            cx, cy = cx - 0.5, cy - 0.5
            xs.append((cos * cx - sin * cy) * self.scale + 0.5 + self.shift[0])
            ys.append((sin * cx + cos * cy) * self.scale + 0.5 + self.shift[1])
        n = self.size
        cols = slice(min(max(math.floor(min(xs) * n) - 1, 0), n), min(max(math.ceil(max(xs) * n) + 1, 0), n))
        rows = slice(min(max(math.floor(min(ys) * n) - 1, 0), n), min(max(math.ceil(max(ys) * n) + 1, 0), n))
        return rows, cols


def _sample_grid(rng: np.random.Generator, size: int) -> _Grid:
    angle = float(np.deg2rad(rng.uniform(-4.0, 4.0)))
    scale = float(rng.uniform(0.92, 1.04))
    shift = (float(rng.uniform(-0.025, 0.025)), float(rng.uniform(-0.025, 0.025)))
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    # Invert the pose so each pixel asks "which anatomy is here?".
    u = (xx - 0.5 - shift[0]) / scale
    v = (yy - 0.5 - shift[1]) / scale
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    x = cos * u + sin * v + 0.5
    y = -sin * u + cos * v + 0.5
    return _Grid(x=x.astype(np.float32), y=y.astype(np.float32), angle=angle, scale=scale, shift=shift)


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _body_half_width(anat: _Anatomy, y: np.ndarray) -> np.ndarray:
    """Torso outline: a neck, rounded shoulders, the chest wall, a slightly narrower waist."""
    shoulders = np.sqrt(np.clip(y / max(anat.shoulder_y, 1e-3), 0.0, 1.0))
    chest = anat.thorax_half_width + 0.045
    waist = 0.05 * np.clip((y - 0.7) / 0.3, 0.0, 1.0) ** 2
    return anat.neck_half_width + (chest - anat.neck_half_width) * shoulders - waist


def _diaphragm_y(anat: _Anatomy, x: np.ndarray) -> np.ndarray:
    """Diaphragm line across the whole width: each side's dome, split at the midline."""
    right, left = anat.lungs
    return np.where(x < 0.5, right.dome_y(x), left.dome_y(x))


def _heart_shape(anat: _Anatomy, x, y, margin: float = 0.0):
    """Tilted ellipse of the cardiac silhouette (not cut by the diaphragm)."""
    dx, dy = x - anat.heart_cx, y - anat.heart_cy
    cos, sin = np.cos(anat.heart_tilt), np.sin(anat.heart_tilt)
    u = (dx * cos + dy * sin) / (anat.heart_rx + margin)
    v = (-dx * sin + dy * cos) / (anat.heart_ry + margin)
    return u * u + v * v <= 1.0


def _heart(anat: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cardiac silhouette above the diaphragm ``[H, W]`` bool."""
    return _heart_shape(anat, x, y) & (y < _diaphragm_y(anat, x))


def _mediastinum(anat: _Anatomy, x: np.ndarray, y: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Central soft-tissue column (vessels, trachea walls, spine) plus heart and aortic knob."""
    widening = np.clip((y - anat.lungs[0].apex) / 0.3, 0.0, 1.0) * 0.012
    column = np.abs(x - 0.5) < anat.mediastinum_half_width + widening + margin
    kx, ky, kr = anat.aortic_knob
    knob = _ellipse(x, y, kx, ky, kr + margin, kr + margin)
    return column | knob | _heart_shape(anat, x, y, margin)


def _lung_region(anat: _Anatomy, lung: _Lung, x, y, margin: float = 0.0):
    """Pixels (or points) inside ``lung``, shrunk by ``margin`` on every border."""
    inside = lung.outline_radius(x, y, margin) <= 1.0
    above_dome = y < lung.dome_y(x) - margin
    own_half = (x - 0.5) * lung.lateral > 0
    return inside & above_dome & own_half & ~_mediastinum(anat, x, y, margin)


# ==================================================================================================
# Rendering helpers
# ==================================================================================================


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise ``[H, W]``."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_px, mode="reflect")
    std = float(noise.std())
    return noise / std if std > 0 else noise


Point = tuple[float, float]


def _segment_distance(x: np.ndarray, y: np.ndarray, a: Point, b: Point) -> np.ndarray:
    """Distance ``[H, W]`` from every pixel to the segment ``a``-``b``."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / length2, 0.0, 1.0)
    return np.hypot(x - (ax + t * dx), y - (ay + t * dy))


def _draw_segment(
    grid: _Grid, canvas: np.ndarray, a: Point, b: Point, width: float, weight: float
) -> None:
    """Max-blend a blurred line from ``a`` to ``b`` into ``canvas`` ``[H, W]``, in place."""
    reach = 2.5 * width
    rows, cols = grid.window(min(a[0], b[0]) - reach, min(a[1], b[1]) - reach,
                             max(a[0], b[0]) + reach, max(a[1], b[1]) + reach)
    d = _segment_distance(grid.x[rows, cols], grid.y[rows, cols], a, b)
    np.maximum(canvas[rows, cols], weight * np.exp(-((d / width) ** 2)), out=canvas[rows, cols])


def _vessel_markings(rng: np.random.Generator, grid: _Grid, lung: _Lung) -> np.ndarray:
    """Branching vessel shadows fanning out of the hilum, fading to the periphery ``[H, W]``."""
    markings = np.zeros_like(grid.x)
    hx, hy = lung.hilum
    # Directions point away from the mediastinum, from up-and-out to down-and-out.
    # Each branch splits in two, thinner and fainter, three generations deep.
    stack = [((hx, hy), float(angle), rng.uniform(0.07, 0.11), rng.uniform(0.006, 0.009), 1.0, 0)
             for angle in np.linspace(-70, 75, 8) + rng.uniform(-8, 8, size=8)]
    while stack:
        start, angle, length, width, weight, depth = stack.pop()
        theta = np.deg2rad(angle)
        end = (start[0] + lung.lateral * np.cos(theta) * length, start[1] + np.sin(theta) * length)
        _draw_segment(grid, markings, start, end, width, weight)
        if depth < 2:
            for turn in (-1, 1):
                stack.append((end, angle + turn * rng.uniform(12, 30), length * rng.uniform(0.6, 0.85),
                              width * 0.7, weight * 0.8, depth + 1))
    fade = np.exp(-np.hypot(grid.x - hx, grid.y - hy) / 0.22)
    return markings * fade


def _periodic_band(phase: np.ndarray, half_width: float) -> np.ndarray:
    """Flat-topped bands at every integer ``phase``; ``half_width`` in phase units."""
    distance = np.abs(phase - np.round(phase)) / half_width
    return np.exp(-(distance * distance) ** 2)


def _rib_shadows(anat: _Anatomy, grid: _Grid) -> np.ndarray:
    """Posterior ribs as curved bands, anterior ribs fainter, inside the rib cage ``[H, W]``.

    Every rib of a kind has the same curve shifted by one rib spacing, so one periodic band
    draws them all.
    """
    x, y = grid.x, grid.y
    t = np.abs(x - 0.5) / anat.thorax_half_width  # 0 at the spine, 1 at the chest wall
    # Posterior ribs leave the spine almost level, then curve down towards the chest wall.
    posterior = (y - anat.rib_top + 0.03 * t - 0.16 * t * t) / anat.rib_spacing
    ribs = _periodic_band(posterior, 0.17) * ((posterior > -0.5) & (posterior < 9.5) & (t > 0.08))
    # Anterior ribs run down and in from the chest wall, lower than their posterior ends.
    anterior = (y - anat.rib_top + 0.11 * (1.0 - t)) / anat.rib_spacing - 2.3
    in_range = (anterior > -0.5) & (anterior < 6.5) & (t > 0.35)
    ribs = np.maximum(ribs, 0.45 * _periodic_band(anterior, 0.14) * in_range)
    # Inside the rib cage only: the lungs' outline, a little enlarged, and the mediastinum.
    cage = np.zeros(x.shape, dtype=bool)
    for lung in anat.lungs:
        cage |= lung.outline_radius(x, y, margin=-0.03) <= 1.0
    return ribs * cage * (t < 1.0) * (y < _diaphragm_y(anat, x) + 0.02)


def _clavicles(anat: _Anatomy, grid: _Grid) -> np.ndarray:
    out = np.zeros_like(grid.x)
    y0 = anat.lungs[0].apex + 0.03
    for lateral in (-1, 1):
        a = (0.5 + lateral * 0.04, y0 + 0.02)
        b = (0.5 + lateral * anat.thorax_half_width * 0.8, y0 - 0.05)
        _draw_segment(grid, out, a, b, 0.013, 1.0)
    return out


@dataclass
class _Layers:
    """Image under construction, in attenuation units (0 = air, ~1 = bone), all ``[H, W]``."""

    image: np.ndarray
    markings: np.ndarray
    lungs: dict[str, np.ndarray]


def _render_anatomy(rng: np.random.Generator, anat: _Anatomy, grid: _Grid) -> _Layers:
    x, y = grid.x, grid.y
    half_width = _body_half_width(anat, y)
    body = (np.abs(x - 0.5) < half_width) & (y > -0.05)
    # Soft tissue looks denser where the body is thicker (centre) than at the edges.
    thickness = np.sqrt(np.clip(1.0 - ((x - 0.5) / half_width) ** 2, 0.0, 1.0))
    image = np.where(body, 0.30 + 0.18 * thickness, 0.03).astype(np.float32)

    lungs = {lung.side: _lung_region(anat, lung, x, y) for lung in anat.lungs}
    any_lung = lungs["right"] | lungs["left"]
    # Lungs are darkest laterally where least tissue overlies them.
    lung_level = 0.13 + 0.05 * np.clip(1.0 - np.abs(x - 0.5) / anat.thorax_half_width, 0.0, 1.0)
    image = np.where(any_lung, lung_level, image)

    abdomen = body & (y >= _diaphragm_y(anat, x))
    image = np.where(abdomen, 0.56 + 0.04 * thickness, image)
    # Gastric air bubble under the left hemidiaphragm (image right).
    left = anat.lungs[1]
    bubble = _ellipse(x, y, left.cx + 0.02, left.dome_y(np.float32(left.cx)) + 0.05, 0.045, 0.025)
    image = np.where(bubble & abdomen, 0.30, image)

    mediastinum = _mediastinum(anat, x, y) & body & ~abdomen
    image = np.where(mediastinum, 0.58 + 0.04 * thickness, image)
    image = np.where(_heart(anat, x, y), 0.62, image)
    trachea = (np.abs(x - 0.5) < 0.017) & (y < anat.carina_y) & body
    image = np.where(trachea, image - 0.16, image)

    spine = (np.abs(x - 0.5) < 0.032) & body
    vertebrae = 0.6 + 0.4 * np.cos(2 * np.pi * (y - anat.rib_top) / anat.rib_spacing) ** 2
    image = image + np.where(spine, 0.10 * vertebrae, 0.0)
    image = image + 0.075 * _rib_shadows(anat, grid) * body
    image = image + 0.12 * _clavicles(anat, grid) * body

    markings = np.zeros_like(image)
    for lung in anat.lungs:
        markings = np.maximum(markings, _vessel_markings(rng, grid, lung) * lungs[lung.side])
        hilum = np.exp(-(np.hypot(x - lung.hilum[0], y - lung.hilum[1]) / 0.035) ** 2)
        markings = np.maximum(markings, 0.8 * hilum * lungs[lung.side])
    return _Layers(image=image, markings=markings, lungs=lungs)


# ==================================================================================================
# Findings: placement and rendering
# ==================================================================================================


@dataclass(frozen=True)
class _Spec:
    """A finding chosen before rendering; ``variant`` picks a shape or size ("small", "wedge")."""

    name: str
    side: Optional[str]
    zone: Optional[str]
    variant: str = ""


_LOCALIZED = ("opacity", "nodule", "atelectasis")
_NAME_WEIGHTS = np.array([0.20, 0.15, 0.17, 0.12, 0.12, 0.12, 0.12])
_COUNT_PROBS = np.array([0.20, 0.40, 0.28, 0.12])


def _choose_specs(rng: np.random.Generator) -> list[_Spec]:
    """0-3 distinct findings whose regions do not hide one another."""
    count = int(rng.choice(len(_COUNT_PROBS), p=_COUNT_PROBS))
    names = list(rng.choice(FINDING_NAMES, size=count, replace=False, p=_NAME_WEIGHTS / _NAME_WEIGHTS.sum()))
    # Whole-lung findings first; they decide where localized ones may go.
    names.sort(key=lambda name: name in _LOCALIZED)
    specs: list[_Spec] = []
    free = {(side, zone) for side in ("right", "left") for zone in ZONES}
    effusion_sides: set[str] = set()
    for name in names:
        if name == "cardiomegaly":
            specs.append(_Spec("cardiomegaly", None, None))
        elif name == "edema":
            specs.append(_Spec("edema", "bilateral", None))
            free -= {("right", "middle"), ("left", "middle")}
        elif name == "effusion":
            side = str(rng.choice(["right", "left", "bilateral"], p=[0.4, 0.4, 0.2]))
            effusion_sides = {"right", "left"} if side == "bilateral" else {side}
            specs.append(_Spec("effusion", side, None, str(rng.choice(["small", "moderate"]))))
            free -= {(s, "lower") for s in effusion_sides}
        elif name == "pneumothorax":
            choices = [s for s in ("right", "left") if s not in effusion_sides]
            if not choices:
                continue
            side = str(rng.choice(choices))
            variant = str(rng.choice(["apical", "lateral"]))
            specs.append(_Spec("pneumothorax", side, "upper" if variant == "apical" else None, variant))
            # A collapsed lung hides nothing in air; keep other findings off its outer part.
            free -= {(side, zone) for zone in (("upper",) if variant == "apical" else ZONES)}
        else:
            zones = ZONES if name != "atelectasis" else ("middle", "lower")
            slots = sorted(slot for slot in free if slot[1] in zones)
            if not slots:
                continue
            side, zone = slots[int(rng.integers(len(slots)))]
            free.discard((side, zone))
            variant = str(rng.choice(["band", "wedge"])) if name == "atelectasis" else ""
            specs.append(_Spec(name, side, zone, variant))
    return specs


def _point_in_zone(
    rng: np.random.Generator, anat: _Anatomy, lung: _Lung, zone: str, margin: float
) -> tuple[float, float]:
    """A random point inside ``lung``'s ``zone``, at least ``margin`` from every lung border."""
    top, bottom = lung.zone_band(zone)
    inset = min(0.2 * (bottom - top), 0.02)
    for shrink in (margin, margin * 0.6, margin * 0.3, 0.0):
        for _ in range(200):
            px = lung.cx + rng.uniform(-lung.rx, lung.rx)
            py = rng.uniform(top + inset, bottom - inset)
            if bool(_lung_region(anat, lung, np.float32(px), np.float32(py), shrink)):
                return px, py
    return lung.cx, 0.5 * (top + bottom)


def _render_opacity(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    lung = anat.lung(spec.side)
    cx, cy = _point_in_zone(rng, anat, lung, spec.zone, margin=0.04)
    sigma = rng.uniform(0.035, 0.05)
    blob = np.zeros_like(grid.x)
    for _ in range(3):
        ox, oy = rng.normal(0.0, 0.022, size=2)
        s = sigma * rng.uniform(0.75, 1.15)
        blob += np.exp(-((grid.x - cx - ox) ** 2 + (grid.y - cy - oy) ** 2) / (2 * s * s))
    blob /= max(float(blob.max()), 1e-6)
    inside = layers.lungs[spec.side]
    mottle = 0.85 + 0.15 * _smooth_noise(rng, grid.x.shape, max(1.0, 0.012 / grid.pixel))
    strength = np.clip((blob - 0.25) / 0.45, 0.0, 1.0) * inside
    layers.image += rng.uniform(0.24, 0.32) * strength * mottle
    return (blob > 0.45) & inside, ""


def _render_nodule(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    lung = anat.lung(spec.side)
    radius = rng.uniform(0.018, 0.028)
    cx, cy = _point_in_zone(rng, anat, lung, spec.zone, margin=radius + 0.015)
    r = np.hypot(grid.x - cx, grid.y - cy) / radius
    layers.image += rng.uniform(0.30, 0.40) * np.sqrt(np.clip(1.0 - r**2, 0.0, 1.0))
    # Diameter in mm on a 40 cm field of view, for the report.
    return (r <= 0.95) & layers.lungs[spec.side], f"{2 * radius * _FIELD_OF_VIEW_MM:.0f}"


def _render_atelectasis(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    lung = anat.lung(spec.side)
    px, py = _point_in_zone(rng, anat, lung, spec.zone, margin=0.05)
    inside = layers.lungs[spec.side]
    if spec.variant == "band":
        # Plate-like atelectasis: a thin, roughly horizontal band.
        angle = np.deg2rad(rng.uniform(-20, 20)) * -lung.lateral
        length, thickness = rng.uniform(0.12, 0.17), rng.uniform(0.02, 0.03)
        ux, uy = np.cos(angle), np.sin(angle)
        along = (grid.x - px) * ux + (grid.y - py) * uy
        across = -(grid.x - px) * uy + (grid.y - py) * ux
        profile = np.exp(-((across / (thickness / 2)) ** 4)) * np.exp(-((along / (length / 2)) ** 8))
        mask = (np.abs(across) < thickness / 2) & (np.abs(along) < length / 2)
    else:
        # Wedge: a triangle whose apex points to the hilum.
        hx, hy = lung.hilum
        axis = np.array([px - hx, py - hy])
        axis /= max(float(np.hypot(*axis)), 1e-6)
        length, half_angle = rng.uniform(0.10, 0.15), np.deg2rad(rng.uniform(14, 20))
        apex = (px - axis[0] * length * 0.6, py - axis[1] * length * 0.6)
        along = (grid.x - apex[0]) * axis[0] + (grid.y - apex[1]) * axis[1]
        across = np.abs(-(grid.x - apex[0]) * axis[1] + (grid.y - apex[1]) * axis[0])
        mask = (along > 0) & (along < length) & (across < along * np.tan(half_angle))
        profile = mask.astype(np.float32)
    layers.image += rng.uniform(0.26, 0.34) * profile * inside
    return mask & inside, ""


def _render_effusion(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    sides = ("right", "left") if spec.side == "bilateral" else (spec.side,)
    depth = rng.uniform(0.10, 0.14) if spec.variant == "small" else rng.uniform(0.16, 0.22)
    mask = np.zeros(grid.x.shape, dtype=bool)
    for side in sides:
        lung = anat.lung(side)
        # Meniscus: the fluid climbs highest along the lateral chest wall.
        wall_x = lung.cx + lung.lateral * lung.rx
        towards_medial = np.clip((grid.x - wall_x) * -lung.lateral / (2 * lung.rx), 0.0, 1.0)
        level = lung.dome_base - depth + rng.uniform(0.05, 0.08) * towards_medial**1.5
        inside = layers.lungs[side]
        fill = np.clip((grid.y - level) / 0.025, 0.0, 1.0) * inside
        fluid = 0.52 + 0.06 * np.clip((grid.y - level) / depth, 0.0, 1.0)
        layers.image = layers.image * (1.0 - fill) + fluid * fill
        layers.markings *= 1.0 - fill
        mask |= inside & (grid.y > level)
    return mask, ""


def _render_pneumothorax(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    lung = anat.lung(spec.side)
    inside = layers.lungs[spec.side]
    radius = lung.outline_radius(grid.x, grid.y)
    height = lung.bottom - lung.apex
    if spec.variant == "apical":
        edge = rng.uniform(0.78, 0.85)
        extent = grid.y < lung.apex + height / 3.0
    else:
        edge = rng.uniform(0.70, 0.80)
        lateral_part = (grid.x - lung.cx) * lung.lateral > -0.3 * lung.rx
        extent = (grid.y < lung.apex + rng.uniform(0.55, 0.75) * height) & lateral_part
    region = inside & extent & (radius > edge)
    line_width = 0.006 / lung.rx
    pleural_line = inside & extent & (radius <= edge) & (radius > edge - line_width)
    # Air without lung markings outside the collapsed lung, whose edge shows as a thin white line.
    layers.markings *= ~region
    layers.image -= 0.07 * region
    layers.image += 0.20 * pleural_line
    layers.image += 0.03 * (inside & (radius <= edge - line_width))
    return region, ""


def _render_cardiomegaly(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    # Already drawn: the anatomy was sampled with an enlarged heart.
    return _heart(anat, grid.x, grid.y), ""


def _render_edema(
    rng: np.random.Generator, anat: _Anatomy, grid: _Grid, layers: _Layers, spec: _Spec
) -> tuple[np.ndarray, str]:
    haze = np.zeros_like(grid.x)
    sigma = rng.uniform(0.09, 0.12)
    for lung in anat.lungs:
        hx, hy = lung.hilum
        d2 = ((grid.x - hx) / sigma) ** 2 + ((grid.y - hy) / (1.35 * sigma)) ** 2
        haze = np.maximum(haze, np.exp(-d2 / 2))
    lungs = layers.lungs["right"] | layers.lungs["left"]
    mottle = 0.8 + 0.2 * _smooth_noise(rng, grid.x.shape, max(1.0, 0.008 / grid.pixel))
    layers.image += rng.uniform(0.20, 0.26) * haze * lungs * mottle
    return (haze > 0.45) & lungs, ""


_CLEARS_MARKINGS = ("pneumothorax", "effusion")
# A renderer draws its finding into ``layers`` and returns the finding's mask ``[H, W]`` bool and a
# detail for the report (a nodule's diameter in mm, else "").
_Renderer = Callable[[np.random.Generator, _Anatomy, _Grid, _Layers, _Spec], tuple[np.ndarray, str]]
_RENDERERS: dict[str, _Renderer] = {
    "opacity": _render_opacity,
    "nodule": _render_nodule,
    "effusion": _render_effusion,
    "pneumothorax": _render_pneumothorax,
    "atelectasis": _render_atelectasis,
    "cardiomegaly": _render_cardiomegaly,
    "edema": _render_edema,
}


def _prompt(spec: _Spec) -> str:
    """Short canonical prompt for a finding, e.g. "right lower zone opacity"."""
    if spec.name == "cardiomegaly":
        return "cardiomegaly"
    if spec.name == "edema":
        return "pulmonary edema"
    if spec.name == "effusion":
        return "bilateral pleural effusions" if spec.side == "bilateral" else f"{spec.side} pleural effusion"
    if spec.name == "pneumothorax":
        return f"{spec.side} apical pneumothorax" if spec.variant == "apical" else f"{spec.side} pneumothorax"
    return f"{spec.side} {spec.zone} zone {spec.name}"


def _finish(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """Detector blur, contrast and noise; attenuation ``[H, W]`` float -> ``[H, W]`` uint8."""
    scale = size / 256.0
    image = ndimage.gaussian_filter(image, 0.7 * scale, mode="nearest")
    image = image + 0.015 * _smooth_noise(rng, image.shape, 6.0 * scale)
    image = np.clip(image, 0.0, 1.0) ** rng.uniform(0.85, 1.15)
    low, high = rng.uniform(0.0, 0.05), rng.uniform(0.88, 1.0)
    image = low + (high - low) * image
    image = image + rng.normal(0.0, rng.uniform(0.008, 0.018), size=image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


# ==================================================================================================
# Reports
# ==================================================================================================

_ZONE_NOUNS = {
    "upper": ("upper zone", "upper lung zone", "upper lung"),
    "middle": ("mid zone", "middle lung zone", "mid lung"),
    "lower": ("lower zone", "lower lung zone", "lower lung", "lung base"),
}
_ZONE_ADJECTIVES = {
    "upper": ("upper zone", "upper lobe", "apical"),
    "middle": ("mid zone", "midlung", "middle zone"),
    "lower": ("lower zone", "lower lobe", "basilar"),
}
# Words that never appear in a sentence stating a present finding (tests rely on this split).
NEGATION_CUES = ("no", "not", "without", "normal", "clear", "unremarkable", "negative", "intact", "none")

_NEGATIVES = {
    "effusion": ("No pleural effusion.", "No effusion.", "No pleural effusions are seen."),
    "pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    "opacity": ("No focal consolidation.", "No focal airspace opacity is seen."),
    "nodule": ("No pulmonary nodules.", "No suspicious nodule is identified."),
    "cardiomegaly": (
        "Heart size is normal.",
        "The cardiac silhouette is normal in size.",
        "Normal heart size.",
        "No cardiomegaly.",
        "The cardiomediastinal silhouette is normal.",
    ),
    "edema": ("No pulmonary edema.", "No pulmonary vascular congestion.", "No edema."),
    "atelectasis": ("No atelectasis.",),
}
_NEGATIVE_PROBABILITY = {
    "cardiomegaly": 0.85,
    "effusion": 0.8,
    "pneumothorax": 0.8,
    "opacity": 0.6,
    "edema": 0.4,
    "nodule": 0.25,
    "atelectasis": 0.1,
}
_NEUTRAL = (
    "Mediastinal and hilar contours are unremarkable.",
    "The osseous structures are intact.",
    "No acute osseous abnormality.",
    "The visualized upper abdomen is unremarkable.",
)
_INDICATIONS = (
    "___-year-old with shortness of breath.",
    "Cough and fever.",
    "___ year old man with chest pain.",
    "Dyspnea, evaluate for acute process.",
    "Preoperative study.",
    "___ with fatigue.",
)
_EXAMINATIONS = ("CHEST (PA AND LAT)", "CHEST (PA)", "Chest radiograph, frontal view", "CHEST (PORTABLE AP)")


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _positive_sentence(rng: np.random.Generator, spec: _Spec, detail: str) -> str:
    """A FINDINGS-style sentence that names the finding with its side and zone."""
    side = spec.side or ""
    noun = _pick(rng, _ZONE_NOUNS[spec.zone]) if spec.zone else ""
    adjective = _pick(rng, _ZONE_ADJECTIVES[spec.zone]) if spec.zone else ""
    if spec.name == "opacity":
        kind = _pick(rng, ("", "patchy ", "focal ", "ill-defined ", "confluent "))
        options = (
            f"there is {_article(kind or 'opacity')} {kind}opacity in the {side} {noun}.",
            f"focal consolidation in the {side} {noun}.",
            f"{side} {adjective} airspace opacity.",
            f"patchy airspace disease is seen in the {side} {noun}.",
            f"consolidation of the {side} {noun}, concerning for pneumonia.",
        )
    elif spec.name == "nodule":
        mm = detail
        options = (
            f"a nodule measuring {mm} mm projects over the {side} {noun}.",
            f"there is a {int(mm) / 10:.1f} cm rounded nodular density in the {side} {noun}.",
            f"{side} {adjective} pulmonary nodule measuring {mm} mm.",
            f"well-circumscribed nodule in the {side} {noun}.",
        )
    elif spec.name == "effusion":
        size = spec.variant
        if spec.side == "bilateral":
            options = (
                f"{size} bilateral pleural effusions.",
                f"there are {size} bilateral effusions.",
                f"bilateral pleural effusions, {size} in size.",
            )
        else:
            options = (
                f"{size} {side} pleural effusion.",
                f"there is {_article(size)} {size} {side} pleural effusion with blunting of the "
                "costophrenic angle.",
                f"{size} {side} effusion.",
                f"layering {side} pleural fluid consistent with {_article(size)} {size} effusion.",
            )
    elif spec.name == "pneumothorax":
        if spec.variant == "apical":
            options = (
                f"there is a small {side} apical pneumothorax.",
                f"small {side} apical pneumothorax.",
                f"a {side} apical pneumothorax is present.",
            )
        else:
            options = (
                f"there is a moderate {side} pneumothorax with a visible pleural line.",
                f"{side}-sided pneumothorax along the lateral chest wall.",
                f"a moderate {side} pneumothorax is present.",
            )
    elif spec.name == "atelectasis":
        if spec.variant == "band":
            options = (
                f"linear atelectasis in the {side} {noun}.",
                f"plate-like atelectasis at the {side} {noun}.",
                f"subsegmental atelectasis in the {side} {noun}.",
            )
        else:
            options = (
                f"wedge-shaped atelectasis in the {side} {noun}.",
                f"{side} {adjective} atelectasis.",
            )
    elif spec.name == "cardiomegaly":
        options = (
            "the heart is enlarged.",
            "cardiomegaly.",
            "moderate cardiomegaly.",
            "the cardiac silhouette is enlarged.",
            "enlarged cardiac silhouette.",
        )
    else:  # edema
        options = (
            "bilateral perihilar haziness consistent with pulmonary edema.",
            "mild pulmonary edema.",
            "interstitial edema with vascular congestion.",
            "there is moderate pulmonary edema.",
        )
    return _sentence(_pick(rng, options))


def _impression_sentence(rng: np.random.Generator, spec: _Spec, detail: str) -> str:
    """A short IMPRESSION item for a finding."""
    side = spec.side or ""
    adjective = _pick(rng, _ZONE_ADJECTIVES[spec.zone]) if spec.zone else ""
    if spec.name == "opacity":
        options = (f"{side} {adjective} pneumonia.", f"{side} {adjective} consolidation.")
    elif spec.name == "nodule":
        options = (f"{side} {adjective} pulmonary nodule.", f"{side} {adjective} nodule, {detail} mm.")
    elif spec.name == "effusion":
        options = (f"{spec.variant} bilateral pleural effusions.",) if side == "bilateral" else (
            f"{spec.variant} {side} pleural effusion.",
        )
    elif spec.name == "pneumothorax":
        apical = "apical " if spec.variant == "apical" else ""
        options = (f"{side} {apical}pneumothorax.",)
    elif spec.name == "atelectasis":
        options = (f"{side} {adjective} atelectasis.",)
    elif spec.name == "cardiomegaly":
        options = ("cardiomegaly.", "enlarged heart.")
    else:
        options = ("pulmonary edema.", "mild interstitial edema.")
    return _sentence(_pick(rng, options))


def _negative_sentences(rng: np.random.Generator, present: set[str]) -> list[str]:
    """Explicit negatives, only ever about findings that are absent."""
    absent = [name for name in FINDING_NAMES if name not in present]
    sentences: list[str] = []
    said: set[str] = set()
    if {"opacity", "effusion", "pneumothorax"} <= set(absent) and rng.random() < 0.5:
        sentences.append(
            _pick(
                rng,
                (
                    "No focal consolidation, pleural effusion, or pneumothorax.",
                    "There is no focal consolidation, pleural effusion or pneumothorax.",
                ),
            )
        )
        said |= {"opacity", "effusion", "pneumothorax"}
    elif {"effusion", "pneumothorax"} <= set(absent) and rng.random() < 0.5:
        sentences.append("No pleural effusion or pneumothorax.")
        said |= {"effusion", "pneumothorax"}
    for name in absent:
        if name not in said and rng.random() < _NEGATIVE_PROBABILITY[name]:
            sentences.append(_pick(rng, _NEGATIVES[name]))
    if not (present - {"cardiomegaly"}) and rng.random() < 0.6:
        sentences.insert(0, _pick(rng, ("The lungs are clear.", "Lungs are clear.")))
    return sentences


def _wrap(rng: np.random.Generator, paragraph: str) -> str:
    """Wrap like MIMIC-CXR reports sometimes are (hard line breaks inside sentences)."""
    if rng.random() < 0.5:
        return paragraph
    return textwrap.fill(
        paragraph, width=int(rng.integers(60, 80)), break_on_hyphens=False, break_long_words=False,
        initial_indent=" ", subsequent_indent=" ",
    )


def _impression_block(rng: np.random.Generator, items: list[str]) -> str:
    if len(items) > 1 and rng.random() < 0.6:
        return "\n".join(f" {number}. {item}" for number, item in enumerate(items, start=1))
    return " ".join(items)


def _write_report(rng: np.random.Generator, specs: list[_Spec], details: list[str]) -> str:
    """Free-text report with varied templates: sectioned, impression-only or plain text."""
    present = {spec.name for spec in specs}
    order = rng.permutation(len(specs))
    positives = [_positive_sentence(rng, specs[i], details[i]) for i in order]
    negatives = _negative_sentences(rng, present)
    neutral = [_pick(rng, _NEUTRAL)] if rng.random() < 0.4 else []
    findings_text = " ".join(positives + negatives + neutral)
    if not findings_text:  # only possible for a normal study
        findings_text = "The lungs are clear. Heart size is normal."
    if specs:
        impression = [_impression_sentence(rng, specs[i], details[i]) for i in order]
    else:
        impression = [
            _pick(rng, ("No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.",
                        "Normal chest radiograph."))
        ]

    layout = rng.random()
    upper = rng.random() < 0.8
    header = (lambda name: name.upper()) if upper else (lambda name: name.capitalize())
    if layout < 0.5:
        lines = []
        if rng.random() < 0.6:
            lines.append(f"{header('examination')}: {_pick(rng, _EXAMINATIONS)}")
        if rng.random() < 0.7:
            lines.append(f"{header('indication')}: {_pick(rng, _INDICATIONS)}")
        if rng.random() < 0.4:
            lines.append(f"{header('technique')}: Single frontal view of the chest.")
        if rng.random() < 0.6:
            lines.append(f"{header('comparison')}: {_pick(rng, ('None.', 'None available.', '___.'))}")
        body = "\n\n".join(lines)
        body += f"\n\n{header('findings')}:\n\n{_wrap(rng, findings_text)}"
        body += f"\n\n{header('impression')}:\n\n{_impression_block(rng, impression)}\n"
        return body.lstrip()
    if layout < 0.65:
        extra = " ".join(negatives[:2])
        block = _impression_block(rng, impression)
        return f"{header('impression')}: {block}" + (f"\n{extra}" if extra and specs else "") + "\n"
    return _wrap(rng, findings_text) + "\n"


# ==================================================================================================
# Public generator
# ==================================================================================================


_MARKINGS_WEIGHT = 0.15


def generate_phantom(rng: np.random.Generator, size: int = 256) -> Phantom:
    """One synthetic chest radiograph with 0-3 findings, its report and per-finding masks.

    ``rng`` is the only source of randomness: the same generator state gives the same phantom.
    The image is ``[size, size]`` uint8; each ``Finding.mask`` is ``[size, size]`` bool.
    """
    return _generate(rng, size, draw_findings=True)


def _generate(rng: np.random.Generator, size: int, draw_findings: bool) -> Phantom:
    """:func:`generate_phantom`; with ``draw_findings=False`` the same study without its findings
    drawn (same anatomy, pose, texture, noise, report and masks), to measure their contrast."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"phantom size must be an integer between {MIN_SIZE} and {MAX_SIZE}, got {size!r}")
    size = int(size)
    # One independent stream per stage, so leaving the findings out changes nothing else.
    seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=7)]
    spec_rng, anatomy_rng, pose_rng, finding_rng, finish_rng, report_rng = (
        np.random.default_rng(s) for s in seeds[:6]
    )
    texture_seed = seeds[6]

    specs = _choose_specs(spec_rng)
    healthy = _sample_anatomy(anatomy_rng)
    grid = _sample_grid(pose_rng, size)
    anat = healthy.enlarge_heart(finding_rng) if any(s.name == "cardiomegaly" for s in specs) else healthy
    layers = _render_anatomy(np.random.default_rng(texture_seed), anat, grid)

    # Pneumothorax and effusion wipe out lung markings, so they render before the markings are
    # added; every other finding is drawn on top of them.
    masks: dict[int, np.ndarray] = {}
    details: dict[int, str] = {}
    first = [i for i, spec in enumerate(specs) if spec.name in _CLEARS_MARKINGS]
    for i in first:
        masks[i], details[i] = _RENDERERS[specs[i].name](finding_rng, anat, grid, layers, specs[i])
    layers.image += _MARKINGS_WEIGHT * layers.markings
    for i in (i for i in range(len(specs)) if i not in first):
        masks[i], details[i] = _RENDERERS[specs[i].name](finding_rng, anat, grid, layers, specs[i])

    image = layers.image
    if not draw_findings:
        plain = _render_anatomy(np.random.default_rng(texture_seed), healthy, grid)
        image = plain.image + _MARKINGS_WEIGHT * plain.markings
    findings = [
        Finding(name=spec.name, side=spec.side, zone=spec.zone, prompt=_prompt(spec), mask=masks[i])
        for i, spec in enumerate(specs)
    ]
    report = _write_report(report_rng, specs, [details[i] for i in range(len(specs))])
    return Phantom(image=_finish(finish_rng, image, size), report=report, findings=findings)


# ==================================================================================================
# Datastore writer
# ==================================================================================================

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


def _write_phantom(out: Path, seed: int, size: int, width: int, index: int) -> list[dict[str, str]]:
    """Draw phantom ``index`` and write its report, masks and image; return its findings.csv rows."""
    phantom = generate_phantom(np.random.default_rng([seed, index]), size)
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
    out_dir: str | os.PathLike, n: int, seed: int, size: int = 256, overwrite: bool = False, workers: int = 1
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
    Raises ConfigError for bad arguments or when ``out_dir`` already holds phantoms and
    ``overwrite`` is False.
    """
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    out = Path(out_dir)
    _check_arguments(out, n, size)
    _clear_previous(out, overwrite)
    masks_dir = out / GROUND_TRUTH_DIR / MASKS_DIR
    masks_dir.mkdir(parents=True, exist_ok=True)

    width = max(5, len(str(n - 1)))
    write = functools.partial(_write_phantom, out, int(seed), int(size), width)
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
        "image_bits": 8,
        "convention": "patient right = image left",
        "findings": list(FINDING_NAMES),
    }
    manifest_text = json.dumps(manifest, indent=2) + "\n"
    _atomic_write(out / GROUND_TRUTH_DIR / MANIFEST_JSON, manifest_text.encode("utf-8"))
    return out


# ==================================================================================================
# CLI
# ==================================================================================================


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afloc-phantoms",
        description=(
            "Write synthetic chest-radiograph phantoms (8-bit PNG + report .txt) as a MONAI Label "
            f"datastore folder, with finding masks and findings.csv in {GROUND_TRUTH_DIR}/."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--n", required=True, type=int, help="number of phantoms (> 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    parser.add_argument(
        "--size", type=int, default=256, help=f"image side in pixels ({MIN_SIZE}-{MAX_SIZE}, default 256)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace phantoms already in --out")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing phantoms (same files; default 1)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``afloc-phantoms``; returns the process exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error(f"--n must be a positive integer, got {args.n}")
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        parser.error(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {args.size}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out '{args.out}' is a file, not a folder")
    try:
        out = write_phantom_datastore(
            args.out, args.n, args.seed, args.size, overwrite=args.overwrite, workers=max(1, args.workers)
        )
    except AFLocError as error:
        print(f"afloc-phantoms: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        reason = error.strerror or error
        print(f"afloc-phantoms: error: cannot write to '{args.out}': {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("afloc-phantoms: interrupted; every file already written is complete", file=sys.stderr)
        return 130
    print(f"wrote {args.n} phantoms to {out} (ground truth in {out / GROUND_TRUTH_DIR})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
