"""``compat: project`` and ``compat: published`` each do what they promise, on one fixed tiny model.

The same weights (the ``small`` preset, seed 0) run in both modes; each mode's text levels,
image grid, preprocessing and heatmap are checked against their definitions written out here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from afloc_models.config import AFLocConfig, preset
from afloc_models.imaging import Letterbox, letterbox, letterbox_published
from afloc_models.inference.heatmap import HeatmapSettings, guided_filter
from afloc_models.inference.predictor import AFLocPredictor
from afloc_models.model import AFLoc

REPORT = ["small left pleural effusion", "no pneumothorax"]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    project = AFLoc("small").eval()
    published = AFLoc(AFLocConfig.from_dict({"compat": "published", "image": {"working_size": 160}}, base=preset("small")))
    published.load_state_dict(project.state_dict())
    return project, published.eval()


def test_text_levels(models):
    project, published = models
    tokens_p = project.tokenize([REPORT])
    tokens_q = published.tokenize([REPORT])
    with torch.no_grad():
        p = project.encode_text(tokens_p)
        q = published.encode_text(tokens_q)
        emb_p = project.text_encoder.token_embeddings(tokens_p)[0]
        emb_q = published.text_encoder.token_embeddings(tokens_q)[0]
    # project: 6 words, 2 sentences, report = mean of the words, no [CLS] anywhere.
    assert (int(p.n_words[0]), int(p.n_sentences[0])) == (6, 2)
    assert tokens_p.words[0] == "small left pleural effusion no pneumothorax".split()
    torch.testing.assert_close(p.report[0], project.text_encoder.report_proj(
        torch.stack([emb_p[tokens_p.token_word[0] == w].sum(0) for w in range(6)]).mean(0)), rtol=1e-5, atol=1e-5)
    # published: [CLS] + 6 words + the period between the sentences; [CLS] + 2 sentences;
    # report = every token from [CLS] to [SEP] summed over the 64-token window of this preset.
    assert (int(q.n_words[0]), int(q.n_sentences[0])) == (1 + 6 + 1, 1 + 2)
    assert tokens_q.words[0] == "small left pleural effusion . no pneumothorax".split()
    cls = published.text_encoder.word_proj(emb_q[0])
    torch.testing.assert_close(q.words[0, :, 0], cls, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.sentences[0, :, 0], published.text_encoder.sentence_proj(emb_q[0]), rtol=1e-5, atol=1e-5)
    n_tokens = int(tokens_q.attention_mask[0].sum())
    torch.testing.assert_close(
        q.report[0], published.text_encoder.report_proj(emb_q[:n_tokens].sum(0) / 64), rtol=1e-5, atol=1e-5
    )
    # The period is a word unit but in neither sentence: sentence 1 is the mean of its own words.
    words = torch.stack([emb_q[tokens_q.token_word[0] == w].sum(0) for w in range(7)])
    torch.testing.assert_close(
        q.sentences[0, :, 1], published.text_encoder.sentence_proj(words[:4].mean(0)), rtol=1e-5, atol=1e-5
    )


def test_image_grid(models):
    project, published = models
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        p = project.encode_image(x)
        q = published.encode_image(x)
        up = project.encode_image(F.interpolate(x, size=(160, 160), mode="bilinear", align_corners=True))
    assert p.deep.shape[-1] == 16 and q.deep.shape[-1] == 20  # stride 8 at 128 vs at the 160 working size
    torch.testing.assert_close(q.deep, up.deep, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.global_, up.global_, rtol=1e-5, atol=1e-5)


def test_preprocessing_and_heatmap(models):
    project, published = models
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 230), dtype=np.uint8)
    pp = AFLocPredictor(project, device="cpu", input_size=128, settings=HeatmapSettings(mirror="off", refine="off"))
    pm = AFLocPredictor(project, device="cpu", input_size=128, settings=HeatmapSettings(mirror="on", refine="off"))
    pd = AFLocPredictor(project, device="cpu", input_size=128)  # auto: sided prompts mirrored, guided
    pq = AFLocPredictor(published, device="cpu", input_size=128)
    assert (pp.settings.recipe, pq.settings.recipe) == ("project", "published")
    assert (pd.settings.mirror, pd.settings.refine, pq.settings.mirror, pq.settings.refine) == (
        "sides", "guided", "off", "off")
    # Preprocessing: Pillow letterbox with a rounded short side vs 8-bit area letterbox, floored.
    sq_p, box_p = letterbox(image.astype(np.float32) / 255, 128)
    sq_q, box_q = letterbox_published(image.astype(np.float32) / 255, 128)
    assert box_p.resized_shape == (128, 98) and box_q.resized_shape == (128, 98)
    assert Letterbox.for_shape((300, 231), 128).resized_shape == (128, 99)
    assert Letterbox.for_shape((300, 231), 128, floor=True).resized_shape == (128, 98)
    assert np.allclose(sq_q * 255, np.round(sq_q * 255)) and not np.allclose(sq_p * 255, np.round(sq_p * 255))
    # Heatmaps: each recipe from its own definition.
    prompt = "left pleural effusion"
    (map_p,), _ = pp.square_heatmaps(image, [prompt])
    (map_q,), _ = pq.square_heatmaps(image, [prompt])
    with torch.no_grad():
        x_p = (torch.from_numpy(sq_p)[None, None] - 0.5) / 0.5
        x_q = (torch.from_numpy(sq_q)[None, None] - 0.5) / 0.5
        deep_p = project.encode_image(x_p).deep[0]
        deep_q = published.encode_image(x_q).deep[0]
        t_p = project.encode_text(project.tokenize([prompt]))
        t_q = published.encode_text(published.tokenize([prompt]))
    grid_p = torch.einsum("dhw,d->hw", deep_p, t_p.sentences[0, :, 0]).numpy()  # sentence embedding
    grid_q = torch.einsum("dhw,d->hw", deep_q, t_q.report[0]).numpy()  # report embedding
    up_p = F.interpolate(torch.from_numpy(grid_p)[None, None], size=(128, 128), mode="bilinear")[0, 0].numpy()
    expect_p = ndimage.gaussian_filter(up_p, sigma=0.5 * 128 / 16, mode="nearest", truncate=3.0)
    smooth_q = ndimage.gaussian_filter(grid_q, sigma=1.5)
    expect_q = F.interpolate(torch.from_numpy(smooth_q)[None, None], size=(128, 128), mode="bilinear")[0, 0].numpy()
    np.testing.assert_allclose(map_p, expect_p, rtol=1e-4, atol=1e-4 * np.abs(expect_p).max())
    np.testing.assert_allclose(map_q, expect_q, rtol=1e-4, atol=1e-4 * np.abs(expect_q).max())
    # Mirror averaging: the grid map averaged with the mirrored square's grid map for the prompt
    # with its side exchanged, mirrored back, then upsampled and smoothed as before.
    (map_m,), _ = pm.square_heatmaps(image, [prompt])
    with torch.no_grad():
        deep_m = project.encode_image(x_p.flip(-1)).deep[0]
        t_m = project.encode_text(project.tokenize(["right pleural effusion"]))
    grid_m = torch.einsum("dhw,d->hw", deep_m, t_m.sentences[0, :, 0]).numpy()[:, ::-1]
    up_m = F.interpolate(torch.from_numpy((grid_p + grid_m) / 2)[None, None], size=(128, 128), mode="bilinear")[0, 0].numpy()
    expect_m = ndimage.gaussian_filter(up_m, sigma=0.5 * 128 / 16, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(map_m, expect_m, rtol=1e-4, atol=1e-4 * np.abs(expect_m).max())
    # The project default: a prompt with a side is mirror averaged as above, then the gray input
    # square guides it within one deep cell (128 px / 16 cells = 8 px; eps 1e-3).
    (map_d,), _ = pd.square_heatmaps(image, [prompt])
    expect_d = guided_filter(sq_p, expect_m[None], 8, 1e-3)[0]
    np.testing.assert_allclose(map_d, expect_d, rtol=1e-4, atol=1e-4 * np.abs(expect_d).max())


def test_training_sentences_published_vs_project():
    from afloc_training.data import PairDataset

    report = ("small left pleural effusion", "stable", "no pneumothorax", "heart size is normal", "lungs clear")
    project = PairDataset([], preset("publication").data, channels=1, train=True, seed=3)
    assert project.sentences(report, 0) == report  # every sentence, in order
    small = PairDataset([], preset("small").data, channels=1, train=True, seed=3)
    assert small.sentences(report, 0) == tuple(s for s in report if s != "no pneumothorax")  # drop_negated
    published = PairDataset([], preset("published").data, channels=1, train=True, seed=3)
    seen = set()
    for epoch in range(12):
        published.set_epoch(epoch)
        picked = published.sentences(report, 5)
        assert picked == published.sentences(report, 5)  # reproducible from (seed, epoch, index)
        assert 1 <= len(picked) <= 3 and "stable" not in picked  # 1 .. n-1 of the 4 long-enough sentences
        assert len(set(picked)) == len(picked) and set(picked) <= set(report)
        seen.add(picked)
    assert len(seen) > 3  # subsets and orders vary with the epoch
    assert published.sentences(("stable",), 0) == ("stable",)  # nothing long enough: kept
    published.train = False
    assert published.sentences(report, 5) == tuple(s for s in report if s != "stable")
