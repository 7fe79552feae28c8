"""Import of the published AFLoc Lightning checkpoint, written the way the published training saves it.

The checkpoint comes from :mod:`tests.published_reference`: the published module tree (``afloc.``
prefix, torchvision ResNet-50 with an identity ``fc``, Conv2d embedders, BERT with its pooler and
the persisted ``position_ids`` of transformers 4.2) and Lightning's payload (an OmegaConf
``DictConfig`` in ``hyper_parameters`` and its class in ``hparams_type``, optimizer, scheduler,
callback and AMP states). Every tensor must land, the config must be read without ``--trust``
and without executing anything, and the imported model must carry the published settings.
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from afloc_models.errors import CheckpointError
from afloc_models.model import AFLoc, default_text_model_folder
from afloc_models.published import import_published, main, plain, read_lightning_checkpoint
import published_reference as ref

D = 64  # joint width; equals the toy BERT's hidden size, as Bio_ClinicalBERT's 768 equals the paper's D


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """A small BERT-family model folder named like the config's bert_type's last part."""
    folder = tmp_path_factory.mktemp("models") / "Tiny_ClinicalBERT"
    folder.mkdir()
    BertConfig(
        vocab_size=30522, hidden_size=D, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128
    ).save_pretrained(folder)
    minilm = default_text_model_folder()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def published(text_folder):
    torch.manual_seed(0)
    module = ref.Lightning(BertModel(BertConfig.from_pretrained(text_folder)), D)
    ref.calibrate_batchnorm(module.afloc)
    return module


@pytest.fixture(scope="module")
def ckpt(published, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "afloc.ckpt"
    ref.write_checkpoint(path, published, ref.config_dict(D, "someone/Tiny_ClinicalBERT"))
    return path


def test_every_published_tensor_lands_without_trust(published, ckpt, text_folder, tmp_path):
    model, ignored = import_published(ckpt, text_folder)
    assert ignored == ["afloc.text_encoder.model.embeddings.position_ids"]
    ours = model.state_dict()
    theirs = published.state_dict()
    assert len(theirs) == 322 + len(BertModel(BertConfig.from_pretrained(text_folder)).state_dict())
    for key, value in theirs.items():
        rest = key[len("afloc."):]
        if rest.startswith("text_encoder.model."):
            target = rest
        elif rest.startswith("img_encoder.model."):
            target = "image_encoder.backbone." + rest[len("img_encoder.model."):]
        else:
            target = "image_encoder." + rest[len("img_encoder."):]
        assert torch.equal(ours[target], value), key
    assert len(ours) == len(theirs)  # nothing in the model was left at its initial value
    # The published settings came with it, from the OmegaConf payload.
    cfg = model.config
    assert (cfg.compat, cfg.image.arch, cfg.image.working_size, cfg.embed_dim) == ("published", "resnet50", 299, D)
    assert (cfg.text.max_tokens, cfg.text.last_n_layers) == (97, 4)
    assert (cfg.loss.temp1, cfg.loss.temp2, cfg.loss.temp3) == (4.0, 5.0, 10.0)
    assert (cfg.optim.betas, cfg.optim.scheduler, cfg.optim.step_gamma, cfg.optim.lr) == ((0.5, 0.999), "step", 0.9, 2e-5)
    assert model.meta["published"]["epoch"] == 4 and model.meta["published"]["bert_type"] == "someone/Tiny_ClinicalBERT"
    # It runs at the published working resolution: 19x19 deep and 38x38 shallow grids from 224 px.
    feats = model.eval().encode_image(torch.randn(1, 3, 224, 224))
    assert feats.deep.shape == (1, D, 19, 19) and feats.shallow.shape == (1, D, 38, 38)
    # And it round-trips through our own format, compat included.
    again = AFLoc.from_pretrained(model.save_pretrained(tmp_path / "converted"))
    assert again.config.compat == "published" and again.config.optim.betas == (0.5, 0.999)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.items())


def test_config_is_read_without_omegaconf_and_without_running_code(ckpt, tmp_path):
    # In a fresh interpreter where importing omegaconf fails, the payload still reads.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["omegaconf"] = None
        from afloc_models.published import read_lightning_checkpoint
        blob = read_lightning_checkpoint({str(ckpt)!r})
        hp = blob["hyper_parameters"]
        assert hp["model"]["text"]["bert_type"] == "someone/Tiny_ClinicalBERT", hp
        assert hp["train"]["seeds"] == [1, 2] and hp["train"]["load_ckpt"] is None
        assert isinstance(hp["lightning"]["trainer"]["lr"], float)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]

    # A file that references anything else (here os.system through a reduce) is refused by name.
    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"afloc.img_encoder.global_embedder.weight": torch.zeros(2, 2)}, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match=r"references 'posix.system'.*--trust"):
        read_lightning_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


def test_plain_turns_omegaconf_objects_into_containers():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": {"b": [1, {"c": None}], "d": "x"}, "e": 1.5})
    from afloc_models.published import _RestrictedUnpickler
    import io

    data = pickle.dumps(cfg, protocol=2)
    assert plain(_RestrictedUnpickler(io.BytesIO(data)).load()) == {"a": {"b": [1, {"c": None}], "d": "x"}, "e": 1.5}


def test_text_folder_and_config_are_checked(published, text_folder, tmp_path):
    wide = tmp_path / "Wide_BERT"
    shutil.copytree(text_folder, wide)
    BertConfig(vocab_size=30522, hidden_size=2 * D, num_hidden_layers=4, num_attention_heads=4).save_pretrained(wide)
    path = tmp_path / "afloc.ckpt"
    ref.write_checkpoint(path, published, ref.config_dict(D, "someone/Tiny_ClinicalBERT"), position_ids=False)
    with pytest.raises(CheckpointError, match=rf"Wide_BERT' is {2 * D} wide but .*embedding_dim = {D}"):
        import_published(path, wide)
    with pytest.raises(CheckpointError, match="has no config.json"):
        import_published(path, tmp_path)
    cfg = ref.config_dict(D, "x/y")
    cfg["model"]["text"]["aggregate_method"] = "mean"
    cfg["transforms"]["norm"] = "imagenet"
    ref.write_checkpoint(path, published, cfg, position_ids=False)
    with pytest.raises(CheckpointError, match="aggregate_method = 'mean'.*transforms.norm = 'imagenet'"):
        import_published(path, text_folder)


def test_foreign_and_missing_keys_are_named(published, text_folder, tmp_path):
    def write(state, name):
        path = tmp_path / name
        torch.save({"state_dict": state, "hyper_parameters": ref.config_dict(D, "x/Tiny_ClinicalBERT")}, path)
        return path

    base = published.state_dict()
    extra = dict(base, **{"afloc.classifier.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="1 checkpoint keys belong to no AFLoc encoder.*afloc.classifier.weight"):
        import_published(write(extra, "a.ckpt"), text_folder)
    extra = dict(base, **{"afloc.img_encoder.local_f_embedder.weight": torch.zeros(D, 4096, 1, 1)})
    with pytest.raises(CheckpointError, match="afloc.img_encoder.local_f_embedder.weight"):
        import_published(write(extra, "b.ckpt"), text_folder)
    missing = dict(base)
    missing.pop("afloc.img_encoder.model.layer3.0.conv2.weight")
    with pytest.raises(CheckpointError, match="1 missing: image_encoder.backbone.layer3.0.conv2.weight"):
        import_published(write(missing, "c.ckpt"), text_folder)
    wrong = dict(base)
    wrong["afloc.img_encoder.local2_embedder.weight"] = torch.zeros(D, 256, 1, 1)
    with pytest.raises(CheckpointError, match="wrong shape: afloc.img_encoder.local2_embedder.weight"):
        import_published(write(wrong, "d.ckpt"), text_folder)


def test_unreadable_checkpoint_and_cli_errors(ckpt, text_folder, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        import_published(bad, text_folder)
    assert main(["--ckpt", str(tmp_path / "none.ckpt"), "--text-model", str(text_folder), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--ckpt", str(ckpt), "--text-model", str(text_folder), "--out", str(tmp_path / "ok")]) == 0
    assert "position_ids" in capsys.readouterr().out
    assert AFLoc.from_pretrained(tmp_path / "ok").config.compat == "published"


def test_server_store_converts_a_ckpt_once(ckpt, text_folder, tmp_path):
    """``--conf checkpoint afloc.ckpt --conf text_model DIR``: converted once into model/imported."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "afloc_label"))
    try:
        from lib.checkpoints import ModelStore
    finally:
        sys.path.pop(0)
    store = ModelStore(tmp_path / "model", ckpt, text_model=text_folder)
    folder = store.base_checkpoint
    assert folder.parent == tmp_path / "model" / "imported" and folder.name.startswith("afloc-")
    served = store.served()
    assert served is not None and served.source == "base" and served.version == "published:afloc.ckpt"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = ModelStore(tmp_path / "model", ckpt, text_model=text_folder)
    assert again.base_checkpoint == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert AFLoc.from_pretrained(folder).config.compat == "published"
    with pytest.raises(CheckpointError, match="--conf text_model"):
        ModelStore(tmp_path / "model2", ckpt)


@pytest.mark.slow
def test_a_real_server_serves_the_published_ckpt(published, ckpt, text_folder, start_afloc_server, afloc_infer,
                                                 tmp_path):
    """``monailabel start_server ... --conf checkpoint afloc.ckpt --conf text_model DIR``: the server
    converts the file, serves it in published mode, and its label equals a direct prediction."""
    import json
    import urllib.request

    import slicerio

    from afloc_models.inference import AFLocPredictor

    server = start_afloc_server(checkpoint=ckpt, conf={"text_model": str(text_folder)})
    with urllib.request.urlopen(f"{server.url}/info/", timeout=30) as reply:
        info = json.loads(reply.read())
    assert "published:afloc.ckpt" in json.dumps(info["models"]["afloc"])
    converted = next((server.model_dir / "imported").glob("afloc-*"))
    assert AFLoc.from_pretrained(converted).config.compat == "published"

    prompt = "right pleural effusion"
    reply = afloc_infer(server.url, image="phantom_00001", params={"prompt": prompt, "threshold": 0.3,
                                                                    "save_heatmap": False})
    assert reply.status == 200, reply.params
    path = tmp_path / "label.seg.nrrd"
    path.write_bytes(reply.label)
    label = slicerio.read_segmentation(str(path))["voxels"][:, :, 0].T
    expected = AFLocPredictor.load(converted, device="cpu").localize(
        server.studies / "phantom_00001.png", [prompt], threshold=0.3)[0].mask
    assert 0 < np.count_nonzero(expected) < expected.size  # a real, partial mask
    assert np.count_nonzero(label != expected.astype(np.uint8)) <= 1e-3 * label.size
