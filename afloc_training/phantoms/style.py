"""Phantom style: how much one study's look varies (domain randomisation).

A ``plain`` study is the original clean phantom: flat tissue, faint noise, findings at full
contrast. A ``varied`` study draws its look from wide ranges so that a model cannot learn the
generator's way of drawing a chest instead of the findings: patient pose and field of view,
tissue texture, rib and vessel contrast, exposure, noise, blur or console sharpening, a heel-effect
gradient, collimator shutters, support devices (ECG leads, wires, tubes), and findings from faint
and soft-edged to dense and sharp, with their own texture. Masks never change with the style: only
how the image looks does.

:func:`sample_style` draws one :class:`Style` from its own random stream;
:func:`add_texture`, :func:`restyle_finding` and :func:`add_devices` apply it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from afloc_training.phantoms.anatomy import _segment_distance, _smooth_noise

STYLES = ("plain", "varied")


@dataclass(frozen=True)
class Style:
    """One study's look. ``plain`` values reproduce the original phantoms exactly."""

    name: str
    rotation_deg: float  # pose: largest in-plane rotation
    scale: tuple[float, float]  # pose: anatomy size on the image (below 1: more field of view)
    shift: float  # pose: largest off-centre shift, fraction of the image
    texture: float  # amplitude of tissue texture (0: flat)
    rib_gain: float  # multiplies the rib shadows' contrast
    markings: float  # vessel-marking weight
    finding_gain: float  # multiplies every finding's contrast
    finding_blur: float  # edge softness of findings, fraction of the image side
    finding_mottle: float  # texture inside findings
    devices: int  # ECG leads, wires and tubes drawn over the chest
    noise: float  # largest quantum-noise standard deviation
    sharpen: float  # console unsharp masking (0: none)
    blur: float  # detector blur in pixels at 256
    heel: float  # intensity gradient across the image
    shutter: float  # collimator border width, fraction of the side (0: none)


# Chance that a varied study keeps one property at its plain value.
PLAIN_SHARE = 0.35


PLAIN = Style(
    name="plain", rotation_deg=4.0, scale=(0.92, 1.04), shift=0.025, texture=0.0, rib_gain=1.0,
    markings=0.15, finding_gain=1.0, finding_blur=0.0, finding_mottle=0.0, devices=0, noise=0.018,
    sharpen=0.0, blur=0.7, heel=0.0, shutter=0.0,
)


def sample_style(rng: np.random.Generator, name: str) -> Style:
    """The style of one study: ``PLAIN`` for ``"plain"``, a random draw for ``"varied"``."""
    if name == "plain":
        return PLAIN
    if name != "varied":
        raise ValueError(f"unknown phantom style '{name}' (known: {', '.join(STYLES)})")
    # Each property keeps its plain value with probability PLAIN_SHARE, so studies run from nearly
    # plain to far from it: the plain ones keep the findings easy to learn early in a short run.
    def draw(plain_value, value):
        return plain_value if rng.random() < PLAIN_SHARE else value

    return Style(
        name="varied",
        rotation_deg=10.0,
        scale=(0.78, 1.06),
        shift=0.06,
        texture=float(draw(0.0, rng.uniform(0.01, 0.06))),
        rib_gain=float(draw(1.0, rng.uniform(0.4, 2.0))),
        markings=float(draw(0.15, rng.uniform(0.08, 0.3))),
        finding_gain=float(draw(1.0, rng.uniform(0.5, 1.2))),
        finding_blur=float(draw(0.0, rng.uniform(0.002, 0.01))),
        finding_mottle=float(draw(0.0, rng.uniform(0.1, 0.5))),
        devices=int(draw(0, int(rng.integers(1, 4)))),
        noise=float(draw(0.018, rng.uniform(0.02, 0.07))),
        sharpen=float(draw(0.0, rng.uniform(0.3, 1.2))),
        blur=float(draw(0.7, rng.uniform(0.4, 1.6))),
        heel=float(draw(0.0, rng.uniform(-0.1, 0.1))),
        shutter=float(draw(0.0, rng.uniform(0.02, 0.08))),
    )


def add_texture(rng: np.random.Generator, image: np.ndarray, body: np.ndarray, style: Style) -> np.ndarray:
    """Tissue texture at two scales inside the body ``[H, W]`` (nothing for ``plain``)."""
    if style.texture <= 0:
        return image
    scale = image.shape[0] / 256.0
    texture = 0.6 * _smooth_noise(rng, image.shape, 1.5 * scale) + 0.8 * _smooth_noise(rng, image.shape, 5.0 * scale)
    return image + style.texture * texture * body


def restyle_finding(
    rng: np.random.Generator, before: np.ndarray, after: np.ndarray, style: Style
) -> np.ndarray:
    """The image with one finding's change ``after - before`` re-rendered in ``style``: scaled in
    contrast, softened at its edges and given its own mottle. ``plain`` returns ``after``."""
    if style.name == "plain":
        return after
    change = after - before
    if style.finding_blur > 0:
        change = ndimage.gaussian_filter(change, style.finding_blur * change.shape[0], mode="nearest")
    if style.finding_mottle > 0:
        scale = change.shape[0] / 256.0
        change = change * (1.0 + style.finding_mottle * np.clip(_smooth_noise(rng, change.shape, 1.2 * scale), -2, 2) / 2)
    return before + style.finding_gain * change


def add_devices(rng: np.random.Generator, image: np.ndarray, style: Style) -> np.ndarray:
    """ECG electrodes with their leads, wires and tubes over the chest ``[H, W]`` (bright)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = image
    for _ in range(style.devices):
        kind = rng.random()
        if kind < 0.5:  # an electrode: a bright ring with a dot, and its lead
            cx, cy = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.9)
            r = rng.uniform(0.012, 0.022)
            d = np.hypot(xx - cx, yy - cy)
            out = out + 0.35 * (np.abs(d - r) < 0.004) + 0.4 * (d < 0.3 * r)
            end = (rng.uniform(0.0, 1.0), rng.choice([0.0, 1.0]))
            out = out + _curve(rng, xx, yy, (cx, cy), end, width=0.0025, weight=0.25)
        else:  # a tube or line: a long gentle curve, sometimes with a radiopaque stripe
            start = (rng.uniform(0.3, 0.7), 0.0)
            end = (rng.uniform(0.2, 0.8), rng.uniform(0.35, 0.85))
            out = out + _curve(rng, xx, yy, start, end, width=rng.uniform(0.002, 0.006),
                               weight=rng.uniform(0.15, 0.4))
    return out


def _curve(rng, xx, yy, a, b, width: float, weight: float) -> np.ndarray:
    """A bright quadratic curve from ``a`` to ``b`` with a random bend ``[H, W]``."""
    bend = rng.normal(0.0, 0.12, size=2)
    control = ((a[0] + b[0]) / 2 + bend[0], (a[1] + b[1]) / 2 + bend[1])
    t = np.linspace(0.0, 1.0, 64)[:, None]
    points = (1 - t) ** 2 * np.array(a) + 2 * (1 - t) * t * np.array(control) + t**2 * np.array(b)
    canvas = np.zeros_like(xx)
    size = xx.shape[0]
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        lo_x, hi_x = int(max(min(x0, x1) * size - 4, 0)), int(min(max(x0, x1) * size + 5, size))
        lo_y, hi_y = int(max(min(y0, y1) * size - 4, 0)), int(min(max(y0, y1) * size + 5, size))
        if lo_x >= hi_x or lo_y >= hi_y:
            continue
        px, py = xx[lo_y:hi_y, lo_x:hi_x], yy[lo_y:hi_y, lo_x:hi_x]
        d = _segment_distance(px, py, (x0, y0), (x1, y1))
        np.maximum(canvas[lo_y:hi_y, lo_x:hi_x], np.exp(-((d / width) ** 2)), out=canvas[lo_y:hi_y, lo_x:hi_x])
    return weight * canvas


def finish_varied(rng: np.random.Generator, image: np.ndarray, style: Style) -> np.ndarray:
    """Acquisition and processing of a ``varied`` study: attenuation ``[H, W]`` -> ``[H, W]`` uint8."""
    size = image.shape[0]
    scale = size / 256.0
    image = ndimage.gaussian_filter(image, style.blur * scale, mode="nearest")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    direction = rng.uniform(0, 2 * np.pi)
    image = image + style.heel * ((xx - 0.5) * np.cos(direction) + (yy - 0.5) * np.sin(direction))
    image = np.clip(image, 0.0, 1.2)
    if style.sharpen > 0:
        image = image + style.sharpen * (image - ndimage.gaussian_filter(image, rng.uniform(4, 16) * scale))
    low, high = rng.uniform(-0.05, 0.12), rng.uniform(0.8, 1.15)
    image = np.clip((image - low) / (high - low), 0.0, 1.0) ** np.exp(rng.uniform(-0.45, 0.45))
    # Quantum noise grows where fewer photons arrive (bright, dense areas in this convention).
    sigma = rng.uniform(0.008, max(style.noise, 0.0081))
    image = image + rng.normal(0.0, 1.0, size=image.shape).astype(np.float32) * sigma * (0.6 + 0.8 * image)
    if style.shutter > 0:
        width = int(style.shutter * size)
        value = float(rng.choice([0.0, 1.0]))
        for side in rng.choice(4, size=int(rng.integers(1, 5)), replace=False):
            w = max(1, int(width * rng.uniform(0.5, 1.0)))
            if side == 0:
                image[:w, :] = value
            elif side == 1:
                image[-w:, :] = value
            elif side == 2:
                image[:, :w] = value
            else:
                image[:, -w:] = value
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
