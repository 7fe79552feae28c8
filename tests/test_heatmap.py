"""Heatmap path: similarity maps, letterbox geometry back to the original grid, masks and boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afloc_models.errors import ConfigError
from afloc_models.evaluation.metrics import normalize_heatmap
from afloc_models.imaging import Letterbox, letterbox
from afloc_models.inference.heatmap import (
    HeatmapSettings,
    deep_similarity,
    fuse,
    guided_filter,
    mask_boxes,
    normalize_unit,
    render_heatmaps,
    shallow_similarity,
    square_heatmaps,
    threshold_mask,
    to_original_heatmap,
    to_square,
)


def _box_mask(shape, box):
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


# ------------------------------------------------------------------------------ similarity


def test_deep_similarity_is_dot_or_cosine_per_cell():
    torch.manual_seed(0)
    deep = torch.randn(16, 3, 5)
    sentences = torch.randn(2, 16)
    sentences[1] = deep[:, 2, 4] * 3.0  # same direction as one cell, other length
    maps = deep_similarity(deep, sentences, similarity="cosine")
    assert maps.shape == (2, 3, 5)
    expected = torch.nn.functional.cosine_similarity(deep[:, 1, 3], sentences[0], dim=0)
    assert maps[0, 1, 3].item() == pytest.approx(expected.item(), abs=1e-6)
    assert maps[1, 2, 4].item() == pytest.approx(1.0, abs=1e-6)
    assert maps[1].argmax().item() == 2 * 5 + 4
    dot = deep_similarity(deep, sentences)  # the default
    assert dot[0, 1, 3].item() == pytest.approx(float(deep[:, 1, 3] @ sentences[0]), rel=1e-5)


def test_shallow_similarity_averages_valid_words_only():
    torch.manual_seed(1)
    shallow = torch.randn(8, 4, 4)
    words = torch.randn(2, 8, 3)
    n_words = torch.tensor([3, 1])
    maps = shallow_similarity(shallow, words, n_words, similarity="cosine")
    cos = lambda w: torch.nn.functional.cosine_similarity(shallow, w[:, None, None], dim=0)  # noqa: E731
    assert torch.allclose(maps[0], (cos(words[0, :, 0]) + cos(words[0, :, 1]) + cos(words[0, :, 2])) / 3, atol=1e-6)
    # The second prompt has one word; its padding columns must not leak in.
    assert torch.allclose(maps[1], cos(words[1, :, 0]), atol=1e-6)


# ------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("shape", [(150, 400), (400, 150), (301, 257)])
def test_blob_on_the_square_comes_back_at_the_same_original_pixels(shape):
    """A blob drawn where the letterbox put an original region returns onto that region."""
    size = 128
    box = Letterbox.for_shape(shape, size)
    height, width = shape
    region = (width // 2, height // 4, width // 2 + width // 5, height // 4 + height // 3)
    sx0, sy0, sx1, sy1 = box.box_from_original(region)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    square = ((xx >= sx0) & (xx < sx1) & (yy >= sy0) & (yy < sy1)).astype(np.float32)

    heatmap = to_original_heatmap(square, box)
    assert heatmap.shape == shape and heatmap.dtype == np.float32
    assert heatmap.min() == -1.0 and heatmap.max() == 1.0
    mask = threshold_mask(heatmap, 0.0)
    assert _iou(mask, _box_mask(shape, region)) > 0.9
    boxes = mask_boxes(mask, heatmap)
    assert len(boxes) == 1
    # Edges agree to within one square pixel (the resampling step) in original pixels.
    tolerance = 1.0 / box.scale + 1
    for got, want in zip(boxes[0].as_list(), region):
        assert abs(got - want) <= tolerance


def test_coarse_grid_peak_lands_in_its_cell_on_a_non_square_image():
    """End to end from a 8x8 feature grid: the hot cell maps to the right original pixels."""
    shape = (180, 420)  # wide: padding above and below
    size = 128
    _, box = letterbox(np.zeros(shape, dtype=np.float32), size)
    grid = torch.zeros(1, 8, 8)
    grid[0, 3, 5] = 1.0  # cell rows 48..64, cols 80..96 of the square
    heatmap = render_heatmaps(box, HeatmapSettings(sigma_cells=0.5), deep_maps=grid)[0]
    assert heatmap.shape == shape
    row, col = np.unravel_index(np.argmax(heatmap), shape)
    # Cell centre (56, 88) in the square, back to the original grid.
    want_col = (88 - box.pad_left) * shape[1] / box.resized_shape[1]
    want_row = (56 - box.pad_top) * shape[0] / box.resized_shape[0]
    cell = 16 / box.scale
    assert abs(col - want_col) <= cell / 2 and abs(row - want_row) <= cell / 2


def test_padding_is_cropped_not_resampled():
    """A square map that is hot only in the padding leaves nothing on a wide image's grid."""
    shape = (100, 400)
    size = 128
    box = Letterbox.for_shape(shape, size)
    assert box.pad_top > 0
    square = np.zeros((size, size), dtype=np.float32)
    square[: box.pad_top - 1] = 5.0
    square[box.pad_top + box.resized_shape[0] + 1 :] = 5.0
    original = box.to_original(square)
    assert np.allclose(original, 0.0)


def test_to_square_uses_cell_covering_convention():
    grid = torch.arange(4.0).view(1, 2, 2)
    square = to_square(grid, 4)
    assert square.shape == (1, 4, 4)
    # Each cell covers a 2x2 block; the block's inner corner keeps the cell's value blend.
    assert square[0, 0, 0].item() == pytest.approx(0.0)
    assert square[0, 3, 3].item() == pytest.approx(3.0)


def test_fuse_with_one_level_weighted_is_that_level_normalised():
    box = Letterbox.for_shape((64, 64), 64)
    deep = torch.rand(2, 64, 64)
    shallow = torch.rand(2, 64, 64)
    fused = fuse(deep, shallow, box, (1.0, 0.0))
    for p in range(2):
        assert np.allclose(fused[p].numpy(), normalize_heatmap(deep[p].numpy()), atol=1e-5)


def test_render_levels_and_missing_maps():
    box = Letterbox.for_shape((90, 60), 64)
    deep = torch.rand(3, 4, 4)
    shallow = torch.rand(3, 8, 8)
    for level in ("deep", "shallow", "fused"):
        maps = render_heatmaps(box, HeatmapSettings(level=level), deep_maps=deep, shallow_maps=shallow)
        assert len(maps) == 3 and all(m.shape == (90, 60) for m in maps)
        assert all(m.min() == -1.0 and m.max() == 1.0 for m in maps)
    with pytest.raises(ValueError, match="shallow_maps"):
        render_heatmaps(box, HeatmapSettings(level="shallow"), deep_maps=deep)


# ------------------------------------------------------------------------------ guided refinement


def _blob_scene(size=64, centre=(30, 30), radius=3.0, peak_offset=(0, 8)):
    """A flat image with one bright blob and a map whose smooth peak sits ``peak_offset`` px beside it."""
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float32)
    image = 0.3 + 0.4 * (np.hypot(rr - centre[0], cc - centre[1]) <= radius)
    peak = (centre[0] + peak_offset[0], centre[1] + peak_offset[1])
    heat = np.exp(-((rr - peak[0]) ** 2 + (cc - peak[1]) ** 2) / (2 * 8.0**2))
    return image.astype(np.float32), heat[None].astype(np.float32)


def test_guided_filter_on_a_flat_image_is_a_box_mean_of_the_box_mean():
    from scipy import ndimage

    maps = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    out = guided_filter(np.full((40, 40), 0.4, np.float32), maps, 3, 1e-3)
    # No edge to follow: a = 0, b = the window mean, and each pixel averages its windows' b.
    box = lambda x: ndimage.uniform_filter(x, size=(1, 7, 7), mode="reflect")  # noqa: E731
    want = box(box(maps))
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_guided_filter_is_linear_in_the_map():
    rng = np.random.default_rng(1)
    guide = rng.random((48, 48)).astype(np.float32)
    maps = rng.random((1, 48, 48)).astype(np.float32)
    np.testing.assert_allclose(
        guided_filter(guide, 3.0 * maps - 2.0, 4, 1e-3), 3.0 * guided_filter(guide, maps, 4, 1e-3) - 2.0, atol=1e-4
    )


def test_guided_filter_moves_a_peak_from_beside_a_blob_onto_it():
    image, heat = _blob_scene()
    assert not np.hypot(*(np.array(np.unravel_index(np.argmax(heat[0]), heat[0].shape)) - 30)) <= 3.0
    refined = guided_filter(image, heat, 8, 1e-3)[0]
    row, col = np.unravel_index(np.argmax(refined), refined.shape)
    assert np.hypot(row - 30, col - 30) <= 3.0, (row, col)
    # A large eps (edges below its scale ignored) leaves the peak where it was: a box mean.
    smoothed = guided_filter(image, heat, 8, 10.0)[0]
    assert np.hypot(*(np.array(np.unravel_index(np.argmax(smoothed), smoothed.shape)) - (30, 38))) <= 1.5


def test_guided_filter_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="guide"):
        guided_filter(np.zeros((10, 10)), np.zeros((1, 12, 12)), 2, 1e-3)
    with pytest.raises(ValueError, match="guide"):
        guided_filter(np.zeros((10, 10)), np.zeros((10, 10)), 2, 1e-3)


def test_refine_guided_needs_the_square_and_auto_without_one_is_unrefined():
    box = Letterbox.for_shape((64, 64), 64)
    grid = torch.rand(2, 8, 8)
    with pytest.raises(ValueError, match="needs the \\[64, 64\\] input square"):
        square_heatmaps(box, HeatmapSettings(refine="guided"), deep_maps=grid)
    with pytest.raises(ValueError, match="needs the"):
        square_heatmaps(box, HeatmapSettings(refine="guided"), deep_maps=grid, guide=np.zeros((32, 32)))
    plain = square_heatmaps(box, HeatmapSettings(refine="off"), deep_maps=grid)
    np.testing.assert_array_equal(square_heatmaps(box, HeatmapSettings(), deep_maps=grid), plain)
    guide = np.random.default_rng(2).random((64, 64)).astype(np.float32)
    refined = square_heatmaps(box, HeatmapSettings(), deep_maps=grid, guide=guide)
    assert np.abs(refined - plain).max() > 1e-3
    # One cell of an 8 x 8 grid on a 64 px square is 8 px: the window radius guide_cells sets.
    want = guided_filter(guide, plain, 8, 1e-3)
    np.testing.assert_allclose(refined, want, atol=1e-5)
    half = square_heatmaps(box, HeatmapSettings(guide_cells=0.5), deep_maps=grid, guide=guide)
    np.testing.assert_allclose(half, guided_filter(guide, plain, 4, 1e-3), atol=1e-5)
    # The published recipe's map is left as published unless refinement is asked for by name.
    published = square_heatmaps(box, HeatmapSettings(recipe="published"), deep_maps=grid, guide=guide)
    np.testing.assert_array_equal(published, square_heatmaps(box, HeatmapSettings(recipe="published", refine="off"),
                                                             deep_maps=grid))


# ------------------------------------------------------------------------------ normalisation, masks, boxes


def test_normalize_unit_matches_the_evaluation_definition():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(40, 30)).astype(np.float32) * 7 + 3
    ours = normalize_unit(values)
    assert ours.dtype == np.float32 and ours.min() == -1.0 and ours.max() == 1.0
    assert np.allclose(ours, normalize_heatmap(values), atol=1e-5)
    assert not normalize_unit(np.full((5, 5), 2.5)).any()
    with pytest.raises(ValueError, match="NaN"):
        normalize_unit(np.array([[0.0, np.nan]]))


def test_threshold_is_inclusive():
    heat = np.array([[0.29, 0.3, 0.31]], dtype=np.float32)
    assert threshold_mask(heat, np.float32(0.3)).tolist() == [[False, True, True]]


def test_mask_boxes_components_scores_and_order():
    heat = np.zeros((20, 30), dtype=np.float32)
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:5, 3:10] = True  # 3 rows x 7 cols
    heat[2:5, 3:10] = 0.5
    heat[3, 4] = 0.6
    mask[12:18, 20:22] = True  # hotter component
    heat[12:18, 20:22] = 0.9
    mask[10, 10] = mask[11, 11] = True  # diagonal neighbours: one component (8-connectivity)
    heat[10, 10], heat[11, 11] = 0.4, 0.2

    boxes = mask_boxes(mask, heat, score="max")
    assert [b.as_list() for b in boxes] == [[20, 12, 22, 18], [3, 2, 10, 5], [10, 10, 12, 12]]
    assert [b.pixels for b in boxes] == [12, 21, 2]
    assert boxes[0].score == pytest.approx(0.9) and boxes[1].score == pytest.approx(0.6)
    mean_boxes = mask_boxes(mask, heat, score="mean")
    second = next(b for b in mean_boxes if b.x0 == 3)
    assert second.score == pytest.approx((0.5 * 20 + 0.6) / 21, rel=1e-5)
    assert mask_boxes(np.zeros((4, 4), dtype=bool), np.zeros((4, 4))) == []
    with pytest.raises(ConfigError):
        mask_boxes(mask, heat, score="median")


@pytest.mark.parametrize(
    "options",
    [
        {"level": "middle"},
        {"similarity": "euclid"},
        {"threshold": 1.5},
        {"fused_weights": (0.0, 0.0)},
        {"sigma_cells": -1.0},
        {"box_score": "sum"},
    ],
)
def test_settings_reject_bad_values(options):
    with pytest.raises(ConfigError):
        HeatmapSettings(**options)


def test_mirror_average_cancels_a_fixed_left_right_offset():
    from afloc_models.inference.heatmap import mirror_average

    # A model whose map sits one cell right of the finding (column 5 -> 6) does so on the mirror
    # too (mirrored column 10 -> 11, i.e. column 4 once mirrored back): the average is centred.
    width = 16
    cols = torch.arange(width, dtype=torch.float32)
    maps = torch.exp(-((cols - 6.0) ** 2) / 2).expand(3, width)[None]
    mirrored = torch.exp(-((cols - 11.0) ** 2) / 2).expand(3, width)[None]
    averaged = mirror_average(maps, mirrored)
    centre = float((averaged[0, 0] * cols).sum() / averaged[0, 0].sum())
    assert centre == pytest.approx(5.0, abs=1e-4)
    assert averaged.shape == maps.shape
    with pytest.raises(ValueError, match="differ in shape"):
        mirror_average(maps, mirrored[..., :-1])
