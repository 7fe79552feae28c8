"""On the same image and prompt, the imported checkpoint's map equals the published ``inference.py`` map.

The published side is :mod:`published_reference` (an independent re-implementation from the
published code, tiny BERT, random ResNet-50 weights with calibrated BatchNorm statistics); our
side is the imported checkpoint read by :class:`AFLocPredictor` from a file on disk, with its
automatic ``published`` recipe. Maps must agree to float tolerance (Pearson r > 0.999) with the
same hottest pixel, and the text embeddings must be the published ones.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, BertConfig, BertModel

import published_reference as ref
from afloc_models.inference.predictor import AFLocPredictor
from afloc_models.model import default_text_model_folder
from afloc_models.published import import_published

D = 64
PROMPTS = ["Small left pleural effusion", "right upper lobe opacity"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("equivalence")
    folder = root / "Tiny_ClinicalBERT"
    folder.mkdir()
    BertConfig(
        vocab_size=30522, hidden_size=D, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
    ).save_pretrained(folder)
    minilm = default_text_model_folder()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    torch.manual_seed(1)
    module = ref.Lightning(BertModel(BertConfig.from_pretrained(folder)), D)
    ref.calibrate_batchnorm(module.afloc)
    module.eval()
    ckpt = root / "afloc.ckpt"
    ref.write_checkpoint(ckpt, module, ref.config_dict(D, "emilyalsentzer/Tiny_ClinicalBERT"))
    model, _ = import_published(ckpt, folder)
    predictor = AFLocPredictor(model, device="cpu", cache_size=4)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    # A portrait 8-bit radiograph-like image whose long side is 2 x 224 (the reference's
    # area resize handles whole-number factors): a bright blob off-centre, smooth background.
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:448, 0:336]
    image = 60 + 40 * np.sin(xx / 37.0) + 120 * np.exp(-((yy - 300) ** 2 + (xx - 90) ** 2) / (2 * 30.0**2))
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    path = root / "cxr.png"
    Image.fromarray(image).save(path)
    return module.afloc, tokenizer, predictor, image, path


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


@pytest.mark.parametrize("prompt", PROMPTS)
def test_heatmap_equals_the_published_inference_map(setup, prompt):
    published, tokenizer, predictor, image, path = setup
    theirs = ref.heatmap_224(published, tokenizer, image, prompt)
    (ours,), box = predictor.square_heatmaps(path, [prompt])
    assert ours.shape == theirs.shape == (224, 224)
    assert (box.pad_left, box.resized_shape) == (28, (224, 168))
    r = _pearson(ours, theirs)
    print(f"published map equivalence: r={r:.7f}, max |diff| / max |map| = {np.abs(ours - theirs).max() / np.abs(theirs).max():.2e}")
    assert r > 0.999, r
    assert np.unravel_index(ours.argmax(), ours.shape) == np.unravel_index(theirs.argmax(), theirs.shape)
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
    # The user-facing heatmap is that map on the original grid, min-max normalised.
    result = predictor.localize(path, [prompt], probability=False)[0]
    assert result.heatmap.shape == image.shape and result.heatmap.min() == -1.0 and result.heatmap.max() == 1.0


def test_text_levels_are_the_published_units(setup):
    published, tokenizer, predictor, _, _ = setup
    model = predictor.model
    # A training report: sentences joined with ". ", so the periods are words.
    sentences = ["small left pleural effusion", "no pneumothorax", "heart size is normal"]
    tok = ref.tokenize(tokenizer, ". ".join(sentences))
    with torch.no_grad():
        theirs = ref.encode_text(published.text_encoder.model, tokenizer, tok["input_ids"], tok["attention_mask"],
                                 tok["token_type_ids"])
        ours = model.encode_text(model.tokenize([sentences]))
    n_w, n_s = theirs["n_words"][0], theirs["n_sentences"][0]
    assert (int(ours.n_words[0]), int(ours.n_sentences[0])) == (n_w, n_s) == (1 + 10 + 2, 1 + 3)
    torch.testing.assert_close(ours.words[0, :, :n_w], theirs["words"][0, :, :n_w], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.sentences[0, :, :n_s], theirs["sentences"][0, :, :n_s], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.report[0], theirs["report"][0], rtol=1e-4, atol=1e-4)
