"""Re-threshold the server's float heatmaps locally, so the threshold slider needs no server call.

The server normalises each prompt's heatmap to ``[-1, 1]`` and keeps ``heatmap >= threshold``
(default 0.3). Applying the same comparison here to the heatmap it sent back gives exactly the
mask it would compute for that threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The heatmap's value range, hence the slider's.
HEATMAP_RANGE = (-1.0, 1.0)
#: The server's default threshold, for a reply that does not state the one it used.
DEFAULT_THRESHOLD = 0.3


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float, or ValueError when it is outside the heatmap's ``[-1, 1]``."""
    value = float(threshold)
    if math.isnan(value) or not HEATMAP_RANGE[0] <= value <= HEATMAP_RANGE[1]:
        raise ValueError(f"threshold must lie in [-1, 1] (the heatmap's range), got {threshold!r}")
    return value


def threshold_heatmap(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask ``heatmap >= threshold``, same shape as ``heatmap`` (``[I, J]`` or ``[I, J, K]``).

    NaN pixels (none are expected) are never part of the mask.
    """
    return np.asarray(heatmap) >= check_threshold(threshold)


def combined_labels(heatmaps: Sequence[np.ndarray], threshold: float) -> np.ndarray:
    """One uint8 label map from P heatmaps, by the server's rule for its label file.

    Pixel value ``i + 1`` where prompt ``i``'s heatmap reaches ``threshold`` and is the highest
    of those that do (the first prompt on ties), 0 where none does. Same shape as each heatmap.
    """
    if not heatmaps:
        raise ValueError("combined_labels needs at least one heatmap")
    threshold = check_threshold(threshold)
    stack = np.stack([np.asarray(h, dtype=np.float32) for h in heatmaps])
    inside = stack >= threshold
    winner = np.argmax(np.where(inside, stack, -np.inf), axis=0)
    return np.where(inside.any(axis=0), winner + 1, 0).astype(np.uint8)
