"""Radiograph-like augmentation of training images: how real radiographs differ from one another.

Applied by :class:`afloc_training.data.PairDataset` to a training image (before the letterbox)
with probability ``data.augment``; never left-right flips, since the report's "right" and "left"
must stay where they are. Every draw comes from the ``rng`` passed in, so a run stays reproducible
and resumable. What varies:

- geometry: in-plane rotation, zoom, and field of view (a random part of the image edges cut away,
  which also changes the aspect ratio the letterbox sees);
- intensity: exposure (window level and width), gamma, detector blur or console sharpening,
  quantum-like noise; and, with ``data.augment_invert``, an inverted image (a MONOCHROME1 file
  read as MONOCHROME2);
- burned-in annotation: side markers and text in the image corners.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["augment_radiograph"]

_WORDS = ("PORTABLE", "AP", "PA", "SUPINE", "ERECT", "L", "R", "MOBILE", "SEMI-ERECT", "INSP")


def augment_radiograph(pixels: np.ndarray, rng: np.random.Generator, invert: float = 0.0) -> np.ndarray:
    """One random variation of a grayscale image ``[H, W]`` in [0, 1] (bright = dense).

    Returns a new ``[H', W']`` float32 array in [0, 1] (the field of view may shrink it).
    """
    image = np.asarray(pixels, dtype=np.float32)
    height, width = image.shape
    # Field of view: cut up to 12% off each edge independently.
    cut = rng.uniform(0.0, 0.12, size=4)
    top, bottom = int(cut[0] * height), height - int(cut[1] * height)
    left, right = int(cut[2] * width), width - int(cut[3] * width)
    image = image[top:bottom, left:right]
    # Rotation and zoom about the centre (one affine resample).
    angle = np.deg2rad(rng.uniform(-10.0, 10.0))
    zoom = rng.uniform(0.87, 1.15)
    if abs(angle) > 1e-3 or abs(zoom - 1.0) > 1e-3:
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        matrix = np.array([[cos, -sin], [sin, cos]])
        centre = (np.array(image.shape) - 1) / 2.0
        offset = centre - matrix @ centre
        image = ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    # Exposure and processing.
    low, high = rng.uniform(-0.1, 0.15), rng.uniform(0.85, 1.1)
    image = np.clip((image - low) / (high - low), 0.0, 1.0)
    image = image ** np.exp(rng.uniform(-0.4, 0.4))
    if rng.random() < 0.5:
        image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.5))
    else:
        sigma = max(image.shape) * rng.uniform(0.02, 0.08)
        image = image + rng.uniform(0.2, 1.0) * (image - ndimage.gaussian_filter(image, sigma))
    image = image + rng.normal(0.0, rng.uniform(0.0, 0.05), size=image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0)
    if rng.random() < 0.5:
        image = _burn_in(image, rng)
    if invert > 0 and rng.random() < invert:
        image = 1.0 - image
    return image.astype(np.float32)


def _burn_in(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    height, width = image.shape
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        size = max(6, int(height * rng.uniform(0.03, 0.07)))
        text = str(rng.choice(_WORDS))
        if rng.random() < 0.3:
            text = f"{int(rng.integers(1, 29)):02d}/{int(rng.integers(1, 13)):02d}/{int(rng.integers(2000, 2025))}"
        x = rng.uniform(0.02, 0.8) * width
        y = float(rng.choice([rng.uniform(0.01, 0.12), rng.uniform(0.85, 0.94)])) * height
        draw.text((x, y), text, fill=255, font=ImageFont.load_default(size=size))
    overlay = np.asarray(canvas, dtype=np.float32) / 255.0
    return image * (1.0 - overlay) + overlay * float(rng.choice([1.0, 0.85, 0.0]))
