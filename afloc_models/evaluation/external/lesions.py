"""Findings of the external simulator: where they go, how they change the path lengths, their masks.

Each renderer edits a :class:`Projection` in place (``fill`` replaces lung air with tissue or
fluid, ``extra_air`` adds air, ``markings`` removes vessels) and returns the finding's mask
``[H, W]`` bool and a detail for the report (a size in mm, or "").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from scipy import ndimage
from skimage.draw import polygon2mask

from afloc_models.evaluation.external.anatomy import fractal_noise
from afloc_models.evaluation.external.body import Body, Projection, bezier, heart_silhouette, tube_path

__all__ = ["Spec", "choose_specs", "RENDERERS"]


@dataclass(frozen=True)
class Spec:
    """A finding before rendering. ``side``: "right", "left", "bilateral" or None."""

    name: str
    side: Optional[str]
    zone: Optional[str]
    variant: str = ""


_SIGN = {"right": -1, "left": 1}


def choose_specs(rng: np.random.Generator) -> list[Spec]:
    """One to three findings that do not sit on one another."""
    count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    weights = np.array([0.19, 0.18, 0.15, 0.13, 0.12, 0.12, 0.11])
    names = ["opacity", "nodule", "effusion", "pneumothorax", "atelectasis", "cardiomegaly", "edema"]
    picked = list(rng.choice(names, size=count, replace=False, p=weights / weights.sum()))
    picked.sort(key=lambda n: n in ("opacity", "nodule", "atelectasis"))
    taken: set[tuple[str, str]] = set()
    wet: set[str] = set()
    specs: list[Spec] = []
    for name in picked:
        if name == "cardiomegaly":
            specs.append(Spec(name, None, None))
        elif name == "edema":
            specs.append(Spec(name, "bilateral", None))
            taken |= {("right", "middle"), ("left", "middle")}
        elif name == "effusion":
            side = str(rng.choice(["right", "left", "bilateral"], p=[0.42, 0.42, 0.16]))
            wet = {"right", "left"} if side == "bilateral" else {side}
            specs.append(Spec(name, side, None, str(rng.choice(["small", "moderate", "large"]))))
            taken |= {(s, "lower") for s in wet}
        elif name == "pneumothorax":
            sides = [s for s in ("right", "left") if s not in wet]
            if not sides:
                continue
            side = str(rng.choice(sides))
            variant = str(rng.choice(["apical", "large"]))
            specs.append(Spec(name, side, "upper" if variant == "apical" else None, variant))
            taken |= {(side, z) for z in (("upper",) if variant == "apical" else ("upper", "middle", "lower"))}
        else:
            zones = ("middle", "lower") if name == "atelectasis" else ("upper", "middle", "lower")
            free = sorted((s, z) for s in ("right", "left") for z in zones if (s, z) not in taken)
            if not free:
                continue
            side, zone = free[int(rng.integers(len(free)))]
            taken.add((side, zone))
            if name == "nodule":
                variant = "mass" if rng.random() < 0.3 else "nodule"
            elif name == "atelectasis":
                variant = "lobar" if zone == "lower" and rng.random() < 0.5 else "discoid"
            else:
                variant = ""
            specs.append(Spec(name, side, zone, variant))
    return specs


def _place(rng: np.random.Generator, body: Body, proj: Projection, side: int, zone: str,
           margin_mm: float) -> tuple[float, float]:
    """A point ``(u, v)`` in one lung's zone, away from the heart and ``margin_mm`` inside the lung."""
    lung = proj.lungs[side] & ~proj.heart
    top, bottom = body.zone_band(side, zone)
    band = (proj.v >= top) & (proj.v < bottom)
    distance = ndimage.distance_transform_edt(proj.lungs[side]) * proj.pose.mm_per_px
    for margin in (margin_mm, 0.6 * margin_mm, 0.3 * margin_mm, 0.0):
        candidates = np.flatnonzero(lung & band & (distance >= margin))
        if candidates.size:
            pick = int(candidates[int(rng.integers(candidates.size))])
            return float(proj.u.flat[pick]), float(proj.v.flat[pick])
    hu, hv = body.hilum(side)
    return hu * 1.6, 0.5 * (top + bottom)


def _opacity(rng, body: Body, proj: Projection, spec: Spec):
    side = _SIGN[spec.side]
    cu, cv = _place(rng, body, proj, side, spec.zone, 18.0)
    angle = rng.uniform(0, np.pi)
    su, sv = rng.uniform(18.0, 32.0), rng.uniform(14.0, 26.0)
    du, dv = proj.u - cu, proj.v - cv
    a = (du * np.cos(angle) + dv * np.sin(angle)) / su
    b = (-du * np.sin(angle) + dv * np.cos(angle)) / sv
    lumpy = 0.35 * fractal_noise(rng, proj.u.shape, (6.0 / proj.pose.mm_per_px,))
    field = np.exp(-0.5 * (a * a + b * b)) * (1.0 + lumpy)
    lung = proj.lungs[side]
    density = np.clip((field - 0.3) / 0.3, 0.0, 1.0) * lung
    proj.fill += rng.uniform(0.6, 0.9) * proj.air * density
    hu, hv = body.hilum(side)
    for _ in range(int(rng.integers(2, 5))):  # air bronchograms pointing back to the hilum
        tip = (cu + rng.normal(0, su * 0.5), cv + rng.normal(0, sv * 0.5))
        root = (tip[0] + (hu - tip[0]) * 0.45, tip[1] + (hv - tip[1]) * 0.45)
        proj.extra_air += 14.0 * (tube_path(proj.u, proj.v, bezier(root, (0.5 * (root[0] + tip[0]) + rng.normal(0, 3),
                                                                             0.5 * (root[1] + tip[1])), tip, 8),
                                             np.linspace(2.2, 1.0, 8)) > 0) * density
    return (field > 0.45) & lung, ""


def _nodule(rng, body: Body, proj: Projection, spec: Spec):
    side = _SIGN[spec.side]
    radius = rng.uniform(17.0, 30.0) if spec.variant == "mass" else rng.uniform(5.5, 12.0)
    cu, cv = _place(rng, body, proj, side, spec.zone, radius + 6.0)
    du, dv = proj.u - cu, proj.v - cv
    theta = np.arctan2(dv, du)
    edge = np.full(theta.shape, radius, dtype=np.float32)
    for k in range(2, 6):  # lobulated margin
        edge += radius * rng.uniform(0.0, 0.07) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(du, dv)
    path = 2.0 * edge * np.sqrt(np.clip(1.0 - (distance / edge) ** 2, 0.0, None))
    proj.fill += path
    if rng.random() < 0.3:  # spiculated
        for angle in rng.uniform(0, 2 * np.pi, size=int(rng.integers(6, 12))):
            start = (cu + np.cos(angle) * radius * 0.8, cv + np.sin(angle) * radius * 0.8)
            end = (cu + np.cos(angle) * radius * rng.uniform(1.4, 1.9), cv + np.sin(angle) * radius * rng.uniform(1.4, 1.9))
            proj.fill += tube_path(proj.u, proj.v, np.array([start, end]), np.array([1.4, 0.4])) * 3.0
    if spec.variant != "mass" and rng.random() < 0.2:  # calcified core
        proj.bone += 0.5 * path * (distance < 0.5 * radius)
    mask = (distance <= edge) & (proj.lungs[side] | proj.heart)
    return mask, f"{2 * radius:.0f}"


def _effusion(rng, body: Body, proj: Projection, spec: Spec):
    sides = (-1, 1) if spec.side == "bilateral" else (_SIGN[spec.side],)
    height = {"small": (20.0, 35.0), "moderate": (38.0, 60.0), "large": (65.0, 95.0)}[spec.variant]
    mask = np.zeros(proj.u.shape, dtype=bool)
    for side in sides:
        half = body.half_width[0] if side < 0 else body.half_width[1]
        rise = rng.uniform(15.0, 35.0)
        level = body.dome[0 if side < 0 else 1] - rng.uniform(*height) - rise * np.clip(np.abs(proj.u) / half, 0, 1.2) ** 3
        lung = proj.lungs[side]
        depth = np.clip((proj.v - level) / 14.0, 0.0, 1.0) * lung
        proj.fill += 0.97 * proj.air * depth
        proj.markings = proj.markings * (1.0 - depth)
        mask |= lung & (proj.v > level)
    return mask, ""


def _pneumothorax(rng, body: Body, proj: Projection, spec: Spec):
    side = _SIGN[spec.side]
    hu, hv = body.hilum(side)
    a, v = body.lung_outline(side)
    factor = rng.uniform(0.7, 0.84) if spec.variant == "large" else rng.uniform(0.8, 0.9)
    su, sv = hu + (a - hu) * factor, hv + (v - hv) * factor
    rows, cols = proj.pose.to_pixels(su, sv)
    collapsed = polygon2mask(proj.u.shape, np.stack([rows, cols], axis=1))
    lung = proj.lungs[side]
    bottom = body.lung_bottom(side)
    if spec.variant == "apical":
        extent = proj.v < 0.36 * bottom
    else:
        extent = (proj.v < 0.8 * bottom) & (side * proj.u > side * hu)
    region = lung & ~collapsed & extent
    proj.markings = proj.markings * ~region
    proj.extra_air += 9.0 * region
    line = tube_path(proj.u, proj.v, np.stack([su, sv], axis=1), 1.0) > 0
    proj.fill += 22.0 * (line & ndimage.binary_dilation(region, iterations=2))
    return region, ""


def _atelectasis(rng, body: Body, proj: Projection, spec: Spec):
    side = _SIGN[spec.side]
    lung = proj.lungs[side]
    if spec.variant == "lobar":
        hu, hv = body.hilum(side)
        half = body.half_width[0] if side < 0 else body.half_width[1]
        base = body.lung_bottom(side) + 6.0
        corners = np.array([(1.2 * hu, hv + rng.uniform(15, 30)), (side * 0.45 * half, base),
                            (side * rng.uniform(0.8, 0.95) * half, base)])
        rows, cols = proj.pose.to_pixels(corners[:, 0], corners[:, 1])
        shape = polygon2mask(proj.u.shape, np.stack([rows, cols], axis=1))
        density = ndimage.gaussian_filter(shape.astype(np.float32), 1.5 / proj.pose.mm_per_px)
        proj.fill += 0.75 * proj.air * density * lung
        return shape & lung, ""
    cu, cv = _place(rng, body, proj, side, spec.zone, 22.0)
    length = rng.uniform(40.0, 70.0)
    tilt = np.deg2rad(rng.uniform(-15, 15))
    du, dv = np.cos(tilt) * length / 2, np.sin(tilt) * length / 2
    sag = rng.uniform(-6.0, 6.0)
    curve = bezier((cu - du, cv - dv), (cu, cv + sag), (cu + du, cv + dv), 10)
    band = tube_path(proj.u, proj.v, curve, rng.uniform(2.5, 4.0))
    plate = band > 0
    proj.fill += rng.uniform(45.0, 70.0) * np.sqrt(band / max(float(band.max()), 1e-6)) * lung
    return plate & lung, ""


def _cardiomegaly(rng, body: Body, proj: Projection, spec: Spec):
    return heart_silhouette(body, proj.u, proj.v), ""


def _edema(rng, body: Body, proj: Projection, spec: Spec):
    haze = np.zeros(proj.u.shape, dtype=np.float32)
    for side in (-1, 1):
        hu, hv = body.hilum(side)
        su, sv = rng.uniform(28.0, 42.0), rng.uniform(42.0, 60.0)
        haze = np.maximum(haze, np.exp(-0.5 * (((proj.u - hu) / su) ** 2 + ((proj.v - hv) / sv) ** 2)))
    haze *= 1.0 + 0.25 * fractal_noise(rng, haze.shape, (5.0 / proj.pose.mm_per_px,))
    lungs = proj.lungs[-1] | proj.lungs[1]
    proj.fill += rng.uniform(0.35, 0.55) * proj.air * np.clip(haze, 0, 1) * lungs
    for side in (-1, 1):  # Kerley B lines: short horizontal lines at the lateral bases
        half = body.half_width[0] if side < 0 else body.half_width[1]
        for _ in range(int(rng.integers(4, 9))):
            y = body.lung_bottom(side) - rng.uniform(8.0, 55.0)
            x = side * (half - rng.uniform(2.0, 8.0))
            seg = np.array([(x, y), (x - side * rng.uniform(10.0, 18.0), y + rng.normal(0, 1.0))])
            proj.fill += 30.0 * (tube_path(proj.u, proj.v, seg, 0.8) > 0) * lungs
    return (haze > 0.45) & lungs, ""


def _visible(render):
    """Keep a mask to where the finding could show: some lung air to replace (not behind the
    heart's full thickness)."""

    def wrapped(rng, body: Body, proj: Projection, spec: Spec):
        mask, detail = render(rng, body, proj, spec)
        return mask & (proj.air > 3.0), detail

    wrapped.__doc__ = render.__doc__
    return wrapped


_Renderer = Callable[[np.random.Generator, Body, Projection, Spec], tuple[np.ndarray, str]]
RENDERERS: dict[str, _Renderer] = {
    "opacity": _visible(_opacity),
    "nodule": _visible(_nodule),
    "effusion": _visible(_effusion),
    "pneumothorax": _pneumothorax,
    "atelectasis": _visible(_atelectasis),
    "cardiomegaly": _cardiomegaly,
    "edema": _visible(_edema),
}
