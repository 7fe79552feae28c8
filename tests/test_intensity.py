"""Histogram equalisation (data.equalize): invariance to exposure changes, in the loader and the predictor."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from afloc_models.config import DataConfig, preset
from afloc_models.imaging import letterbox
from afloc_models.inference import AFLocPredictor
from afloc_models.intensity import equalize_content, equalize_histogram
from afloc_models.model import AFLoc
from afloc_training.data import PairDataset


def _radiograph(shape=(120, 150), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    image = 0.6 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + 0.05 * rng.standard_normal(shape)
    image[30:80, 20:60] -= 0.4  # a dark "lung"
    image[50:60, 35:45] += 0.3  # a bright "nodule" inside it
    return np.clip(image, 0, 1).astype(np.float32)


def _exposed(image: np.ndarray) -> np.ndarray:
    """A monotone change a different site could make: window, gamma, offset."""
    return np.clip(0.15 + 0.7 * image, 0, 1) ** 1.8


def test_equalized_image_is_uniform_and_keeps_the_order_of_brightness():
    image = _radiograph()
    out = equalize_histogram(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # Ranks are spread evenly over [0, 1] ...
    assert np.abs(np.sort(out.ravel()) - np.linspace(0, 1, out.size)).max() < 0.02
    # ... and a brighter pixel never becomes darker.
    order = np.argsort(image.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)


def test_monotone_exposure_changes_give_nearly_the_same_image():
    image = _radiograph()
    changed = _exposed(image)
    assert np.abs(changed - image).mean() > 0.1  # the raw inputs really differ
    assert np.abs(equalize_histogram(changed) - equalize_histogram(image)).max() < 0.02


def test_padding_stays_zero_and_outside_the_histogram():
    square, box = letterbox(_radiograph((60, 150)), 64)
    out = equalize_content(square, box.pad_top, box.pad_left, *box.resized_shape)
    h, w = box.resized_shape
    assert box.pad_top > 0
    assert np.all(out[: box.pad_top] == 0) and np.all(out[box.pad_top + h :] == 0)
    content = out[box.pad_top : box.pad_top + h, box.pad_left : box.pad_left + w]
    assert abs(float(content.mean()) - 0.5) < 0.02
    assert np.all(square[: box.pad_top] == 0)  # the input square is not modified


def test_training_loader_equalizes_only_when_configured():
    data = dataclasses.replace(DataConfig(resize=64, crop=64), equalize=True)
    plain = dataclasses.replace(data, equalize=False)
    image = _radiograph()
    on = PairDataset([], data, channels=1, train=False)
    off = PairDataset([], plain, channels=1, train=False)
    a, b = on.transform(image, 0), on.transform(_exposed(image), 0)
    # Resampling before the histogram does not commute exactly with a gamma: close, not equal.
    assert (a - b).abs().mean() < 0.03
    c, d = off.transform(image, 0), off.transform(_exposed(image), 0)
    assert (c - d).abs().mean() > 0.1


@pytest.fixture(scope="module")
def equalizing_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = preset("small")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, equalize=True))
    model = AFLoc(config)
    return model.save_pretrained(tmp_path_factory.mktemp("eq") / "ckpt", meta={"version": "eq-1"})


def test_predictor_reads_the_setting_from_the_checkpoint(equalizing_checkpoint):
    predictor = AFLocPredictor.load(equalizing_checkpoint, device="cpu")
    assert predictor.equalize
    image = _radiograph()
    first = predictor.localize(image, ["right lower lobe nodule"])[0].heatmap
    second = predictor.localize(_exposed(image), ["right lower lobe nodule"])[0].heatmap
    # Same heatmap for the image and its re-exposed copy (up to the histogram's bins).
    assert np.corrcoef(first.ravel(), second.ravel())[0, 1] > 0.99


def test_checkpoints_without_the_field_do_not_equalize(tmp_path):
    # A small checkpoint written before the field existed has no ``equalize`` line in config.yaml.
    model = AFLoc("small")
    saved = model.save_pretrained(tmp_path / "old", meta={"version": "old"})
    text = (saved / "config.yaml").read_text()
    (saved / "config.yaml").write_text("\n".join(line for line in text.splitlines() if "equalize" not in line) + "\n")
    assert not AFLocPredictor.load(saved, device="cpu").equalize
