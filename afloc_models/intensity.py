"""Per-image intensity normalisation: histogram equalisation of a radiograph's pixels.

Radiographs from different sites differ by monotone intensity changes: exposure, window level
and width, gamma, the console's look-up table. Mapping each pixel to its rank among the image's
own pixels (the image's cumulative histogram) removes every such change at once: an image and
any monotone re-mapping of it give nearly the same equalised image. With ``data.equalize`` on, the
training loader and the predictor both equalise the letterboxed image's content (never its
zero padding) before normalising it, so a model never sees the raw intensity scale.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EQUALIZE_BINS", "equalize_histogram", "equalize_content"]

#: Histogram bins over [0, 1]: finer than 8 bits, coarse enough to be quick on a 256 px square.
EQUALIZE_BINS = 1024


def equalize_histogram(pixels: np.ndarray, bins: int = EQUALIZE_BINS) -> np.ndarray:
    """Map pixels in ``[0, 1]`` through their own cumulative histogram.

    Args:
        pixels: ``[N]``, ``[H, W]`` or ``[H, W, C]`` values in ``[0, 1]`` (one histogram over
            all values; a colour image keeps its channels' order of brightness).
        bins: histogram bins over ``[0, 1]``.

    Returns:
        float32 array of the same shape in ``[0, 1]``: the share of pixels darker than each
        pixel, interpolated linearly inside a bin (0 stays 0, 1 stays 1).
    """
    values = np.asarray(pixels, dtype=np.float32)
    if values.size == 0:
        return values.copy()
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    cdf = np.concatenate(([0.0], np.cumsum(counts, dtype=np.float64) / values.size))
    return np.interp(values, edges, cdf).astype(np.float32)


def equalize_content(square: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """Equalise the image region ``[top:top+height, left:left+width]`` of a letterboxed square.

    The zero padding around it stays zero and does not enter the histogram. Returns a new array.
    """
    out = np.array(square, dtype=np.float32, copy=True)
    region = out[top : top + height, left : left + width]
    out[top : top + height, left : left + width] = equalize_histogram(region)
    return out
