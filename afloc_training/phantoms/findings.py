"""Phantom findings: which ones a study gets (:func:`_choose_specs`), where they go, how each is
drawn into the anatomy's layers with its mask (:data:`_RENDERERS`), and its canonical prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from afloc_training.phantoms.anatomy import ZONES, _Anatomy, _Grid, _Layers, _Lung, _heart, _lung_region, _smooth_noise

FINDING_NAMES = ("opacity", "nodule", "effusion", "pneumothorax", "atelectasis", "cardiomegaly", "edema")


# The image field of view assumed when a report quotes a size in mm.
_FIELD_OF_VIEW_MM = 400.0


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
