"""The cells the sentence attention covers: ``loss.border_cells`` (the outer rings of the deep
grid, out of the attention in training and held at each map's interior minimum when serving) and
``image.sink_cells`` (learned cells the attention may use besides the image's own)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from afloc_models.attended_cells import border_mask, hold_border, interior, with_sink
from afloc_models.config import AFLocConfig, preset
from afloc_models.errors import ConfigError
from afloc_models.image_encoder import ImageFeatures
from afloc_models.inference import AFLocPredictor, HeatmapSettings
from afloc_models.model import AFLoc


def test_interior_and_hold_border_on_a_known_grid():
    maps = torch.arange(2 * 6 * 7, dtype=torch.float32).view(2, 6, 7)
    torch.testing.assert_close(interior(maps, 2), maps[:, 2:4, 2:5])
    assert interior(maps, 0) is maps
    held = hold_border(maps, 1)
    ring = border_mask(6, 7, 1)
    assert int(ring.sum()) == 6 * 7 - 4 * 5
    for p in range(2):
        low = maps[p, 1:5, 1:6].min()
        assert bool((held[p][ring] == low).all())
        torch.testing.assert_close(held[p][~ring], maps[p][~ring])
    # A peak on the border cannot survive; one inside is kept.
    spiky = torch.zeros(1, 6, 6)
    spiky[0, 0, 3] = 9.0
    spiky[0, 2, 2] = 1.0
    assert int(hold_border(spiky, 1).flatten().argmax()) == 2 * 6 + 2


def test_too_many_rings_or_a_negative_count_are_clear_errors():
    with pytest.raises(ConfigError, match="leaves no interior cell on a 4x6 feature grid; use at most 1"):
        interior(torch.zeros(1, 3, 4, 6), 2)
    with pytest.raises(ConfigError, match="loss.border_cells must be >= 0"):
        AFLocConfig.from_dict({"base": "small", "loss": {"border_cells": -1}})
    assert AFLocConfig.from_dict({"base": "small"}).loss.border_cells == 0


def _features(deep: torch.Tensor) -> ImageFeatures:
    b = deep.shape[0]
    return ImageFeatures(shallow=torch.randn(b, deep.shape[1], 8, 8), deep=deep, global_=torch.randn(b, deep.shape[1]))


def test_the_sentence_loss_never_reads_the_border_cells():
    cfg = preset("small")
    cfg.loss.border_cells = 2
    torch.manual_seed(0)
    model = AFLoc(cfg)
    text = model.encode_text(model.tokenize([["left lower opacity"], ["no pneumothorax", "heart is enlarged"]]))
    d = text.sentences.shape[1]
    deep = torch.randn(2, d, 8, 8, requires_grad=True)
    losses = model.compute_loss(_features(deep), text)
    losses.sentence.backward()
    ring = border_mask(8, 8, 2)
    grad = deep.grad.abs().sum(dim=(0, 1))
    assert float(grad[ring].max()) == 0.0 and float(grad[~ring].min()) > 0.0
    # Changing the border cells leaves the loss as it was; with every cell attended it changes.
    moved = deep.detach().clone()
    moved[:, :, ring] += 5.0 * torch.randn_like(moved[:, :, ring])
    torch.testing.assert_close(model.compute_loss(_features(moved), text).sentence, losses.sentence.detach())
    model.config.loss.border_cells = 0
    assert not torch.allclose(model.compute_loss(_features(moved), text).sentence, losses.sentence.detach())


@pytest.mark.parametrize("mirror", ["on", "off"])
def test_served_maps_hold_the_rings_at_the_interior_minimum(mirror):
    torch.manual_seed(3)
    plain = AFLoc("small")
    held = copy.deepcopy(plain)  # the same weights; the predictor reads the rings from the config
    held.config.loss.border_cells = 2
    rng = np.random.default_rng(0)
    image = rng.random((256, 256)).astype(np.float32)
    prompts = ["right lower lobe nodule", "cardiomegaly"]
    settings = HeatmapSettings(mirror=mirror, sigma_cells=0.0, refine="off")  # the hold itself, unrefined
    maps0, _ = AFLocPredictor(plain, device="cpu", settings=settings).square_heatmaps(image, prompts, "deep")
    maps2, _ = AFLocPredictor(held, device="cpu", settings=settings).square_heatmaps(image, prompts, "deep")
    cell = 8  # `small` reads its deep grid at output stride 8
    edge = int(1.5 * cell)  # pixels interpolated between held cells only
    for m0, m2 in zip(maps0, maps2):
        frame = np.ones_like(m2, dtype=bool)
        frame[edge:-edge, edge:-edge] = False
        assert np.allclose(m2[frame], m2.min())
        centre = slice(4 * cell, -4 * cell)
        np.testing.assert_allclose(m2[centre, centre], m0[centre, centre], rtol=1e-5, atol=1e-5)
        assert m2.min() >= m0.min() - 1e-6


@pytest.mark.slow
def test_a_training_run_attends_the_interior_only_and_serves_held_maps(tmp_path):
    import math

    from tests.tiny_runs import TINY_LOSS_RUN, logged_scalars, tiny_run

    # The attention entropy reads the same cells as the sentence loss: at most log(4 x 4) nats on
    # the 8 x 8 grid of a 64 px crop with two rings left out, against log(64) with every cell.
    result = tiny_run(tmp_path, "loss: {border_cells: 2, attention_entropy: 0.1}\n" + TINY_LOSS_RUN, max_steps=3, seed=0)
    assert result.steps == 3
    entropy = logged_scalars(tmp_path, ("loss_entropy",))["loss_entropy"]
    assert len(entropy) == 3 and all(0 < e <= math.log(16) + 1e-4 for e in entropy)
    predictor = AFLocPredictor.load(tmp_path / "ckpt", device="cpu", settings=HeatmapSettings(sigma_cells=0.0, refine="off"))
    assert predictor.config.loss.border_cells == 2
    maps, _ = predictor.square_heatmaps(np.random.default_rng(1).random((64, 64)).astype(np.float32),
                                        "left pleural effusion", "deep")
    edge = 12  # 1.5 cells at output stride 8: pixels interpolated between held cells only
    assert np.allclose(maps[0, :edge], maps[0].min()) and np.allclose(maps[0, :, -edge:], maps[0].min())


def test_sink_cells_join_the_sentence_attention_and_learn():
    cfg = preset("small")
    cfg.image.sink_cells = 2
    torch.manual_seed(0)
    model = AFLoc(cfg)
    sink = model.image_encoder.sink
    assert tuple(sink.shape) == (cfg.embed_dim, 2)
    text = model.encode_text(model.tokenize([["left lower opacity"], ["no pneumothorax", "heart is enlarged"]]))
    deep = torch.randn(2, cfg.embed_dim, 6, 6)
    regions = with_sink(deep, sink)
    assert tuple(regions.shape) == (2, cfg.embed_dim, 38, 1)
    torch.testing.assert_close(regions[1, :, 36:, 0], sink.detach())
    losses = model.compute_loss(_features(deep), text)
    losses.sentence.backward()
    assert float(sink.grad.abs().sum()) > 0
    # A sink aligned with a sentence draws that sentence's attention and changes the loss.
    with torch.no_grad():
        sink[:, 0] = 10.0 * text.sentences[0, :, 0]
    assert not torch.allclose(model.compute_loss(_features(deep), text).sentence, losses.sentence.detach())
    # Without sink cells the encoder has no such parameter (checkpoints stay as they were).
    assert AFLoc(preset("small")).image_encoder.sink is None
    with pytest.raises(ConfigError, match="image.sink_cells must be >= 0"):
        AFLoc(AFLocConfig.from_dict({"base": "small", "image": {"sink_cells": -1}}))
