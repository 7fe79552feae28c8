"""afloc_models.compact: a checkpoint without its frozen text body, and back, bit for bit."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from afloc_models.compact import (
    BODY_PREFIX,
    COMPACT_WEIGHTS,
    EXPANDED_FROM,
    body_digest,
    expand_compact,
    export_compact,
)
from afloc_models.config import preset
from afloc_models.errors import CheckpointError
from afloc_models.model import AFLoc


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    torch.manual_seed(3)
    model = AFLoc(preset("small"))
    with torch.no_grad():  # trained-looking weights: not the initialisation a fresh model would redraw
        for name, tensor in model.state_dict().items():
            if not name.startswith(BODY_PREFIX) and tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor))
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "full", meta={"trained_on": "unit test"})


@pytest.fixture(scope="module")
def compact(full_checkpoint, tmp_path_factory):
    return export_compact(full_checkpoint, tmp_path_factory.mktemp("compact") / "model",
                          meta={"training": {"data": "recipe words"}})


def test_round_trip_is_bit_identical_and_leaves_the_body_out(full_checkpoint, compact, tmp_path):
    stored = load_file(str(compact / COMPACT_WEIGHTS))
    assert stored and not any(k.startswith(BODY_PREFIX) for k in stored)
    expanded = expand_compact(compact, tmp_path / "expanded")
    original, rebuilt = load_file(str(full_checkpoint / "model.safetensors")), load_file(str(expanded / "model.safetensors"))
    assert set(original) == set(rebuilt)
    assert all(torch.equal(original[k], rebuilt[k]) for k in original)
    meta = json.loads((expanded / "meta.json").read_text())
    assert meta["trained_on"] == "unit test" and meta["training"] == {"data": "recipe words"}
    assert meta[EXPANDED_FROM] == json.loads((compact / "meta.json").read_text())["compact"]["weights_sha256"]
    assert "compact" not in meta
    assert (compact / COMPACT_WEIGHTS).stat().st_size < (full_checkpoint / "model.safetensors").stat().st_size / 4


def test_damaged_weights_are_refused_by_name(compact, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(compact, damaged)
    data = bytearray((damaged / COMPACT_WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (damaged / COMPACT_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        expand_compact(damaged, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_another_text_body_is_refused(compact, tmp_path):
    other = tmp_path / "other-body"
    shutil.copytree(compact, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["compact"]["text_body_sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not the one .* was trained"):
        expand_compact(other, tmp_path / "out")


def test_incomplete_or_foreign_folders_are_refused(full_checkpoint, compact, tmp_path):
    with pytest.raises(CheckpointError, match="weights.safetensors' is missing"):
        expand_compact(full_checkpoint, tmp_path / "out")  # a full checkpoint is not a compact one
    partial = tmp_path / "partial"
    shutil.copytree(compact, partial)
    (partial / "meta.json").write_text(json.dumps({"format": "afloc-checkpoint/1"}))
    with pytest.raises(CheckpointError, match="not a compact checkpoint"):
        expand_compact(partial, tmp_path / "out")


def test_a_model_that_trained_its_text_body_cannot_be_compacted(tmp_path):
    config = preset("small")
    config = replace(config, optim=replace(config.optim, text_lr_scale=0.1))
    folder = AFLoc(config).save_pretrained(tmp_path / "full")
    with pytest.raises(CheckpointError, match="trained its text body"):
        export_compact(folder, tmp_path / "compact")


def test_a_changed_body_cannot_be_compacted(tmp_path):
    model = AFLoc(preset("small"))
    before = body_digest(model)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith(BODY_PREFIX)).add_(1e-3)
    assert body_digest(model) != before
    folder = model.save_pretrained(tmp_path / "full")
    with pytest.raises(CheckpointError, match="differs from the installed"):
        export_compact(folder, tmp_path / "compact")
