"""``loss.mirror_consistency``: a sentence's map must be the mirror of its map on the mirrored image."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from afloc_models.config import AFLocConfig, preset
from afloc_models.errors import ConfigError
from afloc_models.map_regularizers import mirror_consistency_loss, region_log_attention


def _features(seed: int = 0, k: int = 3, d: int = 8, h: int = 6, w: int = 6, s: int = 2):
    g = torch.Generator().manual_seed(seed)
    deep = torch.randn(k, d, h, w, generator=g)
    sentences = torch.randn(k, d, s, generator=g)
    return deep, sentences, torch.full((k,), s)


def test_attention_maps_are_distributions_over_the_regions():
    deep, sentences, _ = _features()
    for cosine in (False, True):
        maps = region_log_attention(deep, sentences, cosine=cosine).exp()
        assert maps.shape == (3, 2, 6, 6)
        torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(3, 2))


def test_a_model_that_mirrors_exactly_scores_zero_and_an_offset_does_not():
    deep, sentences, n = _features()
    exact = mirror_consistency_loss(deep, sentences, n, deep.flip(-1), sentences, n)
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    # Maps one cell to the right on both reads: mirrored back, the second points one cell left.
    shifted = torch.roll(deep, 1, dims=-1)
    mirror_shifted = torch.roll(deep.flip(-1), 1, dims=-1)
    offset = mirror_consistency_loss(shifted, sentences, n, mirror_shifted, sentences, n)
    assert float(offset) > 0.05


def test_only_valid_sentences_count_and_the_loss_is_symmetric():
    deep, sentences, _ = _features(s=3)
    other = torch.randn_like(deep)
    one = torch.tensor([1, 1, 1])
    padded = sentences.clone()
    padded[:, :, 1:] = torch.randn_like(padded[:, :, 1:])  # beyond the valid sentence: ignored
    a = mirror_consistency_loss(deep, sentences, one, other, sentences, one)
    b = mirror_consistency_loss(deep, padded, one, other, padded, one)
    torch.testing.assert_close(a, b)
    # p and q exchanged: the same value.
    c = mirror_consistency_loss(other.flip(-1), sentences, one, deep.flip(-1), sentences, one)
    torch.testing.assert_close(a, c)


def test_its_gradient_moves_an_offset_map_back_towards_the_finding():
    """A feature map that peaks one cell right of where its mirror read says: one gradient step
    on the consistency term lowers it (the term is differentiable in the features)."""
    deep, sentences, n = _features(seed=1)
    features = torch.roll(deep, 1, dims=-1).requires_grad_(True)
    mirror = torch.roll(deep.flip(-1), 1, dims=-1)
    before = mirror_consistency_loss(features, sentences, n, mirror, sentences, n)
    before.backward()
    with torch.no_grad():
        after = mirror_consistency_loss(features - 0.5 * features.grad, sentences, n, mirror, sentences, n)
    assert float(after) < float(before.detach())


def test_shape_errors_name_the_problem():
    deep, sentences, n = _features()
    with pytest.raises(ValueError, match="shape"):
        mirror_consistency_loss(deep, sentences, n, deep[:, :, :4], sentences, n)
    with pytest.raises(ValueError, match="one report"):
        mirror_consistency_loss(deep, sentences[:2], n, deep, sentences, n)


def test_mirror_settings_are_checked_and_off_in_every_preset():
    for name in ("publication", "published", "small"):
        assert preset(name).loss.mirror_consistency == 0.0
    with pytest.raises(ConfigError, match="mirror_consistency"):
        AFLocConfig.from_dict({"base": "small", "loss": {"mirror_consistency": -1}})
    with pytest.raises(ConfigError, match="mirror_share"):
        AFLocConfig.from_dict({"base": "small", "loss": {"mirror_consistency": 1, "mirror_share": 0}})
    assert dataclasses.asdict(preset("small").loss)["mirror_share"] == 0.25


def test_the_collate_appends_the_first_reports_with_sides_exchanged():
    from transformers import AutoTokenizer

    from afloc_models.model import default_text_model_folder
    from afloc_models.tokenization import ReportTokenizer
    from afloc_training.data import ReportCollate, Sample

    tokenizer = ReportTokenizer(AutoTokenizer.from_pretrained(str(default_text_model_folder()), local_files_only=True), 32)
    samples = [
        Sample(image=torch.zeros(1, 8, 8), sentences=("right lower lobe opacity", "no left effusion"), index=0),
        Sample(image=torch.ones(1, 8, 8), sentences=("cardiomegaly",), index=1),
        Sample(image=torch.ones(1, 8, 8), sentences=("left apical pneumothorax",), index=2),
    ]
    plain = ReportCollate(tokenizer, 1, 8)(samples)
    batch = ReportCollate(tokenizer, 1, 8, mirror_rows=2)(samples)
    assert plain.mirror_rows == 0 and batch.mirror_rows == 2 and len(batch) == 3
    expected = tokenizer([["right lower lobe opacity", "no left effusion"], ["cardiomegaly"],
                          ["left apical pneumothorax"], ["left lower lobe opacity", "no right effusion"],
                          ["cardiomegaly"]])
    assert torch.equal(batch.tokens.input_ids, expected.input_ids)


@pytest.mark.slow
def test_training_with_the_term_logs_it_and_keeps_the_other_losses(tmp_path):
    from tests.tiny_runs import TINY_LOSS_RUN, logged_scalars, tiny_run

    result = tiny_run(tmp_path, "loss: {mirror_consistency: 1.0, mirror_share: 0.5}\n" + TINY_LOSS_RUN, max_steps=3, seed=0)
    assert result.steps == 3 and result.val_loss is not None
    names = ("loss", "loss_sentence", "loss_global", "loss_mirror")
    scalars = logged_scalars(tmp_path, names)
    mirror = scalars["loss_mirror"]
    assert len(mirror) == 3 and all(m >= 0 for m in mirror) and any(m > 0 for m in mirror)
    for t, s, g, m in zip(*(scalars[name] for name in names)):
        assert t == pytest.approx(s + g + m, rel=1e-4)  # small: no word level, weight 1
