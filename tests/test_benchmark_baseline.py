"""The benchmark's published-way step computes the published objective, equal to the vectorised
model in ``compat: published`` (the published units: [CLS] at both local levels, periods as words,
report over the token window)."""

from __future__ import annotations

import torch

import pytest

from afloc_models.config import AFLocConfig, preset
from afloc_models.model import AFLoc
from benchmarks.published_way import local_loss_text_loop, published_step_loss
from benchmarks.train_step import make_reports
from afloc_models.losses import local_loss


def test_published_way_equals_ours():
    torch.manual_seed(0)
    published = {"compat": "published", "loss": {"weight_word": 1.0, "local_attention": "words_first"}}
    model = AFLoc(AFLocConfig.from_dict(published, base=preset("small"))).eval()
    tokens = model.tokenize(make_reports(4, seed=1))
    assert (tokens.word_sentence == -2).any()  # periods between sentences are words
    images = torch.randn(4, 1, 64, 64)
    ours = model(images, tokens)
    theirs = published_step_loss(model, images, tokens)
    for name in ("word", "sentence", "global_", "total"):
        assert torch.allclose(getattr(ours, name), getattr(theirs, name), atol=1e-4), name
    with pytest.raises(ValueError, match="compat: published"):
        published_step_loss(AFLoc("small").eval(), images, tokens)


def test_text_loop_local_loss_equals_vectorised():
    gen = torch.Generator().manual_seed(2)
    img, txt = torch.randn(3, 8, 3, 3, generator=gen), torch.randn(3, 8, 5, generator=gen)
    lengths = torch.tensor([5, 2, 4])
    for a, b in zip(local_loss(img, txt, lengths, chunk_size=2), local_loss_text_loop(img, txt, lengths)):
        assert torch.allclose(a, b, atol=1e-5)


def test_cpu_precision_benchmark_times_both_precisions(tmp_path, capsys):
    """A tiny run of benchmarks/cpu_precision.py: both precisions timed, JSON written."""
    import json

    from benchmarks.cpu_precision import main

    out = tmp_path / "cpu.json"
    assert main(["--batch", "4", "--size", "64", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["step"]) == {"fp32", "bf16"} and result["step"]["bf16"]["n"] == 1
    assert result["fp32_over_bf16"] > 0 and isinstance(result["machine"]["native_bf16"], bool)
