"""The trainer and ``afloc-train``: determinism, checkpoints, resume (also after SIGKILL), errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from afloc_models.errors import AFLocError, CheckpointError, ConfigError
from afloc_models.model import AFLoc
from afloc_training.phantoms import write_phantom_datastore
from afloc_training.trainer import STATE_FILE, _budget_warnings, lr_factor, read_train_state, train

REPO = Path(__file__).resolve().parents[1]
# The shared folder of real radiographs lies beside the repository on the team's machines only.
CXR_NOTES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-notes" / "pairs.csv"
# 12 phantoms -> 10 training pairs (2 validate) -> 2 steps per epoch at batch 4.
TINY = """\
base: small
embed_dim: 32
optim: {{batch_size: 4, warmup_steps: 2, lr: 0.001, text_lr_scale: {text_lr_scale}}}
data: {{resize: 72, crop: 64, num_workers: 0, val_fraction: 0.2}}
"""


def _config(folder: Path, text_lr_scale: float = 0.1) -> Path:
    path = folder / f"tiny_{text_lr_scale}.yaml"
    path.write_text(TINY.format(text_lr_scale=text_lr_scale))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer")
    write_phantom_datastore(root / "data", 12, seed=0, size=64)
    # One image is corrupt: found at load time, skipped and reported, training goes on.
    (root / "data" / "phantom_00004.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


@pytest.fixture(scope="module")
def reference(workspace):
    """An uninterrupted 3-epoch run (6 steps) that other tests compare against."""
    result = train(
        workspace / "data", workspace / "ref", config=_config(workspace), epochs=3, seed=0, save_every=0,
        progress=False, log_dir=workspace / "tb",
    )
    return result


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return AFLoc.from_pretrained(folder).state_dict()


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_lr_schedule_warms_up_then_follows_a_cosine():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(80, 100, 10, "constant") == 1.0
    # A time budget ends the cosine at the deadline when that comes before the planned steps.
    assert lr_factor(20, 100, 10, "cosine", time_fraction=0.5) == pytest.approx(0.5)
    assert lr_factor(20, 100, 10, "cosine", time_fraction=1.0) == pytest.approx(0.0)
    assert lr_factor(90, 100, 10, "cosine", time_fraction=0.1) == lr_factor(90, 100, 10, "cosine")


@pytest.mark.slow
def test_run_writes_a_loadable_checkpoint_logs_and_history(reference, workspace):
    assert reference.steps == 6 and reference.epochs == 3 and reference.stopped == "completed"
    assert reference.train_pairs == 10 and reference.val_pairs == 2
    assert len(reference.history) == 3 and all(h["val_loss"] is not None for h in reference.history)
    assert reference.unreadable == [str(workspace / "data" / "phantom_00004.png")]
    assert reference.skipped["unreadable"] == 1
    # Throughput over the steps, and the share spent waiting for the loader (benchmarks read these).
    assert reference.images_per_s is not None and reference.images_per_s > 0
    assert reference.data_wait_fraction is not None and 0.0 <= reference.data_wait_fraction < 1.0
    # It ran its planned epochs, not out of time: nothing to warn about.
    assert reference.warnings == []

    model = AFLoc.from_pretrained(reference.checkpoint)
    assert model.config.embed_dim == 32
    assert model.meta["training"]["step"] == 6 and model.meta["training"]["epoch"] == 3
    # What the model learned from, in words (the server's /info shows it): phantoms are marked.
    assert model.meta["trained_on"] == (
        "synthetic phantoms (afloc-phantoms, 12 image-report pairs): not for clinical images"
    )
    state = read_train_state(reference.checkpoint)
    assert state["step"] == 6 and state["batch_in_epoch"] == 0 and len(state["history"]) == 3
    assert list((workspace / "tb").glob("events.out.tfevents.*"))

    # A from-scratch model must move: weights differ from a fresh init with the same seed.
    torch.manual_seed(0)
    fresh = AFLoc(model.config).state_dict()
    key = "image_encoder.global_embedder.weight"
    assert not torch.equal(fresh[key], model.state_dict()[key])


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_differs(reference, workspace):
    again = train(workspace / "data", workspace / "again", config=_config(workspace), epochs=3, seed=0,
                  save_every=0, progress=False, log_dir=workspace / "tb2")
    _assert_same_weights(reference.checkpoint, again.checkpoint)
    other = train(workspace / "data", workspace / "seed1", config=_config(workspace), max_steps=1, seed=1,
                  progress=False, log_dir=workspace / "tb3")
    a, b = _weights(reference.checkpoint), _weights(other.checkpoint)
    assert not torch.equal(a["image_encoder.local_embedder.weight"], b["image_encoder.local_embedder.weight"])


@pytest.mark.slow
def test_stop_check_then_resume_mid_epoch_matches_uninterrupted_run(reference, workspace):
    out = workspace / "stopped"
    calls = []

    def stop_after_first_step() -> bool:
        calls.append(1)
        return True

    first = train(workspace / "data", out, config=_config(workspace), epochs=3, seed=0, save_every=0,
                  progress=False, stop_check=stop_after_first_step, log_dir=workspace / "tb4")
    assert first.stopped == "stop_check" and first.steps == 1 and len(calls) == 1
    state = read_train_state(out)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (1, 0, 1)
    AFLoc.from_pretrained(out)  # loadable while the run is unfinished

    rest = train(workspace / "data", out, epochs=3, seed=0, save_every=0, resume=True, progress=False,
                 log_dir=workspace / "tb4")
    assert rest.resumed_from_step == 1 and rest.steps == 6 and rest.stopped == "completed"
    assert [h["step"] for h in rest.history] == [2, 4, 6]
    _assert_same_weights(reference.checkpoint, out)

    # Resuming a finished run is a no-op; more epochs extend it.
    assert train(workspace / "data", out, epochs=3, resume=True, progress=False, log_dir=workspace / "tb4").steps == 6


def test_output_folder_guards_and_bad_states(workspace, tmp_path):
    data = workspace / "data"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something.txt").write_text("x")
    with pytest.raises(AFLocError, match="not empty"):
        train(data, busy, config=_config(tmp_path), max_steps=1, progress=False)

    with pytest.raises(CheckpointError, match="no AFLoc checkpoint"):
        train(data, busy, resume=True, max_steps=1, progress=False)
    assert (busy / "something.txt").is_file()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("hello: world\n")
    with pytest.raises(CheckpointError, match="no training state"):
        train(data, foreign, resume=True, max_steps=1, progress=False)

    (foreign / STATE_FILE).write_bytes(b"definitely not a torch file")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        train(data, foreign, resume=True, max_steps=1, progress=False)

    torch.save({"format": "something-else/9"}, foreign / STATE_FILE)
    with pytest.raises(CheckpointError, match="not an AFLoc training state"):
        read_train_state(foreign)

    with pytest.raises(ConfigError, match="max_steps"):
        train(data, tmp_path / "new", max_steps=0)


@pytest.mark.slow
def test_init_from_checks_architecture_and_resume_checks_config(reference, workspace, tmp_path):
    other_arch = tmp_path / "wide.yaml"
    other_arch.write_text("base: small\nembed_dim: 64\n")
    with pytest.raises(CheckpointError, match="another architecture"):
        train(workspace / "data", tmp_path / "ft", config=other_arch, init_from=reference.checkpoint,
              max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="another config"):
        train(workspace / "data", reference.checkpoint, config="small", resume=True, max_steps=7, progress=False)


def test_frozen_text_body_is_read_once_per_report(workspace, monkeypatch):
    """With the body frozen, epochs 2+ take token embeddings from the cache, and train the same."""
    import afloc_training.trainer as trainer_module
    from afloc_models.text_encoder import TokenCache

    caches: list[TokenCache] = []
    original_init = TokenCache.__init__

    def recording_init(self, max_bytes, batched=False):
        original_init(self, max_bytes, batched=batched)
        caches.append(self)

    monkeypatch.setattr(TokenCache, "__init__", recording_init)
    frozen = _config(workspace, text_lr_scale=0.0)
    cached = train(workspace / "data", workspace / "frozen_cached", config=frozen, epochs=3, seed=0, save_every=0,
                   progress=False, log_dir=workspace / "tb_fc")
    assert len(caches) == 1 and caches[0].bytes > 0
    assert not caches[0].batched  # on a CPU, new reports are encoded one at a time (exact)
    # 12 reports (training + validation) over 3 epochs: each misses once at most, then hits.
    assert caches[0].misses <= 12 and caches[0].hits > caches[0].misses
    monkeypatch.setattr(trainer_module, "TOKEN_CACHE_BYTES", 0)
    uncached = train(workspace / "data", workspace / "frozen_uncached", config=frozen, epochs=3, seed=0,
                     save_every=0, progress=False, log_dir=workspace / "tb_fu")
    assert caches[1].bytes == 0 and caches[1].hits == 0
    # Exact, by construction: every report's body embeddings are computed alone and unpadded
    # (TokenCache.lookup), so cached and recomputed rows are the same bits whatever the batch
    # composition or CPU; a tolerance would only hide where they drift apart.
    a, b = _weights(cached.checkpoint), _weights(uncached.checkpoint)
    assert a.keys() == b.keys()
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    assert differing == [], f"cached and uncached runs differ at {differing[:5]}"


@pytest.mark.slow
def test_init_from_fine_tunes_a_checkpoint(reference, workspace):
    frozen_text = _config(workspace, text_lr_scale=0.0)
    result = train(workspace / "data", workspace / "ft", config=frozen_text, init_from=reference.checkpoint,
                   max_steps=1, progress=False, log_dir=workspace / "tb5")
    tuned = AFLoc.from_pretrained(result.checkpoint)
    base = _weights(reference.checkpoint)
    assert tuned.meta["init_from"] == str(reference.checkpoint)
    assert tuned.meta["trained_on"].endswith(
        "; fine-tuned from a model trained on synthetic phantoms (afloc-phantoms, 12 image-report pairs): "
        "not for clinical images"
    )
    given = train(workspace / "data", workspace / "named", config=frozen_text, max_steps=1, progress=False,
                  log_dir=workspace / "tb6", trained_on="demo:  synthetic phantoms, not for clinical images")
    assert AFLoc.from_pretrained(given.checkpoint).meta["trained_on"] == "demo: synthetic phantoms, not for clinical images"
    # Frozen text body kept exactly; the image encoder moved from the checkpoint's weights.
    key = "text_encoder.model.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(tuned.state_dict()[key], base[key])
    key = "image_encoder.global_embedder.weight"
    assert not torch.equal(tuned.state_dict()[key], base[key])
    assert (tuned.state_dict()[key] - base[key]).abs().max() < 0.05  # one small step, not a re-init


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "afloc_training.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=300, **kwargs,
    )


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = _cli("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"afloc-train: error: training data '{tmp_path / 'missing'}' does not exist"
    ]
    bad_config = _cli("--data", str(tmp_path), "--out", str(tmp_path / "o"), "--config", "huge")
    assert bad_config.returncode == 1 and "Traceback" not in bad_config.stderr
    usage = _cli("--data", "x", "--out", "y", "--epochs", "0")
    assert usage.returncode == 2 and "--epochs" in usage.stderr


def test_a_time_budget_that_ends_before_the_recipe_s_steps_is_warned_about(workspace, tmp_path):
    """``optim.min_useful_steps``: a run stopped by --max-minutes before the steps the recipe's maps
    were measured to need says so at the end (a slow or shared CPU trains fewer steps in the same
    minutes); a run that reaches them, or ends on its step budget, does not."""
    from afloc_models.config import preset

    assert preset("small").optim.min_useful_steps == 1300
    assert _budget_warnings("completed", 10, 1300) == [] and _budget_warnings("max_minutes", 1300, 1300) == []
    assert _budget_warnings("max_minutes", 5, 0) == []
    config = tmp_path / "slow.yaml"
    config.write_text(TINY.format(text_lr_scale=0.0).replace("text_lr_scale: 0.0}", "text_lr_scale: 0.0, min_useful_steps: 500}"))
    run = _cli("--data", str(workspace / "data"), "--out", str(tmp_path / "ckpt"), "--config", str(config),
               "--max-minutes", "0.002", "--no-progress")
    assert run.returncode == 0, run.stderr
    warning = [line for line in run.stdout.splitlines() if line.startswith("afloc-train: warning:")]
    assert len(warning) == 1, run.stdout
    assert "stopped training at step" in warning[0] and "500 steps" in warning[0] and "--max-steps 500" in warning[0]
    assert "max_minutes after" in run.stdout
    assert AFLoc.from_pretrained(tmp_path / "ckpt").meta["training"]["step"] < 500  # saved all the same


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_reaches_the_same_weights(reference, workspace):
    out = workspace / "killed"
    args = ["--data", str(workspace / "data"), "--out", str(out), "--config", str(_config(workspace)),
            "--epochs", "3", "--seed", "0", "--save-every", "1", "--no-progress",
            "--log-dir", str(workspace / "tb6")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "afloc_training.cli", *args], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / STATE_FILE).exists():
            assert process.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    killed_at = read_train_state(out)["step"]
    assert killed_at < 6, "the run finished before it could be killed"

    resumed = _cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "completed after 6 steps" in resumed.stdout
    state = read_train_state(out)
    assert state["step"] == 6 and state["epoch"] == 3
    _assert_same_weights(reference.checkpoint, out)


@pytest.mark.skipif(not CXR_NOTES.is_file(), reason="cxr-notes data set not present")
def test_real_data_smoke_few_steps(tmp_path):
    result = train(CXR_NOTES, tmp_path / "cxr", config=_config(tmp_path, text_lr_scale=0.0), max_steps=2,
                   progress=False, log_dir=tmp_path / "tb")
    assert result.steps == 2 and result.train_pairs + result.val_pairs == 158
    assert result.train_loss is not None and torch.isfinite(torch.tensor(result.train_loss))
    AFLoc.from_pretrained(result.checkpoint)


@pytest.mark.slow
def test_sync_free_step_trains_and_skips_exactly_like_the_host_step(workspace, monkeypatch, caplog):
    """The CUDA step (statistics on the device, fused Adam skipping non-finite steps through
    ``found_inf``) forced onto the CPU: same weights as the host-checked step, a NaN step included."""
    import afloc_training.trainer as trainer_module

    original = AFLoc.compute_loss
    calls = {"n": 0}

    def nan_on_third_call(self, image, text):
        losses = original(self, image, text)
        if torch.is_grad_enabled():  # training steps only, not validation
            calls["n"] += 1
            if calls["n"] == 3:
                losses.total = losses.total * float("nan")
        return losses

    monkeypatch.setattr(AFLoc, "compute_loss", nan_on_third_call)
    results = {}
    for deferred in (False, True):
        calls["n"] = 0
        monkeypatch.setattr(trainer_module, "_defers_stats", lambda device, d=deferred: d)
        caplog.clear()
        results[deferred] = train(workspace / "data", workspace / f"deferred_{deferred}", config=_config(workspace),
                                  epochs=2, seed=0, save_every=0, progress=False, log_dir=workspace / f"tb_d{deferred}")
        assert "non-finite loss or gradient" in caplog.text
    _assert_same_weights(results[False].checkpoint, results[True].checkpoint)
    assert results[True].train_loss == pytest.approx(results[False].train_loss, rel=1e-6)


def test_trained_on_names_phantoms_and_mixed_datastores(tmp_path):
    from pathlib import Path

    from afloc_training.data import ImageReportPair, PairList
    from afloc_training.phantoms import write_phantom_datastore
    from afloc_training.trainer import describe_training_data

    write_phantom_datastore(tmp_path, 3, seed=0, size=64)
    phantoms = [ImageReportPair(f"phantom_0000{i}", Path("x.png"), ("a",), "g") for i in range(3)]
    pure = PairList(pairs=phantoms, source=tmp_path, kind="datastore")
    assert describe_training_data(pure) == (
        "synthetic phantoms (afloc-phantoms, 3 image-report pairs): not for clinical images"
    )
    mixed = PairList(pairs=phantoms + [ImageReportPair("cxr_0001", Path("y.jpg"), ("b",), "h")], source=tmp_path,
                     kind="datastore")
    assert describe_training_data(mixed) == (
        f"datastore '{tmp_path.name}' (4 image-report pairs, 3 of them synthetic phantoms): not for clinical images"
    )
    real = PairList(pairs=[ImageReportPair("c", Path("c.jpg"), ("b",), "h")], source=tmp_path / "pairs.csv", kind="csv")
    assert describe_training_data(real) == "CSV manifest 'pairs.csv' (1 image-report pairs)"
    # The recipe's phantoms: varied style, a share drawn on real radiographs (read from the manifest).
    varied = tmp_path / "varied"
    write_phantom_datastore(varied, 3, seed=0, size=64, style="varied", backgrounds=None)
    manifest = varied / "ground_truth" / "manifest.json"
    settings = json.loads(manifest.read_text())
    assert describe_training_data(PairList(pairs=phantoms, source=varied, kind="datastore")) == (
        "synthetic varied-style phantoms (afloc-phantoms, 3 image-report pairs): not for clinical images"
    )
    manifest.write_text(json.dumps({**settings, "real_fraction": 0.3, "real_backgrounds": 37}))
    assert describe_training_data(PairList(pairs=phantoms, source=varied, kind="datastore")) == (
        "synthetic varied-style phantoms (afloc-phantoms, 3 image-report pairs, about 30% of them findings drawn "
        "on real radiographs): not for clinical images"
    )
    pacs = PairList(pairs=[ImageReportPair("c", Path("c.dcm"), ("b",), "h")],
                    source="https://reader:s3cret@pacs.example:8443/dicom-web?token=abc#x", kind="dicomweb")
    # Checkpoints and /info never carry the PACS credentials or query.
    assert describe_training_data(pacs) == "DICOMweb PACS 'https://pacs.example:8443/dicom-web' (1 image-report pairs)"


def test_cpu_precision_modes(tmp_path):
    """``optim.cpu_precision``: fp32, bf16 (autocast), auto (follows the CPU); bad values are refused."""
    from afloc_models.config import load_config, preset
    from afloc_training.trainer import native_cpu_bf16, uses_bf16

    cpu = torch.device("cpu")
    assert uses_bf16(cpu, "fp32") is False and uses_bf16(cpu, "bf16") is True
    assert uses_bf16(cpu, "auto") is native_cpu_bf16()
    # The CPU recipe takes bf16 where it is native (the steps); the GPU presets keep fp32 on a CPU.
    assert preset("small").optim.cpu_precision == "auto"
    assert preset("publication").optim.cpu_precision == preset("published").optim.cpu_precision == "fp32"
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: small\noptim: {cpu_precision: fast}\n")
    with pytest.raises(ConfigError, match="cpu_precision"):
        load_config(bad)


def test_cpu_precision_training_runs_and_differs_from_fp32(workspace, tmp_path):
    losses = {}
    for mode in ("fp32", "bf16"):
        path = tmp_path / f"{mode}.yaml"
        path.write_text(TINY.format(text_lr_scale=0.0).replace("text_lr_scale: 0.0}", f"text_lr_scale: 0.0, cpu_precision: {mode}}}"))
        result = train(workspace / "data", tmp_path / mode, config=path, epochs=1, seed=0, save_every=0, progress=False)
        losses[mode] = result.history[0]["train_loss"]
        assert math.isfinite(losses[mode])
    assert losses["bf16"] != losses["fp32"]  # the autocast really ran


@pytest.mark.parametrize("zeroed", ["weight_word", "weight_sentence", "weight_global"])
def test_heads_of_a_zero_weighted_level_are_frozen_and_every_trainable_parameter_gets_a_gradient(zeroed):
    # What DistributedDataParallel needs: no trainable parameter left out of the graph.
    from afloc_models.config import preset
    from afloc_training.trainer import freeze_unused

    config = preset("small")
    config.embed_dim = 32
    config.loss.weight_word = 1.0  # all three levels on, then the one under test off
    setattr(config.loss, zeroed, 0.0)
    torch.manual_seed(0)
    model = AFLoc(config)
    model.text_encoder.model.requires_grad_(False)  # the small preset's frozen body
    freeze_unused(model)
    tokens = model.tokenize([["left lower opacity"], ["no pneumothorax", "heart is enlarged"]])
    model(torch.randn(2, 1, 64, 64), tokens).total.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad and not n.startswith("text_encoder.model")}
    expected = {
        "weight_word": {"local2_embedder", "word_proj"},
        "weight_sentence": {"local_embedder", "sentence_proj"},
        "weight_global": {"global_embedder", "backbone", "report_proj"},
    }[zeroed]
    assert frozen == expected


def test_token_cache_budget_grows_with_the_gpu(monkeypatch):
    """2 GiB on a CPU or a small card; a tenth of a larger card, up to 8 GiB (no GPU needed)."""
    import types

    import afloc_training.trainer as trainer_module

    gib = 1 << 30
    for total, expected in ((16 * gib, 2 * gib), (40 * gib, 4 * gib), (141 * gib, 8 * gib)):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, t=total: types.SimpleNamespace(total_memory=t))
        assert trainer_module.token_cache_bytes(torch.device("cuda")) == expected
    assert trainer_module.token_cache_bytes(torch.device("cpu")) == 2 * gib
    monkeypatch.setattr(trainer_module, "TOKEN_CACHE_BYTES", 0)  # a disabled cache stays disabled
    assert trainer_module.token_cache_bytes(torch.device("cuda")) == 0


def test_a_run_without_a_length_plans_at_least_the_recipe_s_useful_steps(workspace, tmp_path, caplog):
    """``small``'s 12 epochs of 2,000 phantoms are 708 steps; ``afloc-train --max-minutes 15``
    must train the 1,300 (``optim.min_useful_steps``) the recipe was measured with. An explicit
    ``epochs`` or ``max_steps`` is the caller's choice and is kept."""
    config = tmp_path / "floor.yaml"
    config.write_text(TINY.format(text_lr_scale=0.0).replace("text_lr_scale: 0.0}", "text_lr_scale: 0.0, epochs: 1, min_useful_steps: 5}"))
    common = dict(config=str(config), seed=0, save_every=0, progress=False, log_dir=tmp_path / "tb")
    with caplog.at_level("INFO", logger="afloc.training"):
        floored = train(workspace / "data", tmp_path / "floored", max_minutes=5, **common)
    assert floored.stopped == "completed" and floored.steps == 5 and floored.warnings == []
    assert any("planning 5 steps (optim.min_useful_steps" in r.getMessage() for r in caplog.records)
    one_epoch = train(workspace / "data", tmp_path / "one_epoch", epochs=1, **common)
    assert one_epoch.steps == 2  # 9 training pairs, batch 4, the last part-batch dropped
    assert train(workspace / "data", tmp_path / "three", max_steps=3, **common).steps == 3
