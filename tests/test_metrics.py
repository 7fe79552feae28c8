"""AFLoc localization metrics against hand-computed tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from afloc_models.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    ConfidenceInterval,
    aggregate,
    bootstrap_ci,
    cnr,
    dice,
    iou,
    normalize_heatmap,
    peak_distance,
    pointing_game,
    threshold_sweep,
)

PRED = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
GT = np.array([[0, 1, 1], [0, 1, 1], [0, 0, 0]], bool)
EMPTY = np.zeros((3, 3), bool)


def test_normalize_heatmap():
    np.testing.assert_allclose(normalize_heatmap([[0, 1], [2, 4]]), [[-1, -0.5], [0, 1]])
    np.testing.assert_array_equal(normalize_heatmap(np.full((3, 3), 7.0)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        normalize_heatmap([[0.0, math.nan], [1.0, 2.0]])
    with pytest.raises(ValueError, match="empty"):
        normalize_heatmap(np.zeros((0, 3)))


def test_iou_and_dice_by_hand():
    # Intersection 2 pixels, union 6, sizes 4 + 4.
    assert iou(PRED, GT) == pytest.approx(2 / 6)
    assert dice(PRED, GT) == pytest.approx(4 / 8)
    assert iou(GT, GT) == 1.0 and dice(GT, GT) == 1.0
    assert iou(PRED.astype(np.uint8), GT.astype(float)) == pytest.approx(1 / 3)


@pytest.mark.parametrize("metric", [iou, dice])
def test_empty_mask_policy(metric):
    assert math.isnan(metric(EMPTY, EMPTY))
    assert math.isnan(metric(EMPTY, EMPTY, empty_prediction="zero"))
    assert metric(EMPTY, GT) == 0.0
    assert math.isnan(metric(EMPTY, GT, empty_prediction="drop"))
    assert metric(PRED, EMPTY) == 0.0
    with pytest.raises(ValueError, match="empty_prediction"):
        metric(PRED, GT, empty_prediction="skip")
    with pytest.raises(ValueError, match="shape"):
        metric(PRED, np.zeros((4, 4), bool))


def test_cnr_by_hand():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True
    heatmap = np.zeros((4, 4))
    heatmap[:2, :2] = [[1.0, 0.5], [1.0, 0.5]]  # mean 0.75, variance 0.0625
    heatmap[2, :] = 0.5  # outside: six 0.5 and six 0.0 -> mean 0.25, variance 0.0625
    heatmap[3, :2] = 0.5
    expected = (0.75 - 0.25) / math.sqrt(0.0625 + 0.0625)
    assert cnr(heatmap, gt) == pytest.approx(expected)
    assert cnr(-heatmap, gt) == pytest.approx(-expected)  # signed
    assert cnr(normalize_heatmap(heatmap), gt) == pytest.approx(expected)  # affine-invariant


def test_cnr_undefined_cases():
    heatmap = np.arange(16.0).reshape(4, 4)
    assert math.isnan(cnr(heatmap, np.zeros((4, 4), bool)))  # no region
    assert math.isnan(cnr(heatmap, np.ones((4, 4), bool)))  # no background
    assert math.isnan(cnr(np.ones((4, 4)), np.eye(4, dtype=bool)))  # zero noise
    with pytest.raises(ValueError, match="NaN"):
        cnr(np.full((4, 4), math.nan), np.eye(4, dtype=bool))


def test_pointing_game():
    heatmap = np.array([[0.1, 0.2, 0.0], [0.3, 0.1, 0.0], [0.0, 0.9, 0.2]])
    hit = np.zeros((3, 3), bool)
    hit[2, 1] = True
    assert pointing_game(heatmap, hit) is True
    assert pointing_game(heatmap, GT) is False
    # A tie goes to the first maximum in row-major order.
    tied = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    corner = np.zeros((3, 3), bool)
    corner[2, 2] = True
    assert pointing_game(tied, corner) is False
    with pytest.raises(ValueError, match="non-empty"):
        pointing_game(heatmap, EMPTY)


def test_peak_distance_is_zero_on_a_hit_and_grows_with_the_miss():
    """Distance from the hottest pixel to the nearest ground-truth pixel, in image sides (the
    longer one): 0 whenever the pointing game is won."""
    heatmap = np.zeros((10, 20))
    heatmap[2, 3] = 1.0
    gt = np.zeros((10, 20), bool)
    gt[2, 3] = True
    assert peak_distance(heatmap, gt) == 0.0 and pointing_game(heatmap, gt)
    gt[:] = False
    gt[6, 6:9] = True  # nearest ground-truth pixel (6, 6): 3-4-5 triangle, 5 pixels of 20
    assert peak_distance(heatmap, gt) == pytest.approx(5 / 20)
    far = np.zeros((10, 20), bool)
    far[9, 19] = True
    assert peak_distance(heatmap, far) > peak_distance(heatmap, gt)
    with pytest.raises(ValueError, match="non-empty"):
        peak_distance(heatmap, np.zeros((10, 20), bool))
    with pytest.raises(ValueError, match="shape"):
        peak_distance(heatmap, np.ones((3, 3), bool))


def test_threshold_sweep_by_hand():
    heatmap = np.arange(16.0).reshape(4, 4)  # normalised: 2 h / 15 - 1
    gt = np.zeros((4, 4), bool)
    gt[2:] = True  # h = 8 ... 15
    result = threshold_sweep(heatmap, gt, thresholds=(0.1, 0.3, 0.5))
    # t=0.1 keeps h >= 8.25 (7 px), t=0.3 keeps h >= 9.75 (6 px), t=0.5 keeps h >= 11.25 (4 px).
    assert result["iou@0.1"] == pytest.approx(7 / 8)
    assert result["dice@0.1"] == pytest.approx(14 / 15)
    assert result["iou@0.3"] == pytest.approx(6 / 8)
    assert result["dice@0.3"] == pytest.approx(12 / 14)
    assert result["iou@0.5"] == pytest.approx(4 / 8)
    assert result["dice@0.5"] == pytest.approx(8 / 12)
    assert result["miou"] == pytest.approx((7 / 8 + 6 / 8 + 4 / 8) / 3)
    assert result["mdice"] == pytest.approx((14 / 15 + 12 / 14 + 8 / 12) / 3)

    default = threshold_sweep(heatmap, gt)
    assert [k for k in default if k.startswith("iou@")] == [f"iou@{t:g}" for t in DEFAULT_THRESHOLDS]

    raw = threshold_sweep(heatmap, gt, thresholds=(11.5,), normalize=False)
    assert raw["iou@11.5"] == pytest.approx(4 / 8)


def test_threshold_sweep_nan_handling():
    # Empty ground truth and a constant map: every threshold predicts nothing -> both empty.
    result = threshold_sweep(np.zeros((3, 3)), EMPTY)
    assert all(math.isnan(v) for v in result.values())
    # Predicting nothing on a real finding counts as 0, or is dropped on request.
    heatmap = np.zeros((3, 3))
    heatmap[0, 0] = 1.0
    gt = np.zeros((3, 3), bool)
    gt[2, 2] = True
    assert threshold_sweep(heatmap, gt)["miou"] == 0.0
    assert threshold_sweep(np.ones((3, 3)), gt)["miou"] == 0.0  # constant map: nothing >= 0.1
    dropped = threshold_sweep(np.ones((3, 3)), gt, empty_prediction="drop")
    assert math.isnan(dropped["miou"]) and math.isnan(dropped["dice@0.3"])


RECORDS = [
    {"category": "A", "iou": 0.2, "hit": True, "path": "a1.png"},
    {"category": "A", "iou": 0.4, "hit": False, "path": "a2.png"},
    {"category": "A", "iou": math.nan, "hit": True, "path": "a3.png"},
    {"category": "B", "iou": 0.9, "hit": True, "path": "b1.png"},
    {"category": "C", "iou": math.nan, "path": "c1.png"},
]


def test_aggregate_category_then_overall():
    result = aggregate(RECORDS)
    per = result["per_category"]
    assert per["A"]["iou"] == pytest.approx(0.3) and per["A"]["n"] == 3
    assert per["A"]["hit"] == pytest.approx(2 / 3)
    assert per["B"]["iou"] == pytest.approx(0.9) and per["B"]["n"] == 1
    assert math.isnan(per["C"]["iou"]) and math.isnan(per["C"]["hit"])
    assert result["overall"]["iou"] == pytest.approx(0.6)  # C has no finite value: left out
    assert result["overall"]["hit"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["micro"]["iou"] == pytest.approx(0.5)
    assert result["n"] == 5 and result["categories"] == 3
    assert "path" not in result["overall"]


def test_aggregate_errors_and_empty():
    with pytest.raises(ValueError, match="category"):
        aggregate([{"iou": 0.5}])
    assert aggregate([])["overall"] == {}


def test_bootstrap_ci_basic_properties():
    rng = np.random.default_rng(123)
    values = rng.normal(0.5, 0.1, size=400)
    ci = bootstrap_ci(values, n=1000, seed=0)
    assert isinstance(ci, ConfidenceInterval)
    assert ci.mean == pytest.approx(values.mean())
    assert ci.low < ci.mean < ci.high
    expected_half_width = 1.96 * values.std() / math.sqrt(values.size)
    assert (ci.high - ci.low) / 2 == pytest.approx(expected_half_width, rel=0.15)
    assert bootstrap_ci(values, n=1000, seed=0) == ci  # seeded
    assert bootstrap_ci(values, n=1000, seed=1) != ci


def test_bootstrap_ci_tiny_case_and_nan():
    # Resampling [0, 1]: the mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4.
    ci = bootstrap_ci([0.0, 1.0], n=4000, seed=0)
    assert (ci.mean, ci.low, ci.high) == (0.5, 0.0, 1.0)
    assert bootstrap_ci([2.0, 2.0, 2.0], n=50) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([1.0, math.nan, 3.0], n=200).mean == pytest.approx(2.0)
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan, math.nan], n=10))
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], n=0)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, 2.0], alpha=1.5)


def test_bootstrap_ci_is_category_averaged():
    # 90 samples of 0 in A, 10 samples of 1 in B: the sample mean is 0.1, the category mean 0.5,
    # and every resample that contains both categories has category mean exactly 0.5.
    records = [{"category": "A", "iou": 0.0}] * 90 + [{"category": "B", "iou": 1.0}] * 10
    ci = bootstrap_ci(records, metric="iou", n=500, seed=3)
    assert ci == (0.5, 0.5, 0.5)
    assert ci.mean == aggregate(records)["overall"]["iou"]
    with pytest.raises(ValueError, match="metric"):
        bootstrap_ci(records)
    with pytest.raises(ValueError, match="dice"):
        bootstrap_ci(records, metric="dice")
