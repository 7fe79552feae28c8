"""Radiograph-like training augmentation: reproducible, training only; left-right mirroring only
with the report's sides exchanged (``data.hflip``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from afloc_models.config import load_config
from afloc_training.augment import augment_radiograph
from afloc_training.data import ImageReportPair, PairDataset


def _image() -> np.ndarray:
    """A bright block on the image left (the patient's right) of a dark field."""
    image = np.full((120, 100), 0.15, dtype=np.float32)
    image[30:90, 10:40] = 0.9
    return image


def _one_pair(tmp_path, report: tuple[str, ...]):
    """One image-report pair: :func:`_image` saved as a PNG with ``report``."""
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray((_image() * 255).astype(np.uint8)).save(path)
    return [ImageReportPair("a", path, report, "a")]


def test_same_generator_same_variation_and_values_stay_in_range():
    a = augment_radiograph(_image(), np.random.default_rng(4))
    b = augment_radiograph(_image(), np.random.default_rng(4))
    c = augment_radiograph(_image(), np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    for seed in range(20):
        out = augment_radiograph(_image(), np.random.default_rng(seed))
        assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
        assert 0.7 * 120 <= out.shape[0] <= 120 and 0.7 * 100 <= out.shape[1] <= 100


def test_never_flips_left_and_right():
    """The block stays on the image left: "right" in a report must keep meaning the image left."""
    for seed in range(30):
        out = augment_radiograph(_image(), np.random.default_rng(seed))
        half = out.shape[1] // 2
        left, right = out[:, :half].mean(), out[:, half:].mean()
        # Inversion is off by default, so the bright side stays the bright side.
        assert left > right, seed


def test_invert_turns_the_same_variation_negative():
    for seed in range(5):
        plain = augment_radiograph(_image(), np.random.default_rng(seed))
        inverted = augment_radiograph(_image(), np.random.default_rng(seed), invert=1.0)
        assert np.allclose(inverted, 1.0 - plain, atol=1e-6)


def test_dataset_augments_training_items_only_and_reproducibly(tmp_path):
    pairs = _one_pair(tmp_path, ("right opacity",))
    plain = load_config("small").data
    augmented = dataclasses.replace(plain, augment=1.0)
    train_plain = PairDataset(pairs, plain, 1, train=True, seed=3)[0].image
    train_aug = PairDataset(pairs, augmented, 1, train=True, seed=3)[0].image
    again = PairDataset(pairs, augmented, 1, train=True, seed=3)[0].image
    assert torch.equal(train_aug, again) and not torch.equal(train_plain, train_aug)
    assert torch.equal(PairDataset(pairs, plain, 1, train=False)[0].image,
                       PairDataset(pairs, augmented, 1, train=False)[0].image)
    other_epoch = PairDataset(pairs, augmented, 1, train=True, seed=3)
    other_epoch.set_epoch(1)
    assert not torch.equal(other_epoch[0].image, train_aug)


def test_a_training_run_with_augmentation(tmp_path):
    """``data.augment`` from a YAML reaches the trainer's workers and the run completes."""
    from afloc_models.model import AFLoc
    from tests.tiny_runs import tiny_run

    result = tiny_run(
        tmp_path,
        "optim: {batch_size: 4, warmup_steps: 1}\n"
        "data: {resize: 72, crop: 64, num_workers: 1, val_fraction: 0.25, augment: 1.0, augment_invert: 0.1}\n",
        max_steps=2, n_phantoms=8,
    )
    assert result.steps == 2
    assert AFLoc.from_pretrained(result.checkpoint).config.data.augment == 1.0


def test_hflip_mirrors_the_image_and_exchanges_the_report_sides(tmp_path):
    """A mirrored item shows the block on the image right and its report says "left" there."""
    pairs = _one_pair(tmp_path, ("right lower lobe opacity", "no left effusion", "cardiomegaly"))
    # drop_negated off, so the negated sentence stays and its side is seen to change too
    data = dataclasses.replace(load_config("small").data, resize=100, crop=100, drop_negated=False)
    plain = PairDataset(pairs, data, 1, train=True, seed=3)[0]
    flipped = PairDataset(pairs, dataclasses.replace(data, hflip=1.0), 1, train=True, seed=3)[0]
    assert torch.equal(flipped.image, plain.image.flip(-1))
    half = plain.image.shape[-1] // 2
    assert plain.image[..., :half].mean() > plain.image[..., half:].mean()
    assert flipped.image[..., half:].mean() > flipped.image[..., :half].mean()
    assert plain.sentences == ("right lower lobe opacity", "no left effusion", "cardiomegaly")
    assert flipped.sentences == ("left lower lobe opacity", "no right effusion", "cardiomegaly")


def test_hflip_is_reproducible_per_epoch_and_never_touches_validation(tmp_path):
    pairs = _one_pair(tmp_path, ("right opacity",))
    data = dataclasses.replace(load_config("small").data, resize=100, crop=100, hflip=0.5)
    draws = []
    for epoch in range(40):
        dataset = PairDataset(pairs, data, 1, train=True, seed=3)
        dataset.set_epoch(epoch)
        again = PairDataset(pairs, data, 1, train=True, seed=3)
        again.set_epoch(epoch)
        assert dataset.mirrored(0) == again.mirrored(0)
        draws.append(dataset.mirrored(0))
        assert dataset[0].sentences == (("left opacity",) if draws[-1] else ("right opacity",))
    assert 8 <= sum(draws) <= 32  # about half of 40 epochs
    validation = PairDataset(pairs, dataclasses.replace(data, hflip=1.0), 1, train=False)
    assert not validation.mirrored(0) and validation[0].sentences == ("right opacity",)


def test_hflip_must_be_a_probability():
    import pytest

    from afloc_models.config import AFLocConfig
    from afloc_models.errors import ConfigError

    with pytest.raises(ConfigError, match="data.hflip"):
        AFLocConfig.from_dict({"base": "small", "data": {"hflip": 1.5}})
