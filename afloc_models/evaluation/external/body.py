"""Patient geometry of the external simulator, in millimetres, and its projection onto pixels.

Patient coordinates: ``u`` across the chest (negative = patient's right = image left, the usual
frontal display), ``v`` downwards from the level of the lung apices. Every structure returns a
path length in mm through it (how much tissue an X-ray crosses there), so the projection follows
Beer-Lambert: tissues add, air subtracts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import interpolate
from skimage.draw import polygon2mask

__all__ = ["Body", "Pose", "Projection", "sample_body", "sample_pose", "tube_path"]


@dataclass(frozen=True)
class Pose:
    """Where the patient lies on the detector: pixel size, in-plane rotation and centring."""

    height: int
    width: int
    mm_per_px: float
    angle: float  #: radians, positive turns the patient clockwise on screen
    origin: tuple[float, float]  #: pixel ``(row, col)`` of the patient point ``u = 0, v = 0``

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient coordinates ``(u, v)`` in mm of every pixel centre, each ``[H, W]`` float32."""
        rows, cols = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32) + 0.5
        du = (cols - self.origin[1]) * self.mm_per_px
        dv = (rows - self.origin[0]) * self.mm_per_px
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return (cos * du + sin * dv).astype(np.float32), (-sin * du + cos * dv).astype(np.float32)

    def to_pixels(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel ``(row, col)`` of patient points (inverse of :meth:`grid`)."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        cols = self.origin[1] + (cos * u - sin * v) / self.mm_per_px
        rows = self.origin[0] + (sin * u + cos * v) / self.mm_per_px
        return rows, cols


def sample_pose(rng: np.random.Generator, body: "Body", long_side: int) -> Pose:
    """Field of view 330-440 mm, portrait or landscape-ish aspect, rotation up to 9 degrees,
    the patient off-centre by up to 6% of the field."""
    aspect = float(rng.choice([1.0, 0.82, 0.9, 1.12, 1.22], p=[0.3, 0.2, 0.2, 0.15, 0.15]))
    height = long_side if aspect <= 1.0 else int(round(long_side / aspect))
    width = int(round(height * aspect)) if aspect <= 1.0 else long_side
    fov = rng.uniform(330.0, 440.0)
    mm_per_px = fov / max(height, width)
    angle = math.radians(rng.uniform(-9.0, 9.0))
    # Centre the chest (between neck and diaphragm) with a random offset.
    centre_v = 0.45 * body.lung_height
    row = height / 2 + rng.uniform(-0.06, 0.06) * height - centre_v / mm_per_px
    col = width / 2 + rng.uniform(-0.06, 0.06) * width
    return Pose(height=height, width=width, mm_per_px=mm_per_px, angle=angle, origin=(row, col))


@dataclass(frozen=True)
class Body:
    """A sampled habitus. Lengths in mm; ``lateral`` sign: -1 right lung, +1 left lung."""

    lung_height: float  #: apex to the lowest costophrenic angle
    half_width: tuple[float, float]  #: lateral lung border, (right, left)
    dome: tuple[float, float]  #: v of each hemidiaphragm's top (right is higher)
    dome_depth: float
    body_depth: float  #: antero-posterior thickness at the midline
    chest_half: float  #: half the body width at the chest
    neck_half: float
    heart_lv: tuple[float, float, float]  #: (u, v, radius) of the left-ventricle circle
    heart_ra: tuple[float, float, float]  #: (u, v, radius) of the right-atrium circle
    aortic_knob: tuple[float, float, float]
    carina_v: float
    rib_start: float
    rib_step: float
    scapulae: bool
    breasts: bool
    arms: bool
    jitter: tuple[float, ...]  #: outline jitter of each lung control point (mm)

    def cardiomegalic(self, rng: np.random.Generator) -> "Body":
        """An enlarged heart (cardiothoracic ratio well above 0.5), growing left and down."""
        grow = rng.uniform(1.28, 1.42)
        u, v, r = self.heart_lv
        ru, rv, rr = self.heart_ra
        return _replace(self, heart_lv=(u + (grow - 1) * r * 0.8, v + (grow - 1) * r * 0.25, r * grow),
                        heart_ra=(ru - (grow - 1) * rr * 0.5, rv, rr * (1 + (grow - 1) * 0.6)))

    # ----------------------------------------------------------------- outlines
    def diaphragm_v(self, u: np.ndarray, side: int) -> np.ndarray:
        """Height of the hemidiaphragm under ``u`` on one side (``side`` -1 right, +1 left)."""
        top = self.dome[0] if side < 0 else self.dome[1]
        half = self.half_width[0] if side < 0 else self.half_width[1]
        centre = 0.45 * half
        t = np.clip((np.abs(u) - centre) / (0.62 * half), -1.4, 1.0)
        return top + self.dome_depth * t * t

    def lung_outline(self, side: int) -> tuple[np.ndarray, np.ndarray]:
        """Closed outline ``(u, v)`` of one lung: spline through the apex and lateral wall, then
        the diaphragm dome from the costophrenic angle back to the heart."""
        half = self.half_width[0] if side < 0 else self.half_width[1]
        bottom_lateral = float(self.diaphragm_v(np.float32(half * 0.97), side))
        medial = 24.0 if side < 0 else 30.0
        points = np.array(
            [
                (medial, 0.62 * self.lung_height),
                (medial - 2, 0.35 * self.lung_height),
                (medial + 4, 0.12 * self.lung_height),
                (0.30 * half, -4.0),
                (0.55 * half, 2.0),
                (0.82 * half, 0.18 * self.lung_height),
                (0.97 * half, 0.45 * self.lung_height),
                (1.00 * half, 0.72 * self.lung_height),
                (0.97 * half, bottom_lateral),
            ]
        )
        jitter = np.array(self.jitter[: 2 * len(points)]).reshape(-1, 2) if side < 0 else \
            np.array(self.jitter[2 * len(points) : 4 * len(points)]).reshape(-1, 2)
        points = points + jitter
        tck, _ = interpolate.splprep([points[:, 0], points[:, 1]], s=0, k=3)
        a, v = interpolate.splev(np.linspace(0, 1, 120), tck)
        dome_a = np.linspace(0.97 * half, medial + 2, 60)
        dome_v = self.diaphragm_v(dome_a.astype(np.float32), side)
        heart_side = dome_a < 0.4 * half
        dome_v = np.where(heart_side, np.minimum(dome_v, dome_v[~heart_side][-1] + 0.0), dome_v)
        a = np.concatenate([a, dome_a])
        v = np.concatenate([v, dome_v])
        return side * a, v

    def lung_bottom(self, side: int) -> float:
        """v of the lung base under the middle of the lung (zones are thirds of apex..base)."""
        half = self.half_width[0] if side < 0 else self.half_width[1]
        return float(self.diaphragm_v(np.float32(0.6 * half), side))

    def zone_band(self, side: int, zone: str) -> tuple[float, float]:
        bottom = self.lung_bottom(side)
        index = ("upper", "middle", "lower").index(zone)
        return bottom * index / 3.0, bottom * (index + 1) / 3.0

    def hilum(self, side: int) -> tuple[float, float]:
        return (side * (48.0 if side < 0 else 55.0), 0.36 * self.lung_height)


def _replace(body: Body, **changes) -> Body:
    import dataclasses

    return dataclasses.replace(body, **changes)


def sample_body(rng: np.random.Generator) -> Body:
    lung_height = rng.uniform(205.0, 275.0)
    right = rng.uniform(105.0, 140.0)
    left = right * rng.uniform(0.97, 1.06)
    dome_left = lung_height - rng.uniform(28.0, 40.0)
    dome_right = dome_left - rng.uniform(8.0, 24.0)
    lv_r = rng.uniform(48.0, 60.0)
    ra_r = rng.uniform(30.0, 38.0)
    heart_v = dome_left - lv_r * 0.55
    return Body(
        lung_height=lung_height,
        half_width=(right, left),
        dome=(dome_right, dome_left),
        dome_depth=rng.uniform(22.0, 40.0),
        body_depth=rng.uniform(170.0, 250.0),
        chest_half=max(right, left) + rng.uniform(18.0, 34.0),
        neck_half=rng.uniform(50.0, 66.0),
        heart_lv=(rng.uniform(22.0, 38.0), heart_v, lv_r),
        heart_ra=(-rng.uniform(18.0, 26.0), heart_v - rng.uniform(0.0, 14.0), ra_r),
        aortic_knob=(rng.uniform(24.0, 34.0), rng.uniform(0.22, 0.28) * lung_height, rng.uniform(14.0, 20.0)),
        carina_v=rng.uniform(0.30, 0.36) * lung_height,
        rib_start=rng.uniform(-18.0, -8.0),
        rib_step=lung_height * rng.uniform(0.085, 0.1),
        scapulae=bool(rng.random() < 0.55),
        breasts=bool(rng.random() < 0.35),
        arms=bool(rng.random() < 0.4),
        jitter=tuple(float(j) for j in rng.normal(0.0, 3.5, size=36)),
    )


# ------------------------------------------------------------------------------ path lengths
def tube_path(u: np.ndarray, v: np.ndarray, points: np.ndarray, radius, window: Optional[float] = None) -> np.ndarray:
    """Path length ``[H, W]`` (mm) through a cylinder of ``radius`` around a polyline ``points``
    ``[N, 2]`` (u, v); ``radius`` may be one value or one per vertex (tapering)."""
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float32), (len(points),))
    out = np.zeros(u.shape, dtype=np.float32)
    reach = float(radii.max()) + 1.0
    lo_u, hi_u = points[:, 0].min() - reach, points[:, 0].max() + reach
    lo_v, hi_v = points[:, 1].min() - reach, points[:, 1].max() + reach
    box = (u >= lo_u) & (u <= hi_u) & (v >= lo_v) & (v <= hi_v)
    if not box.any():
        return out
    rows, cols = np.nonzero(box)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    uu, vv = u[r0:r1, c0:c1], v[r0:r1, c0:c1]
    best = np.zeros(uu.shape, dtype=np.float32)
    for (a, b), (ra, rb) in zip(zip(points[:-1], points[1:]), zip(radii[:-1], radii[1:])):
        du, dv = b[0] - a[0], b[1] - a[1]
        length2 = du * du + dv * dv
        if length2 <= 0:
            continue
        t = np.clip(((uu - a[0]) * du + (vv - a[1]) * dv) / length2, 0.0, 1.0)
        d2 = (uu - a[0] - t * du) ** 2 + (vv - a[1] - t * dv) ** 2
        r = ra + (rb - ra) * t
        np.maximum(best, 2.0 * np.sqrt(np.clip(r * r - d2, 0.0, None)), out=best)
    out[r0:r1, c0:c1] = best
    return out


def ball_path(u: np.ndarray, v: np.ndarray, cu: float, cv: float, radius: float) -> np.ndarray:
    """Path length ``[H, W]`` through a sphere (chord length)."""
    return 2.0 * np.sqrt(np.clip(radius * radius - (u - cu) ** 2 - (v - cv) ** 2, 0.0, None)).astype(np.float32)


def bezier(p0, p1, p2, n: int = 14) -> np.ndarray:
    """Quadratic Bezier curve through control points, ``[n, 2]``."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t * t * np.asarray(p2)


@dataclass
class Projection:
    """Tissue path lengths (mm) of one study, each ``[H, W]`` float32, and the lung masks."""

    pose: Pose
    u: np.ndarray
    v: np.ndarray
    soft: np.ndarray  #: soft tissue crossed (water-like)
    bone: np.ndarray  #: bone crossed
    metal: np.ndarray  #: devices
    air: np.ndarray  #: lung air replacing soft tissue inside the body
    lungs: dict  #: side (-1, +1) -> bool mask
    heart: np.ndarray  #: bool, the cardiac silhouette
    lung_depth: np.ndarray  #: air available at each pixel before findings fill it
    vessels: np.ndarray  #: soft tissue of the vessel tree inside the lungs
    texture: np.ndarray  #: fine interstitial texture inside the lungs
    fill: Optional[np.ndarray] = None  #: air replaced by findings (fluid, consolidation, tissue)
    extra_air: Optional[np.ndarray] = None  #: air added by findings (pneumothorax, bronchograms)
    markings: Optional[np.ndarray] = None  #: multiplier of vessels and texture (0 where none)

    def __post_init__(self) -> None:
        zeros = np.zeros_like(self.soft)
        self.fill = zeros.copy() if self.fill is None else self.fill
        self.extra_air = zeros.copy() if self.extra_air is None else self.extra_air
        self.markings = np.ones_like(self.soft) if self.markings is None else self.markings

    def attenuation(self, mu_soft: float, mu_bone: float, mu_metal: float) -> np.ndarray:
        """Line integral of attenuation ``[H, W]`` (Beer-Lambert exponent)."""
        markings = (self.vessels + self.texture) * self.markings
        air = np.clip(self.air - markings - self.fill, 0.0, None) + self.extra_air
        return mu_soft * np.clip(self.soft - air, 0.0, None) + mu_bone * self.bone + mu_metal * self.metal


def lung_masks(body: Body, pose: Pose) -> dict:
    masks = {}
    for side in (-1, 1):
        a, v = body.lung_outline(side)
        rows, cols = pose.to_pixels(a, v)
        masks[side] = polygon2mask((pose.height, pose.width), np.stack([rows, cols], axis=1))
    return masks


def heart_silhouette(body: Body, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cardiac silhouette above the diaphragm (union of the two chamber circles and the band
    joining them)."""
    lu, lv, lr = body.heart_lv
    ru, rv, rr = body.heart_ra
    inside = ((u - lu) ** 2 + (v - lv) ** 2 <= lr * lr) | ((u - ru) ** 2 + (v - rv) ** 2 <= rr * rr)
    inside |= (u > ru) & (u < lu) & (v > min(lv, rv) - 0.6 * min(lr, rr)) & (v < max(lv, rv) + 0.8 * rr)
    floor = np.where(u < 0, body.diaphragm_v(u, -1), body.diaphragm_v(u, 1))
    return inside & (v < floor + 6.0)
