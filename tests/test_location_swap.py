"""Location-swapped reports as hard negatives (loss.swap_negatives): the text swap, the loss, a training run."""

from __future__ import annotations

import math

import numpy as np
import torch

from afloc_models.config import AFLocConfig
from afloc_models.losses import global_loss, local_loss
from afloc_training.data import PairDataset, ReportCollate
from afloc_training.location_swap import swap_location
from afloc_training.phantoms import write_phantom_datastore
from afloc_training.trainer import train


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_sides_are_exchanged_word_by_word():
    report = ("small right pleural effusion", "left upper lobe nodule is unchanged")
    swapped = swap_location(report, _rng())
    # Both kinds occur here; either way exactly one kind changes.
    assert swapped in (
        ("small left pleural effusion", "right upper lobe nodule is unchanged"),
        ("small right pleural effusion", "left lower lobe nodule is unchanged"),
    )
    kinds = {swap_location(report, _rng(seed)) for seed in range(20)}
    assert len(kinds) == 2  # the rng picks the kind


def test_zones_only_and_words_inside_other_words_stay():
    assert swap_location(("opacity in the lung bases",), _rng()) == ("opacity in the lung apices",)
    # "bright" and "upright" contain no swappable whole word.
    assert swap_location(("bright upright film",), _rng()) is None
    assert swap_location(("cardiomegaly", "bilateral pleural effusions"), _rng()) is None


def test_swapping_twice_gives_the_report_back():
    report = ("right lower lobe consolidation", "no left pneumothorax")
    once = swap_location(report, _rng(3))
    assert once != report and swap_location(once, _rng(3)) == report


def _features(batch=4, dim=8, regions=(3, 3), length=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, *regions, generator=gen)
    text = torch.randn(batch, dim, length, generator=gen)
    lengths = torch.tensor([5, 3, 4, 2][:batch])
    return image, text, lengths


def test_invalid_negatives_change_nothing():
    image, text, lengths = _features()
    other = torch.randn(4, 8, 7)
    none = torch.zeros(4, dtype=torch.bool)
    plain = local_loss(image, text, lengths, chunk_size=0)
    masked = local_loss(image, text, lengths, chunk_size=0, negatives=(other, torch.full((4,), 7), none))
    assert torch.allclose(plain[0], masked[0]) and torch.allclose(plain[1], masked[1])
    emb, rep = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(global_loss(emb, rep)[0], global_loss(emb, rep, negatives=(torch.randn(4, 8), none))[0])


def test_a_negative_equal_to_the_true_report_costs_log_two():
    """A copy indistinguishable from the true text halves its probability when it dominates."""
    emb = torch.eye(4) * 5
    rep = torch.eye(4) * 5
    valid = torch.ones(4, dtype=torch.bool)
    i2t, t2i = global_loss(emb, rep, temp3=50.0)
    i2t_neg, t2i_neg = global_loss(emb, rep, temp3=50.0, negatives=(rep.clone(), valid))
    assert math.isclose(float(i2t_neg - i2t), math.log(2), abs_tol=1e-3)
    assert torch.allclose(t2i, t2i_neg)  # the text-to-image direction never sees negatives


def test_negatives_get_gradients_through_the_image_features():
    image, text, lengths = _features()
    image.requires_grad_(True)
    swapped = text.flip(2)
    loss = sum(local_loss(image, text, lengths, chunk_size=2, negatives=(swapped, lengths, torch.ones(4, dtype=torch.bool))))
    loss.backward()
    assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0


def test_loader_and_collate_carry_swapped_reports(tmp_path):
    from afloc_models.config import preset
    from afloc_models.model import AFLoc
    from afloc_training.data import load_pairs

    write_phantom_datastore(tmp_path / "data", 6, seed=0, size=64)
    pairs = load_pairs(tmp_path / "data").pairs
    config = preset("small")
    data = type(config.data)(resize=72, crop=64, num_workers=0)
    train_set = PairDataset(pairs, data, channels=1, train=True, seed=0, negatives=True)
    val_set = PairDataset(pairs, data, channels=1, train=False, seed=0, negatives=True)
    samples = [train_set[i] for i in range(len(pairs))]
    assert all(val_set[i].negative is None for i in range(len(pairs)))  # never for validation
    for sample in samples:
        if sample.negative is not None:
            assert sample.negative != sample.sentences and len(sample.negative) == len(sample.sentences)
    collate = ReportCollate(AFLoc(config).tokenizer, 1, 64)
    batch = collate(samples)
    assert batch.negative_valid is not None and batch.negative_valid.shape == (6,)
    assert int(batch.tokens.n_words.shape[0]) == 12
    assert batch.negative_valid.tolist() == [s.negative is not None for s in samples]


def test_training_with_swapped_negatives_runs_and_differs(tmp_path):
    """Both kinds of copy (location, and finding: tests/test_finding_swap.py) train, and each
    changes the training loss: same seed, same crops, only the negatives differ."""
    write_phantom_datastore(tmp_path / "data", 12, seed=0, size=64)
    config = (
        "base: small\nembed_dim: 32\noptim: {{batch_size: 4, warmup_steps: 2, lr: 0.001}}\n"
        "data: {{resize: 72, crop: 64, num_workers: 0, val_fraction: 0.2}}\nloss: {{{loss}}}\n"
    )
    arms = {
        "off": "swap_negatives: false",
        "location": "swap_negatives: true",
        "finding": "swap_negatives: true, swap_kind: finding",
    }
    results = {}
    for arm, loss in arms.items():
        path = tmp_path / f"{arm}.yaml"
        path.write_text(config.format(loss=loss))
        results[arm] = train(tmp_path / "data", tmp_path / arm, config=path, epochs=1, seed=0, save_every=0, progress=False)
    assert all(math.isfinite(h["train_loss"]) for r in results.values() for h in r.history)
    saved = AFLocConfig.from_yaml(results["finding"].checkpoint / "config.yaml")
    assert saved.loss.swap_negatives and saved.loss.swap_kind == "finding"
    first = {arm: r.history[0]["train_loss"] for arm, r in results.items()}
    assert len(set(first.values())) == 3, first
