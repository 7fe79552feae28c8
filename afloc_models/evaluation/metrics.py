"""Localization metrics of the AFLoc evaluation protocol (numpy only).

Per image and prompt, a heatmap ``[H, W]`` on the original pixel grid is compared with a boolean
ground-truth mask ``[H, W]``:

- the heatmap is min-max normalised to ``[-1, 1]`` (:func:`normalize_heatmap`);
- the contrast-to-noise ratio (:func:`cnr`) measures how much the region stands out;
- :func:`threshold_sweep` thresholds the normalised heatmap at 0.1 ... 0.5 and reports IoU and Dice
  at each threshold and their means (mIoU, mDice);
- :func:`pointing_game` checks whether the hottest pixel falls inside the ground truth;
  :func:`peak_distance` says how far outside it fell (a near miss or the wrong lung).

Per-sample records (plain dicts with a ``"category"`` key) are combined by :func:`aggregate`, which
averages within each category first and then across categories, and :func:`bootstrap_ci` gives a
percentile bootstrap interval for that category-averaged mean.

NaN means "not scored": a metric that is undefined for a sample (both masks empty, no background)
is NaN and is left out of every average.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ConfidenceInterval",
    "aggregate",
    "bootstrap_ci",
    "cnr",
    "dice",
    "iou",
    "normalize_heatmap",
    "peak_distance",
    "pointing_game",
    "threshold_sweep",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)

EmptyPrediction = Literal["zero", "drop"]


def normalize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Min-max normalise a heatmap to ``[-1, 1]``.

    Args:
        heatmap: ``[H, W]`` (any shape) real array.

    Returns:
        float64 array of the same shape; a constant map becomes all zeros (it carries no
        localization information, so it sits exactly between "in" and "out").

    Raises:
        ValueError: the map is empty or holds NaN/inf (a bug upstream, not something to hide).
    """
    values = np.asarray(heatmap, dtype=np.float64)
    if values.size == 0:
        raise ValueError("cannot normalise an empty heatmap")
    if not np.all(np.isfinite(values)):
        raise ValueError("heatmap contains NaN or infinite values")
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros_like(values)
    return 2.0 * (values - low) / (high - low) - 1.0


def iou(
    pred_mask: np.ndarray, gt_mask: np.ndarray, empty_prediction: EmptyPrediction = "zero"
) -> float:
    """Intersection over union of two boolean masks ``[H, W]``.

    Empty-mask policy:
        - both masks empty: NaN (nothing to localize, the sample is not scored);
        - empty prediction, non-empty ground truth: ``0.0`` with ``empty_prediction="zero"``
          (default: a missed finding counts against the method), NaN with ``"drop"``;
        - non-empty prediction, empty ground truth: ``0.0``.
    """
    pred, gt = _masks(pred_mask, gt_mask)
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    undefined = _empty_case(n_pred, n_gt, empty_prediction)
    if undefined is not None:
        return undefined
    intersection = int(np.logical_and(pred, gt).sum())
    return intersection / (n_pred + n_gt - intersection)


def dice(
    pred_mask: np.ndarray, gt_mask: np.ndarray, empty_prediction: EmptyPrediction = "zero"
) -> float:
    """Dice coefficient ``2|A n B| / (|A| + |B|)`` of two boolean masks ``[H, W]``.

    Same empty-mask policy as :func:`iou`.
    """
    pred, gt = _masks(pred_mask, gt_mask)
    n_pred, n_gt = int(pred.sum()), int(gt.sum())
    undefined = _empty_case(n_pred, n_gt, empty_prediction)
    if undefined is not None:
        return undefined
    intersection = int(np.logical_and(pred, gt).sum())
    return 2.0 * intersection / (n_pred + n_gt)


def cnr(heatmap: np.ndarray, gt_mask: np.ndarray) -> float:
    """Signed contrast-to-noise ratio ``(mean_in - mean_out) / sqrt(var_in + var_out)``.

    ``in`` are the heatmap values inside the ground-truth mask, ``out`` those outside; variances
    are population variances. Positive when the region is hotter than the background. The value
    is unchanged by any increasing affine rescaling of the heatmap, so it is the same before and
    after :func:`normalize_heatmap`.

    Args:
        heatmap: ``[H, W]`` real array (normalised to ``[-1, 1]`` by the protocol).
        gt_mask: ``[H, W]`` boolean.

    Returns:
        The ratio; NaN when the region or the background is empty, or when both are constant
        (zero noise: the ratio is undefined).
    """
    values = np.asarray(heatmap, dtype=np.float64)
    gt = np.asarray(gt_mask).astype(bool)
    _same_shape(values, gt, "heatmap", "gt_mask")
    if not np.all(np.isfinite(values)):
        raise ValueError("heatmap contains NaN or infinite values")
    inside, outside = values[gt], values[~gt]
    if inside.size == 0 or outside.size == 0:
        return math.nan
    noise = math.sqrt(float(inside.var() + outside.var()))
    if noise == 0.0:
        return math.nan
    return float((inside.mean() - outside.mean()) / noise)


def pointing_game(heatmap: np.ndarray, gt_mask: np.ndarray) -> bool:
    """True when the heatmap's maximum lies inside the ground truth.

    Ties are broken by the first maximum in row-major order (``np.argmax``), so a constant map
    points at pixel ``(0, 0)``.

    Raises:
        ValueError: shapes differ, the heatmap holds NaN/inf, or the ground truth is empty
            (there is nothing to point at; leave such samples out).
    """
    gt, (row, column) = _hottest_pixel(heatmap, gt_mask, "pointing game")
    return bool(gt[row, column])


def peak_distance(heatmap: np.ndarray, gt_mask: np.ndarray) -> float:
    """How far the heatmap's maximum lies from the ground truth, in image sides.

    The distance from the hottest pixel (first maximum, as :func:`pointing_game`) to the nearest
    ground-truth pixel, divided by the image's longer side: 0 when the pointing game is won,
    about 0.05 for a peak beside the finding, 0.3-0.5 for one in the other lung.

    Raises:
        ValueError: as :func:`pointing_game`.
    """
    gt, (row, column) = _hottest_pixel(heatmap, gt_mask, "peak distance")
    rows, columns = np.nonzero(gt)
    nearest = float(np.sqrt(((rows - row) ** 2 + (columns - column) ** 2).min()))
    return nearest / max(gt.shape)


def _hottest_pixel(heatmap: np.ndarray, gt_mask: np.ndarray, metric: str) -> tuple[np.ndarray, tuple[int, int]]:
    """The boolean ground truth and the (row, column) of the heatmap's first maximum, after the
    checks the peak metrics share (same shape, finite heatmap, non-empty ground truth)."""
    values = np.asarray(heatmap, dtype=np.float64)
    gt = np.asarray(gt_mask).astype(bool)
    _same_shape(values, gt, "heatmap", "gt_mask")
    if not np.all(np.isfinite(values)):
        raise ValueError("heatmap contains NaN or infinite values")
    if not gt.any():
        raise ValueError(f"{metric} needs a non-empty ground-truth mask")
    row, column = np.unravel_index(int(np.argmax(values)), values.shape)
    return gt, (int(row), int(column))


def threshold_sweep(
    heatmap: np.ndarray,
    gt_mask: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    normalize: bool = True,
    empty_prediction: EmptyPrediction = "zero",
) -> dict[str, float]:
    """IoU and Dice of ``heatmap >= t`` against the ground truth for each threshold ``t``.

    Args:
        heatmap: ``[H, W]`` heatmap; min-max normalised to ``[-1, 1]`` first unless
            ``normalize=False`` (then thresholds apply to the values as given).
        gt_mask: ``[H, W]`` boolean.
        thresholds: thresholds on the (normalised) heatmap.
        normalize: apply :func:`normalize_heatmap` first, as the protocol does.
        empty_prediction: passed to :func:`iou` / :func:`dice`.

    Returns:
        A flat dict, ready to merge into a per-sample record: ``"iou@0.1"``, ``"dice@0.1"``, ...
        for each threshold, plus ``"miou"`` and ``"mdice"``, the NaN-aware means over thresholds
        (NaN when every threshold is NaN).
    """
    if len(thresholds) == 0:
        raise ValueError("threshold_sweep needs at least one threshold")
    values = normalize_heatmap(heatmap) if normalize else np.asarray(heatmap, dtype=np.float64)
    gt = np.asarray(gt_mask).astype(bool)
    _same_shape(values, gt, "heatmap", "gt_mask")
    result: dict[str, float] = {}
    ious, dices = [], []
    for threshold in thresholds:
        pred = values >= threshold
        ious.append(iou(pred, gt, empty_prediction))
        dices.append(dice(pred, gt, empty_prediction))
        result[f"iou@{threshold:g}"] = ious[-1]
        result[f"dice@{threshold:g}"] = dices[-1]
    result["miou"] = _nanmean(ious)
    result["mdice"] = _nanmean(dices)
    return result


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def aggregate(records: Iterable[Mapping[str, object]], category_key: str = "category") -> dict:
    """Average per-sample metrics per category, then across categories.

    Args:
        records: one mapping per sample with a category under ``category_key`` and numeric
            metrics (bools count as 0/1). Non-numeric values other than the category (paths,
            prompts) are ignored. NaN values are left out of every average.

    Returns:
        ``{"per_category": {category: {metric: mean, ..., "n": samples}},
        "overall": {metric: mean of the category means},
        "micro": {metric: mean over all samples},
        "n": samples, "categories": number of categories}``.
        A metric with no finite value anywhere is NaN.
    """
    table = _MetricTable.from_records(records, category_key)
    per_category: dict[str, dict[str, float]] = {}
    for k, category in enumerate(table.categories):
        in_category = table.codes == k
        entry = {name: _nanmean(table.values[name][in_category]) for name in table.metrics}
        entry["n"] = int(in_category.sum())
        per_category[category] = entry
    overall = {
        name: _nanmean([per_category[c][name] for c in table.categories]) for name in table.metrics
    }
    micro = {name: _nanmean(table.values[name]) for name in table.metrics}
    return {
        "per_category": per_category,
        "overall": overall,
        "micro": micro,
        "n": int(table.codes.size),
        "categories": len(table.categories),
    }


class ConfidenceInterval(NamedTuple):
    """A point estimate and its percentile bootstrap interval."""

    mean: float
    low: float
    high: float


def bootstrap_ci(
    data: Iterable[float] | Iterable[Mapping[str, object]],
    metric: str | None = None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    category_key: str = "category",
) -> ConfidenceInterval:
    """Percentile bootstrap interval of the category-averaged mean.

    Samples (not categories) are resampled with replacement ``n`` times; for each resample the
    statistic is recomputed as :func:`aggregate` does (mean per category, then mean across the
    categories present). With plain numbers instead of records there is a single category and
    the statistic is the NaN-aware mean.

    Args:
        data: per-sample numbers, or records with ``category_key`` and ``metric``.
        metric: the record key to use (required for records).
        n: bootstrap resamples.
        seed: seed of the resampling generator (same seed, same interval).
        alpha: ``1 - confidence``; 0.05 gives a 95% interval.

    Returns:
        ``ConfidenceInterval(mean, low, high)``; all NaN when no value is finite.
    """
    if n < 1:
        raise ValueError(f"bootstrap needs n >= 1 resamples, got {n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    values, codes, n_categories = _bootstrap_inputs(data, metric, category_key)
    if values.size == 0 or not np.isfinite(values).any():
        return ConfidenceInterval(math.nan, math.nan, math.nan)

    valid = np.isfinite(values)
    one_hot = np.zeros((values.size, n_categories))
    one_hot[np.arange(values.size), codes] = 1.0
    weighted_sums = one_hot * np.where(valid, values, 0.0)[:, None]  # [N, K]
    weighted_counts = one_hot * valid[:, None]  # [N, K]

    point = _category_mean(np.ones((1, values.size)), weighted_sums, weighted_counts)[0]
    rng = np.random.default_rng(seed)
    # Multiplicities of each sample in each resample: [B, N]; chunked to bound memory.
    chunk = max(1, min(n, 20_000_000 // max(values.size, 1)))
    stats = []
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        counts = rng.multinomial(values.size, np.full(values.size, 1.0 / values.size), size=size)
        stats.append(_category_mean(counts.astype(np.float64), weighted_sums, weighted_counts))
    resampled = np.concatenate(stats)
    resampled = resampled[np.isfinite(resampled)]
    if resampled.size == 0:
        return ConfidenceInterval(float(point), math.nan, math.nan)
    low, high = np.percentile(resampled, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return ConfidenceInterval(float(point), float(low), float(high))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _masks(pred_mask: np.ndarray, gt_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred_mask).astype(bool)
    gt = np.asarray(gt_mask).astype(bool)
    _same_shape(pred, gt, "pred_mask", "gt_mask")
    return pred, gt


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")


def _empty_case(n_pred: int, n_gt: int, empty_prediction: EmptyPrediction) -> float | None:
    if empty_prediction not in ("zero", "drop"):
        raise ValueError(f"empty_prediction must be 'zero' or 'drop', got {empty_prediction!r}")
    if n_pred == 0 and n_gt == 0:
        return math.nan
    if n_pred == 0:
        return 0.0 if empty_prediction == "zero" else math.nan
    return None


def _nanmean(values: Iterable[float] | np.ndarray) -> float:
    array = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def _as_number(value: object) -> float | None:
    """Numeric metric value of a record field, or None for fields that are not metrics."""
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


class _MetricTable:
    """Records as columns: category codes ``[N]`` and one float column ``[N]`` per metric."""

    def __init__(self, categories: list[str], codes: np.ndarray, values: dict[str, np.ndarray]):
        self.categories = categories
        self.codes = codes
        self.values = values
        self.metrics = sorted(values)

    @classmethod
    def from_records(
        cls, records: Iterable[Mapping[str, object]], category_key: str
    ) -> "_MetricTable":
        records = list(records)
        categories: dict[str, int] = {}
        codes = []
        columns: dict[str, list[float]] = {}
        for index, record in enumerate(records):
            if category_key not in record:
                raise ValueError(f"record {index} has no '{category_key}' key")
            category = str(record[category_key])
            codes.append(categories.setdefault(category, len(categories)))
            for key, value in record.items():
                if key == category_key:
                    continue
                number = _as_number(value)
                if number is None:
                    continue
                column = columns.setdefault(key, [math.nan] * index)
                column.append(number)
            for column in columns.values():  # metrics missing from this record are NaN
                if len(column) < index + 1:
                    column.append(math.nan)
        return cls(
            list(categories),
            np.asarray(codes, dtype=np.intp),
            {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()},
        )


def _bootstrap_inputs(
    data: Iterable[float] | Iterable[Mapping[str, object]], metric: str | None, category_key: str
) -> tuple[np.ndarray, np.ndarray, int]:
    items = list(data)
    if items and isinstance(items[0], Mapping):
        if metric is None:
            raise ValueError("bootstrap_ci over records needs metric=<record key>")
        table = _MetricTable.from_records(items, category_key)  # type: ignore[arg-type]
        if metric not in table.values:
            raise ValueError(f"no record has a numeric '{metric}' value")
        return table.values[metric], table.codes, max(len(table.categories), 1)
    try:
        values = np.asarray(items, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError("bootstrap_ci expects numbers or records (mappings)") from None
    return values, np.zeros(values.size, dtype=np.intp), 1


def _category_mean(counts: np.ndarray, sums: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Category-averaged mean for each row of sample multiplicities ``counts [B, N]`` -> ``[B]``."""
    total = counts @ sums  # [B, K]
    number = counts @ valid  # [B, K]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_category = np.where(number > 0, total / np.maximum(number, 1e-300), np.nan)
    present = np.isfinite(per_category)
    n_present = present.sum(axis=1)
    summed = np.where(present, per_category, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_present > 0, summed / np.maximum(n_present, 1), np.nan)
