"""Phantom anatomy: sampled body habitus, the posed pixel grid, and the rendered normal chest.

Geometry lives in an "anatomical frame" (``x`` 0..1 from image left to right, ``y`` 0..1 from top
to bottom); a random pose maps it onto pixels (:class:`_Grid`), so every structure and mask is
evaluated on the same grid. Rendering gives attenuation-like layers (:class:`_Layers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

SIDES = ("right", "left", "bilateral")


ZONES = ("upper", "middle", "lower")


_LUNG_EXPONENT = 2.5


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


def _sample_grid(
    rng: np.random.Generator, size: int, rotation_deg: float = 4.0, scale_range: tuple[float, float] = (0.92, 1.04),
    max_shift: float = 0.025,
) -> _Grid:
    """A random pose: rotation up to ``rotation_deg``, anatomy scale in ``scale_range``, shift up to
    ``max_shift`` of the image each way (the defaults are the plain style's)."""
    angle = float(np.deg2rad(rng.uniform(-rotation_deg, rotation_deg)))
    scale = float(rng.uniform(*scale_range))
    shift = (float(rng.uniform(-max_shift, max_shift)), float(rng.uniform(-max_shift, max_shift)))
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
    body: np.ndarray


def _render_anatomy(rng: np.random.Generator, anat: _Anatomy, grid: _Grid, rib_gain: float = 1.0) -> _Layers:
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
    image = image + 0.075 * rib_gain * _rib_shadows(anat, grid) * body
    image = image + 0.12 * _clavicles(anat, grid) * body

    markings = np.zeros_like(image)
    for lung in anat.lungs:
        markings = np.maximum(markings, _vessel_markings(rng, grid, lung) * lungs[lung.side])
        hilum = np.exp(-(np.hypot(x - lung.hilum[0], y - lung.hilum[1]) / 0.035) ** 2)
        markings = np.maximum(markings, 0.8 * hilum * lungs[lung.side])
    return _Layers(image=image, markings=markings, lungs=lungs, body=body)
