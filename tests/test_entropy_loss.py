"""``loss.attention_entropy``: the mean entropy of each sentence's attention over its image's regions."""

from __future__ import annotations

import math

import pytest
import torch

from afloc_models.config import AFLocConfig
from afloc_models.map_regularizers import attention_entropy
from afloc_models.errors import ConfigError


def test_zero_for_one_cell_and_log_n_for_a_uniform_attention():
    d, h, w = 4, 3, 5
    sentences = torch.zeros(1, d, 1)
    sentences[0, 0, 0] = 1.0
    flat = torch.zeros(1, d, h, w)  # every region scores 0: uniform attention
    assert float(attention_entropy(flat, sentences, torch.tensor([1]))) == pytest.approx(math.log(h * w), rel=1e-5)
    peaked = torch.zeros(1, d, h, w)
    peaked[0, 0, 1, 2] = 200.0  # one region matches by far
    assert float(attention_entropy(peaked, sentences, torch.tensor([1]))) == pytest.approx(0.0, abs=1e-4)


def test_only_valid_sentences_count():
    g = torch.Generator().manual_seed(0)
    deep, sentences = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 3, generator=g)
    one = attention_entropy(deep, sentences[:, :, :1], torch.tensor([1, 1]))
    padded = attention_entropy(deep, sentences, torch.tensor([1, 1]))
    torch.testing.assert_close(one, padded)
    with pytest.raises(ValueError, match="one report per image"):
        attention_entropy(deep, sentences[:1], torch.tensor([1]))


def test_its_gradient_sharpens_the_attention():
    g = torch.Generator().manual_seed(1)
    deep = (0.3 * torch.randn(2, 8, 5, 5, generator=g)).requires_grad_(True)
    sentences, n = torch.randn(2, 8, 2, generator=g), torch.tensor([2, 2])
    before = attention_entropy(deep, sentences, n)
    before.backward()
    with torch.no_grad():
        after = attention_entropy(deep - 0.5 * deep.grad, sentences, n)
    assert float(after) < float(before)


def test_the_weight_is_validated():
    with pytest.raises(ConfigError, match="attention_entropy"):
        AFLocConfig.from_dict({"base": "small", "loss": {"attention_entropy": -0.1}})
    assert AFLocConfig.from_dict({"base": "small"}).loss.attention_entropy == 0.0


@pytest.mark.slow
def test_training_with_the_term_logs_it_and_adds_it_to_the_total(tmp_path):
    from tests.tiny_runs import TINY_LOSS_RUN, logged_scalars, tiny_run

    result = tiny_run(
        tmp_path,
        "loss: {attention_entropy: 0.5}\n"
        + TINY_LOSS_RUN,
        max_steps=3, seed=0,
    )
    assert result.steps == 3 and result.val_loss is not None
    names = ("loss", "loss_sentence", "loss_global", "loss_entropy")
    scalars = logged_scalars(tmp_path, names)
    cells = 8 * 8  # a 64 px crop at output stride 8
    assert len(scalars["loss_entropy"]) == 3 and all(0 < e <= math.log(cells) + 1e-4 for e in scalars["loss_entropy"])
    for t, s, g, e in zip(*(scalars[name] for name in names)):
        assert t == pytest.approx(s + g + 0.5 * e, rel=1e-4)
