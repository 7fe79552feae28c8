"""Devices, exposure, detector and console processing of the external simulator, and burned-in text."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from afloc_models.evaluation.external.body import Body, Projection, ball_path, bezier, tube_path

__all__ = ["add_devices", "expose", "burn_in"]


def add_devices(rng: np.random.Generator, body: Body, proj: Projection) -> list[str]:
    """Metal and plastic on or in the patient (path lengths in ``proj.metal``); returns their names."""
    u, v = proj.u, proj.v
    names = []
    if rng.random() < 0.45:  # ECG electrodes and their leads running off the image
        names.append("ecg")
        for _ in range(int(rng.integers(2, 6))):
            eu = rng.uniform(-body.chest_half, body.chest_half)
            ev = rng.uniform(-30.0, body.lung_height)
            ring = ball_path(u, v, eu, ev, 9.0) - ball_path(u, v, eu, ev, 7.5)
            proj.metal += 0.25 * ring + 0.6 * ball_path(u, v, eu, ev, 2.5)
            far = (eu + rng.uniform(-250, 250), ev + rng.choice([-1.0, 1.0]) * rng.uniform(200, 400))
            bend = (eu + rng.uniform(-80, 80), ev + rng.uniform(-80, 80))
            proj.metal += 0.35 * tube_path(u, v, bezier((eu, ev), bend, far, 16), 0.7)
    if rng.random() < 0.2:  # endotracheal tube: radiopaque stripe in the trachea
        names.append("ett")
        tip = body.carina_v - rng.uniform(25.0, 55.0)
        proj.metal += 0.12 * tube_path(u, v, np.array([(2.0, -250.0), (0.0, tip)]), 1.0)
        proj.soft += tube_path(u, v, np.array([(0.0, -250.0), (0.0, tip)]), 4.5) * 0.3
    if rng.random() < 0.2:  # central venous catheter from the subclavian into the SVC
        names.append("cvc")
        side = rng.choice([-1.0, 1.0])
        path = bezier((side * body.chest_half, -30.0), (side * 25.0, -5.0), (-14.0, 0.42 * body.lung_height), 20)
        proj.metal += 0.15 * tube_path(u, v, path, 1.1)
    if rng.random() < 0.12:  # nasogastric tube down to the stomach
        names.append("ngt")
        path = bezier((4.0, -250.0), (-6.0, body.carina_v), (55.0, body.dome[1] + 40.0), 24)
        proj.metal += 0.12 * tube_path(u, v, path, 1.2)
    if rng.random() < 0.1:  # pacemaker with two leads to the right heart
        names.append("pacemaker")
        side = rng.choice([-1.0, 1.0])
        gu, gv = side * (body.half_width[1] * 0.75), rng.uniform(-10.0, 25.0)
        box = (np.abs(u - gu) < 24.0) & (np.abs(v - gv) < 18.0)
        proj.metal += 3.0 * ndimage.gaussian_filter(box.astype(np.float32), 1.0)
        for target in (body.heart_ra[:2], (body.heart_lv[0] - 10.0, body.heart_lv[1] + 20.0)):
            lead = bezier((gu, gv), (side * 30.0, 10.0), target, 20)
            proj.metal += 0.5 * tube_path(u, v, lead, 1.0)
    if rng.random() < 0.08:  # sternotomy wires
        names.append("sternal wires")
        for k in range(5):
            wv = 0.25 * body.lung_height + k * 0.1 * body.lung_height
            proj.metal += 0.6 * (ball_path(u, v, 0.0, wv, 5.0) - ball_path(u, v, 0.0, wv, 4.0))
    return names


def expose(rng: np.random.Generator, proj: Projection) -> np.ndarray:
    """Beer-Lambert projection, scatter, Poisson noise, detector blur and console processing.

    Returns the displayed image ``[H, W]`` float in [0, 1], bright = dense.
    """
    px = proj.pose.mm_per_px
    attenuation = proj.attenuation(mu_soft=rng.uniform(0.018, 0.024), mu_bone=rng.uniform(0.04, 0.065),
                                   mu_metal=rng.uniform(0.6, 1.0))
    intensity = np.exp(-attenuation)
    scatter = rng.uniform(0.02, 0.4)
    intensity = intensity + scatter * ndimage.gaussian_filter(intensity, 40.0 / px)
    photons = 10 ** rng.uniform(2.6, 4.2)
    counts = rng.poisson(intensity * photons).astype(np.float32)
    intensity = np.maximum(counts, 0.5) / photons
    intensity = ndimage.gaussian_filter(intensity, rng.uniform(0.3, 1.2))
    image = -np.log(intensity)
    low, high = np.percentile(image, [rng.uniform(0.2, 4.0), rng.uniform(97.0, 99.9)])
    image = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    # Console processing: unsharp masking (dynamic range compression), then a tone curve.
    strength = rng.uniform(0.0, 1.2)
    image = image + strength * (image - ndimage.gaussian_filter(image, rng.uniform(8.0, 30.0) / px))
    image = np.clip(image, 0.0, 1.0)
    if rng.random() < 0.5:
        image = image ** rng.uniform(0.6, 1.6)
    else:
        slope, centre = rng.uniform(4.0, 9.0), rng.uniform(0.4, 0.6)
        curve = 1.0 / (1.0 + np.exp(-slope * (image - centre)))
        lo, hi = 1.0 / (1.0 + np.exp(slope * centre)), 1.0 / (1.0 + np.exp(-slope * (1 - centre)))
        image = (curve - lo) / (hi - lo)
    if rng.random() < 0.35:  # collimator shutters: the unexposed border shows bright (or dark)
        h, w = image.shape
        top, bottom = int(rng.uniform(0, 0.06) * h), h - int(rng.uniform(0, 0.06) * h)
        left, right = int(rng.uniform(0, 0.06) * w), w - int(rng.uniform(0, 0.06) * w)
        border = np.ones_like(image, dtype=bool)
        border[top:bottom, left:right] = False
        image = np.where(border, rng.choice([0.97, 0.03]), image)
    return image.astype(np.float32)


_TEXT = ("PORTABLE", "AP", "SUPINE", "ERECT", "PA", "SEMI-ERECT", "AP SITTING", "MOBILE", "INSP")


def burn_in(rng: np.random.Generator, image: np.ndarray, proj: Projection) -> np.ndarray:
    """Side marker (R on the image left, the patient's right), and burned-in annotation text."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = image.shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    size = max(8, int(h * rng.uniform(0.035, 0.06)))
    font = ImageFont.load_default(size=size)
    if rng.random() < 0.8:
        right_marker = rng.random() < 0.5
        letter = "R" if right_marker else "L"
        x = rng.uniform(0.03, 0.2) * w if right_marker else rng.uniform(0.75, 0.92) * w
        y = rng.uniform(0.03, 0.25) * h
        draw.text((x, y), letter, fill=255, font=font)
        if rng.random() < 0.5:
            draw.rectangle((x - 2, y - 2, x + size * 0.8, y + size * 1.1), outline=255)
    for _ in range(int(rng.integers(0, 4))):
        text = str(rng.choice(_TEXT))
        if rng.random() < 0.4:
            text = f"{int(rng.integers(2005, 2024))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
        x = rng.uniform(0.02, 0.6) * w
        y = float(rng.choice([rng.uniform(0.01, 0.08), rng.uniform(0.88, 0.95)])) * h
        draw.text((x, y), text, fill=255, font=ImageFont.load_default(size=max(7, int(size * rng.uniform(0.5, 0.9)))))
    overlay = np.asarray(canvas, dtype=np.float32) / 255.0
    level = rng.choice([1.0, 0.9, 0.0]) if rng.random() < 0.85 else 0.5
    return np.clip(image * (1.0 - overlay) + level * overlay, 0.0, 1.0).astype(np.float32)
