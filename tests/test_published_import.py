"""Import of the published AFLoc Lightning checkpoint: every tensor lands, nothing silently dropped."""

from __future__ import annotations

import shutil

import pytest
import torch
import torchvision
from transformers import BertConfig, BertModel

from afloc_models.errors import CheckpointError
from afloc_models.model import AFLoc, default_text_model_folder
from afloc_models.published import import_published, main

D = 64  # joint width; equals the toy BERT's hidden size, as Bio_ClinicalBERT's 768 equals the paper's D


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """A small BERT-family model folder: the architecture and tokenizer the importer needs."""
    folder = tmp_path_factory.mktemp("toy_bert")
    BertConfig(
        vocab_size=30522, hidden_size=D, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
    ).save_pretrained(folder)
    minilm = default_text_model_folder()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def published_state(text_folder):
    """A state dict with the published key layout and shapes, random values."""
    torch.manual_seed(0)
    state = {}
    for key, value in torchvision.models.resnet50().state_dict().items():
        state[f"model.img_encoder.model.{key}"] = torch.randn_like(value.float()).to(value.dtype)
    state["model.img_encoder.global_embedder.weight"] = torch.randn(D, 2048)
    state["model.img_encoder.global_embedder.bias"] = torch.randn(D)
    # Stored as Conv1d in some releases: [D, C, 1].
    state["model.img_encoder.local_embedder.weight"] = torch.randn(D, 1024, 1)
    state["model.img_encoder.local2_embedder.weight"] = torch.randn(D, 512, 1, 1)
    bert = BertModel(BertConfig.from_pretrained(text_folder))
    for key, value in bert.state_dict().items():
        state[f"model.text_encoder.model.{key}"] = torch.randn_like(value.float()).to(value.dtype)
    state["model.text_encoder.model.embeddings.position_ids"] = torch.arange(512)[None]
    return state


def _write(path, state):
    torch.save({"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "1.9.0", "state_dict": state}, path)
    return path


def test_every_published_tensor_lands(published_state, text_folder, tmp_path):
    ckpt = _write(tmp_path / "afloc.ckpt", published_state)
    model, ignored = import_published(ckpt, text_folder)
    assert sorted(ignored) == sorted(
        ["model.img_encoder.model.fc.weight", "model.img_encoder.model.fc.bias",
         "model.text_encoder.model.embeddings.position_ids"]
    )
    ours = model.state_dict()
    landed = 0
    for key, value in published_state.items():
        if key in ignored:
            continue
        if key.startswith("model.text_encoder.model."):
            target = "text_encoder.model." + key[len("model.text_encoder.model."):]
        elif key.split(".")[2] in ("global_embedder", "local_embedder", "local2_embedder"):
            target = "image_encoder." + key[len("model.img_encoder."):]
        else:
            target = "image_encoder.backbone." + key[len("model.img_encoder.model."):]
        assert torch.equal(ours[target].flatten(), value.flatten()), key
        landed += 1
    # Nothing in the model was left at its initial value: every key was covered.
    assert landed == len(ours)
    assert model.config.embed_dim == D and model.config.image.arch == "resnet50"
    # It runs, and it round-trips through our own format.
    feats = model.eval().encode_image(torch.randn(1, 1, 64, 64))
    assert feats.global_.shape == (1, D)
    out = model.save_pretrained(tmp_path / "converted")
    again = AFLoc.from_pretrained(out)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.items())


def test_foreign_and_missing_keys_are_named(published_state, text_folder, tmp_path):
    extra = dict(published_state)
    extra["model.img_encoder.attention_pool.weight"] = torch.zeros(3)
    extra["model.classifier.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="model.classifier.weight"):
        import_published(_write(tmp_path / "a.ckpt", extra), text_folder)
    extra.pop("model.classifier.weight")
    with pytest.raises(CheckpointError, match="1 unexpected: model.img_encoder.attention_pool.weight"):
        import_published(_write(tmp_path / "b.ckpt", extra), text_folder)
    missing = dict(published_state)
    missing.pop("model.img_encoder.model.layer3.0.conv2.weight")
    with pytest.raises(CheckpointError, match="1 missing: image_encoder.backbone.layer3.0.conv2.weight"):
        import_published(_write(tmp_path / "c.ckpt", missing), text_folder)
    wrong = dict(published_state)
    wrong["model.img_encoder.local2_embedder.weight"] = torch.zeros(D, 256, 1, 1)
    with pytest.raises(CheckpointError, match="wrong shape: model.img_encoder.local2_embedder.weight"):
        import_published(_write(tmp_path / "d.ckpt", wrong), text_folder)


def test_unreadable_checkpoint_and_cli_errors(text_folder, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        import_published(bad, text_folder)
    assert main(["--ckpt", str(tmp_path / "none.ckpt"), "--text-model", str(text_folder), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
