"""Data-parallel training under ``torchrun`` (2 CPU processes, gloo).

Two checks, each also with location-swapped negatives (``loss.swap_negatives``): ``afloc-train``
under ``torchrun --nproc_per_node=2`` trains and writes a loadable checkpoint, and the
gathered-feature loss gives each parameter exactly the gradient of one process running the whole
global batch. The second check runs this very file under torchrun (see ``_gradient_worker``):
rank 0 holds 4 pairs and rank 1 holds 3 whose reports have other word and sentence counts, so the
row and length padding of the gather is exercised too.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

REPORTS = [
    ["right upper lobe pneumothorax", "no effusion"],
    ["small left pleural effusion"],
    ["cardiomegaly", "mild edema in both lungs", "no focal consolidation"],
    ["left lower zone nodule measuring two centimetres"],
    ["bilateral basal atelectasis", "heart size normal"],
    ["no acute abnormality"],
    ["right middle zone opacity concerning for pneumonia", "no pneumothorax", "stable mediastinum", "no effusion"],
]
SPLIT = (4, 3)  # pairs held by rank 0 and rank 1
# Location-swapped copies (loss.swap_negatives); None where a report names no side or zone.
SWAPPED = [
    ["left upper lobe pneumothorax", "no effusion"],
    ["small right pleural effusion"],
    None,
    ["right lower zone nodule measuring two centimetres"],
    None,
    None,
    ["left middle zone opacity concerning for pneumonia", "no pneumothorax", "stable mediastinum", "no effusion"],
]


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # A hung run (one rank waiting in a collective the other never joins): SIGTERM lets
            # torchrun stop its workers, which run in sessions of their own, before it exits.
            process.terminate()
            stdout, stderr = process.communicate(timeout=60)
            raise AssertionError(f"torchrun did not finish in {timeout} s:\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _tiny_config():
    from afloc_models.config import load_config

    config = load_config("small")
    config.embed_dim = 32
    config.loss.local_chunk_size = 3  # also exercise the chunked (checkpointed) local loss
    return config


def _gradient_worker(out: Path, swap: bool) -> None:
    """Run under torchrun: DDP + gathered loss on rank-local rows; rank 0 adds the 1-process reference.

    With ``swap`` each image also has its location-swapped report as a negative (gathered with
    :func:`gather_negatives`), tokenized after the true reports as the trainer's collate does.
    """
    from afloc_models.model import AFLoc
    from afloc_training.distributed import gather_features, gather_negatives, init_distributed, shutdown
    from afloc_training.trainer import _Encoders, _split_rows, freeze_unused

    ctx = init_distributed("cpu")
    torch.manual_seed(0)
    model = AFLoc(_tiny_config())
    freeze_unused(model)
    # Running BatchNorm statistics and no dropout: each rank normalising its own rows is the one
    # legitimate difference from a single process, and it is not what this test is about.
    model.eval()
    reference = copy.deepcopy(model) if ctx.is_main else None
    images = torch.randn(sum(SPLIT), 1, 64, 64, generator=torch.Generator().manual_seed(1))
    start = sum(SPLIT[: ctx.rank])
    rows = slice(start, start + SPLIT[ctx.rank])

    valid = torch.tensor([s is not None for s in SWAPPED])
    negative_texts = [s or r for s, r in zip(SWAPPED, REPORTS)]  # placeholders where invalid
    encoders = torch.nn.parallel.DistributedDataParallel(_Encoders(model))
    if swap:
        image, text = encoders(images[rows], model.tokenize(REPORTS[rows] + negative_texts[rows]))
        text, negatives = _split_rows(text, SPLIT[ctx.rank])
        image, text = gather_features(ctx, image, text)
        negatives, gathered_valid = gather_negatives(ctx, negatives, valid[rows])
        assert gathered_valid.tolist() == valid.tolist()
        losses = model.compute_loss(image, text, negatives, gathered_valid)
    else:
        image, text = encoders(images[rows], model.tokenize(REPORTS[rows]))
        image, text = gather_features(ctx, image, text)
        losses = model.compute_loss(image, text)
    losses.total.backward()

    local_grads = _local_loss_grads(model, encoders, images[rows], REPORTS[rows])

    if ctx.is_main:
        extra = ()
        if swap:
            extra = (reference.encode_text(reference.tokenize(negative_texts)), valid)
        full = reference.compute_loss(
            reference.encode_image(images), reference.encode_text(reference.tokenize(REPORTS)), *extra
        )
        full.total.backward()
        torch.save(
            {
                "world_size": ctx.world_size,
                "rows": image.global_.shape[0],
                "loss": [float(v) for v in (losses.total, losses.word, losses.sentence, losses.global_)],
                "ref_loss": [float(v) for v in (full.total, full.word, full.sentence, full.global_)],
                "grads": {n: p.grad for n, p in model.named_parameters() if p.grad is not None},
                "ref_grads": {n: p.grad for n, p in reference.named_parameters() if p.grad is not None},
                "local_grads": local_grads,
            },
            out,
        )
    shutdown(ctx)


def _local_loss_grads(model, encoders, images, reports) -> dict[str, torch.Tensor]:
    """Gradients (DDP-averaged) of per-rank losses without the gather: the bug the gather prevents."""
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    image, text = encoders(images, model.tokenize(reports))
    model.compute_loss(image, text).total.backward()
    local = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, param in model.named_parameters():
        param.grad = grads.get(name)
    return local


@pytest.mark.slow
@pytest.mark.parametrize("swap", [False, True], ids=["plain", "swap_negatives"])
def test_two_process_gradient_equals_one_process_full_batch(tmp_path, swap):
    out = tmp_path / "grads.pt"
    result = _torchrun(str(Path(__file__)), str(out), *(["swap"] if swap else []))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    assert saved["world_size"] == 2 and saved["rows"] == sum(SPLIT)
    assert saved["loss"] == pytest.approx(saved["ref_loss"], rel=1e-5)

    grads, ref = saved["grads"], saved["ref_grads"]
    assert grads.keys() == ref.keys()
    assert any(k.startswith("image_encoder.backbone") for k in grads)
    assert any(k.startswith("text_encoder.model.encoder") for k in grads)
    largest = max(float(g.abs().max()) for g in ref.values())
    assert largest > 0
    def error(grad: torch.Tensor, name: str) -> float:
        return float((grad - ref[name]).abs().max())

    for name, grad in grads.items():
        # fp32 sums in another order: agreement relative to each tensor's scale, with a floor for
        # the gradients that are zero in exact arithmetic (attention key biases: ~1e-8 noise).
        assert error(grad, name) <= 1e-4 * float(ref[name].abs().max()) + 1e-6 * largest, name
    # The gather is what makes this hold: per-rank losses give clearly different gradients.
    local = saved["local_grads"]
    assert max(error(local[n], n) / (float(ref[n].abs().max()) + 1e-12) for n in local) > 0.05


def _torchrun_tiny_training(
    tmp_path: Path, steps: int, extra_config: str = "", *options: str, reports: Optional[list[str]] = None
):
    """``afloc-train`` under torchrun (2 processes) on 12 tiny phantoms with a tiny ``small`` config.

    ``reports``: replace the phantoms' reports (one per pair; as many pairs as reports) and train
    on all of them, none held out for validation.
    """
    from afloc_training.phantoms import write_phantom_datastore

    data = tmp_path / "data"
    write_phantom_datastore(data, len(reports) if reports else 12, seed=0, size=64)
    for index, report in enumerate(reports or []):
        (data / f"phantom_{index:05d}.txt").write_text(report + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "base: small\nembed_dim: 32\noptim: {batch_size: 4, warmup_steps: 1, text_lr_scale: 0.0}\n"
        f"data: {{resize: 72, crop: 64, num_workers: 0, val_fraction: {0.0 if reports else 0.2}}}\n" + extra_config
    )
    return _torchrun(
        "-m", "afloc_training.cli", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "ckpt"),
        "--config", str(config), "--max-steps", str(steps), "--no-progress", *options,
    )


@pytest.mark.slow
def test_torchrun_two_processes_train_and_write_a_checkpoint(tmp_path):
    from afloc_models.model import AFLoc

    out = tmp_path / "ckpt"
    result = _torchrun_tiny_training(tmp_path, 3, "", "--log-dir", str(tmp_path / "tb"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "completed after 3 steps" in result.stdout
    model = AFLoc.from_pretrained(out)
    assert model.meta["training"]["world_size"] == 2 and model.meta["training"]["step"] == 3
    assert model.meta["training"]["images_seen"] == 12


@pytest.mark.slow
def test_torchrun_trains_with_location_swapped_negatives(tmp_path):
    """Two processes with ``loss.swap_negatives``: every step gathers the swapped copies too, and
    a rank whose rows have none to swap joins the gather with placeholders (else it would hang).

    Eight pairs, one of them with a side to swap, two pairs per rank per step, two steps: the
    epoch sees every pair once, so exactly one step has one rank with a copy and one without.
    """
    from afloc_models.model import AFLoc

    reports = ["Right lower lobe nodule."] + ["Cardiomegaly. No pleural effusion."] * 7
    result = _torchrun_tiny_training(tmp_path, 2, "loss: {swap_negatives: true}\n", reports=reports)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "completed after 2 steps" in result.stdout
    model = AFLoc.from_pretrained(tmp_path / "ckpt")
    assert model.config.loss.swap_negatives and model.meta["training"]["world_size"] == 2


if __name__ == "__main__":
    _gradient_worker(Path(sys.argv[1]), swap=sys.argv[2:] == ["swap"])
