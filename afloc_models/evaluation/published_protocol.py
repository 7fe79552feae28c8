"""The published AFLoc evaluation protocol (``eval/`` of the published code), reproduced.

This is the protocol behind the paper's MS-CXR table. It differs from this package's own
protocol (:mod:`afloc_models.evaluation.metrics`, maps on the original pixel grid) in each step:

- **grid**: the map is scored on the 224 x 224 letterbox square the model saw, padding included
  (:meth:`AFLocPredictor.square_heatmaps`), not on the original image;
- **margin**: a 14 px border of that square is left out (NaN), the published ``set_margin``
  defaults (a 448 crop of a 512 resize of a 224 image keeps 196 px);
- **ground truth**: each box ``(x, y, w, h)`` is scaled by ``224 / long side`` of its annotation
  frame, shifted by the letterbox padding and floored (``box_transfer``), then rasterised as
  ``[y, y + h) x [x, x + w)`` (``box2mask``); boxes of one case are *added*, so pixels where two
  boxes overlap hold 2;
- **normalisation**: min-max to ``[-1, 1]`` over the scored (non-NaN) pixels;
- **threshold**: ``heatmap > t`` (strict) for t = 0.1 ... 0.5;
- **IoU**: over scored pixels, any nonzero ground truth counts; NaN when the prediction or the
  ground truth is empty (left out of the means);
- **CNR**: ``(mean_in - mean_out) / sqrt(var_in + var_out)`` with "in" the pixels equal to 1 and
  "out" those equal to 0, so pixels covered by two boxes count in neither; 0 when both variances
  are 0;
- **averaging**: for each threshold, the mean per category, then the mean across categories
  (NaN-aware); the reported mIoU / CNR is the plain mean of those over the thresholds.

Cases given as masks (no boxes) have no published counterpart; their mask is rasterised on the
original grid and sampled at the square's pixel centres (nearest), counting 1 inside.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from math import ceil, floor
from typing import Any

import numpy as np

from afloc_models.imaging import Letterbox

__all__ = [
    "GRID",
    "MARGIN",
    "box_to_grid",
    "case_counts",
    "scored_pixels",
    "score_square",
    "summarize_published",
]

#: Side of the square the published evaluation scores (``imsize`` at inference).
GRID = 224
#: Border left out of the score: ``set_margin(width=224, height=224, resize_size=512, crop_size=448)``.
MARGIN = (GRID - int(448 * GRID / 512)) // 2
THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def scored_pixels(size: int = GRID, resize: int = 512, crop: int = 448) -> np.ndarray:
    """Bool ``[size, size]``: True where ``set_margin`` keeps the map (a centred square)."""
    kept = int(crop * size / resize)
    margin = size - kept
    top, left = floor(margin / 2), floor(margin / 2)
    out = np.zeros((size, size), dtype=bool)
    out[top : top + kept, left : left + kept] = True
    return out


def box_to_grid(box: Sequence[float], width: int, height: int, size: int = GRID) -> tuple[int, int, int, int]:
    """``(x, y, w, h)`` on a ``width x height`` frame -> integer ``(x, y, w, h)`` on the letterbox square.

    Scaled by ``size / long side``, shifted by the padding (the short side truncated as the
    published resize does), every value floored.
    """
    box_arr = np.asarray(box, dtype=np.float64)
    if height >= width:
        factor = size / float(height)
        short = int(float(width) * factor)
        pad_left, pad_top = int(np.floor((size - short) / 2)), 0
    else:
        factor = size / float(width)
        short = int(float(height) * factor)
        pad_left, pad_top = 0, int(np.floor((size - short) / 2))
    x, y, w, h = box_arr * factor
    return int(np.floor(x + pad_left)), int(np.floor(y + pad_top)), int(np.floor(w)), int(np.floor(h))


def case_counts(case: Any, image_shape: tuple[int, int], box: Letterbox) -> np.ndarray:
    """Ground truth of one case on the square: ``int [S, S]`` counting the boxes over each pixel.

    ``case`` is a :class:`~afloc_models.evaluation.ground_truth.GroundTruthCase`; ``box`` the
    letterbox the map was computed on (its ``size`` is the grid).
    """
    size = box.size
    counts = np.zeros((size, size), dtype=np.int32)
    if case.boxes and case.mask_fn is None:
        height, width = case.annotation_size or image_shape
        for b in case.boxes:
            x, y, w, h = box_to_grid(b, int(width), int(height), size)
            counts[max(y, 0) : max(y + h, 0), max(x, 0) : max(x + w, 0)] += 1
    if case.mask_files or case.mask_fn is not None:
        mask = case.mask(image_shape)
        rows = ((np.arange(size) + 0.5 - box.pad_top) * image_shape[0] / box.resized_shape[0]).astype(np.int64)
        cols = ((np.arange(size) + 0.5 - box.pad_left) * image_shape[1] / box.resized_shape[1]).astype(np.int64)
        inside_r = (np.arange(size) >= box.pad_top) & (np.arange(size) < box.pad_top + box.resized_shape[0])
        inside_c = (np.arange(size) >= box.pad_left) & (np.arange(size) < box.pad_left + box.resized_shape[1])
        rows, cols = np.clip(rows, 0, image_shape[0] - 1), np.clip(cols, 0, image_shape[1] - 1)
        sampled = mask[np.ix_(rows, cols)] & inside_r[:, None] & inside_c[None, :]
        counts = np.maximum(counts, sampled.astype(np.int32))
    return counts


def _normalise(values: np.ndarray) -> np.ndarray:
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low) * 2.0 - 1.0


def score_square(
    square: np.ndarray, counts: np.ndarray, thresholds: Sequence[float] = THRESHOLDS, scored: np.ndarray | None = None
) -> dict[str, float]:
    """Published metrics of one ``[S, S]`` map against its box counts ``[S, S]``.

    Returns:
        ``{"iou@t": ..., "cnr": ...}`` (IoU NaN for an empty prediction or ground truth).
    """
    square = np.asarray(square, dtype=np.float64)
    if square.shape != counts.shape:
        raise ValueError(f"map has shape {square.shape} but the ground truth {counts.shape}")
    keep = scored_pixels(square.shape[0]) if scored is None else scored
    keep = keep & np.isfinite(square)
    heat = _normalise(square[keep])
    gt = counts[keep]
    record: dict[str, float] = {}
    for t in thresholds:
        pred = heat > t
        if not pred.any() or not gt.any():
            record[f"iou@{t:g}"] = math.nan
        else:
            record[f"iou@{t:g}"] = float(np.logical_and(gt, pred).sum() / np.logical_or(gt, pred).sum())
    inside, outside = heat[gt == 1], heat[gt == 0]
    if inside.size == 0 or outside.size == 0:
        record["cnr"] = math.nan
    else:
        var = float(inside.var() + outside.var())
        record["cnr"] = 0.0 if var == 0 else float((inside.mean() - outside.mean()) / math.sqrt(var))
    return record


def _nanmean(values: Iterable[float]) -> float:
    array = np.asarray(list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def summarize_published(records: Sequence[Mapping[str, Any]], thresholds: Sequence[float] = THRESHOLDS) -> dict[str, Any]:
    """Per threshold: mean per category, then across categories; mIoU / CNR: mean over thresholds.

    Returns:
        ``{"miou", "cnr", "iou_per_threshold": {t: value}, "per_category": {category:
        {"n", "miou", "cnr", "iou@t"...}}}``.
    """
    categories: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        categories.setdefault(str(record["category"]), []).append(record)
    per_threshold = {}
    per_category: dict[str, dict[str, float]] = {c: {"n": len(rows)} for c, rows in categories.items()}
    for t in thresholds:
        key = f"iou@{t:g}"
        means = {c: _nanmean(float(r[key]) for r in rows) for c, rows in categories.items()}
        for c, value in means.items():
            per_category[c][key] = value
        per_threshold[f"{t:g}"] = _nanmean(means.values())
    cnr_means = {c: _nanmean(float(r["cnr"]) for r in rows) for c, rows in categories.items()}
    for c, value in cnr_means.items():
        per_category[c]["cnr"] = value
        per_category[c]["miou"] = float(np.mean([per_category[c][f"iou@{t:g}"] for t in thresholds]))
    iou_values = list(per_threshold.values())
    return {
        "miou": float(np.mean(iou_values)) if iou_values else math.nan,
        "cnr": _nanmean(cnr_means.values()),
        "iou_per_threshold": per_threshold,
        "per_category": per_category,
        "n": len(records),
    }
