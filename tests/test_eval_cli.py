"""afloc-eval end to end on phantoms with an untrained model (files and structure, not quality)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from afloc_models.config import preset
from afloc_models.evaluation.cli import evaluate, main, score_case, summarize
from afloc_models.evaluation.ground_truth import GroundTruthCase
from afloc_models.evaluation.report import markdown_report, overlay, to_jsonable
from afloc_models.model import AFLoc
from afloc_training.phantoms import write_phantom_datastore


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = preset("small")
    config.loss.weight_word = 1.0  # a checkpoint with every heatmap level (the fused option is tested)
    return AFLoc(config).save_pretrained(tmp_path_factory.mktemp("ckpt") / "small", meta={"version": "eval-test"})


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_datastore(tmp_path_factory.mktemp("data") / "phantoms", n=8, seed=3, size=96)


def _findings(phantoms: Path) -> list[dict[str, str]]:
    with (phantoms / "ground_truth" / "findings.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_eval_on_a_phantom_datastore_writes_json_markdown_and_overlays(checkpoint, phantoms, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(
        ["--checkpoint", str(checkpoint), "--data", str(phantoms), "--out", str(out), "--overlays", "3", "--bootstrap", "200", "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    assert "cases scored" in capsys.readouterr().out

    text = (out / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    rows = _findings(phantoms)
    categories = {row["finding"] for row in rows}
    assert results["data"]["format"] == "masks"
    assert results["data"]["cases"] == len(rows) == results["data"]["evaluated"] + results["data"]["skipped"]
    assert results["data"]["skipped"] == 0
    assert results["checkpoint"]["model_version"] == "eval-test"
    protocol = results["protocol"]
    assert protocol["thresholds"] == [0.1, 0.2, 0.3, 0.4, 0.5] and protocol["bootstrap"] == 200
    assert set(results["per_category"]) == categories
    for metric in ("miou", "mdice", "cnr", "pointing_game", "iou@0.1", "dice@0.5"):
        entry = results["overall"][metric]
        assert set(entry) == {"mean", "ci95_low", "ci95_high"}
        if metric != "cnr":
            assert 0.0 <= entry["mean"] <= 1.0
        if entry["ci95_low"] is not None:
            assert entry["ci95_low"] <= entry["mean"] + 1e-9 <= entry["ci95_high"] + 2e-9
    # Overall = mean of the per-category means (not of the samples).
    category_means = [results["per_category"][c]["miou"]["mean"] for c in categories]
    assert results["overall"]["miou"]["mean"] == pytest.approx(np.mean(category_means))
    assert sum(results["per_category"][c]["n"] for c in categories) == len(results["samples"])
    sample = results["samples"][0]
    assert {"category", "case_id", "prompt", "image", "miou", "cnr", "pointing_game", "iou@0.3"} <= set(sample)

    assert len(results["overlays"]) == 3
    for name in results["overlays"]:
        with Image.open(out / name) as image:
            assert image.mode == "RGB" and image.size[0] > 0
    markdown = (out / "results.md").read_text()
    assert "| Category | n | mIoU | mDice | CNR | Pointing game |" in markdown
    assert "**Overall**" in markdown and "IoU@0.3" in markdown
    for category in categories:
        assert f"| {category} |" in markdown


def test_options_change_thresholds_and_disable_cis(checkpoint, phantoms, tmp_path):
    out = tmp_path / "results"
    code = main(
        [
            "--checkpoint", str(checkpoint), "--data", str(phantoms / "ground_truth" / "findings.csv"),
            "--format", "masks", "--out", str(out), "--thresholds", "0.2,0.4", "--bootstrap", "0",
            "--overlays", "0", "--similarity", "cosine", "--level", "fused", "--empty", "drop", "--limit", "4", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["thresholds"] == [0.2, 0.4]
    assert results["protocol"]["similarity"] == "cosine" and results["protocol"]["level"] == "fused"
    assert results["data"]["cases"] == 4 and results["overlays"] == []
    assert "iou@0.2" in results["overall"] and "iou@0.1" not in results["overall"]
    assert results["overall"]["miou"]["ci95_low"] is None
    assert not (out / "overlays").exists()


def test_unreadable_image_is_skipped_with_its_reason(checkpoint, phantoms, tmp_path):
    rows = _findings(phantoms)[:3]
    folder = tmp_path / "gt"
    (folder / "masks").mkdir(parents=True)
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    table = []
    for k, row in enumerate(rows):
        image = phantoms / "ground_truth" / row["image"]
        mask = phantoms / "ground_truth" / row["mask_file"]
        table.append({"image": str(image.resolve()), "finding": row["finding"], "prompt": row["prompt"], "mask_file": str(mask.resolve())})
    table.append({"image": "broken.png", "finding": "nodule", "prompt": "nodule", "mask_file": str(mask.resolve())})
    with (folder / "findings.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "finding", "prompt", "mask_file"])
        writer.writeheader()
        writer.writerows(table)
    out = tmp_path / "results"
    assert main(["--checkpoint", str(checkpoint), "--data", str(folder), "--out", str(out), "--bootstrap", "50", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["skipped"] == 1 and results["data"]["evaluated"] == len(rows)
    assert "broken.png" in results["skipped_cases"][0]["image"]
    assert "cannot read image" in results["skipped_cases"][0]["reason"]
    assert "Skipped cases" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--checkpoint", "{tmp}/none"], "is not an AFLoc checkpoint|does not exist"),
        (["--data", "{tmp}"], "findings.csv"),
        (["--data", "{tmp}/missing.csv"], "does not exist"),
        (["--images", "{tmp}"], "--images does not apply"),
    ],
)
def test_user_errors_exit_2_with_a_message(checkpoint, phantoms, tmp_path, capsys, arguments, message):
    base = {"--checkpoint": str(checkpoint), "--data": str(phantoms), "--out": str(tmp_path / "out")}
    extra = []
    for flag, value in zip(arguments[::2], arguments[1::2]):
        value = value.format(tmp=tmp_path)
        if flag in base:
            base[flag] = value
        else:
            extra += [flag, value]
    argv = [x for pair in base.items() for x in pair] + extra + ["--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("afloc-eval: error:")
    assert re.search(message, err)


def test_bad_thresholds_are_rejected_by_the_parser(capsys):
    for value in ("0.1,abc", "1.5", ","):
        with pytest.raises(SystemExit) as info:
            main(["--checkpoint", "c", "--data", "d", "--out", "o", "--thresholds", value])
        assert info.value.code == 2
    assert "threshold" in capsys.readouterr().err


# ------------------------------------------------------------------------------ pieces


def test_score_case_on_a_perfect_and_an_inverted_heatmap():
    gt = np.zeros((40, 50), dtype=bool)
    gt[10:20, 5:25] = True
    noise = np.random.default_rng(0).random(gt.shape) * 0.1  # CNR needs some variance
    perfect = score_case(gt + noise, gt, (0.1, 0.3, 0.5), "zero")
    assert perfect["miou"] == 1.0 and perfect["mdice"] == 1.0 and perfect["pointing_game"] == 1.0
    assert perfect["cnr"] > 3
    inverted = score_case(~gt + noise, gt, (0.1, 0.3, 0.5), "zero")
    assert inverted["miou"] == 0.0 and inverted["pointing_game"] == 0.0 and inverted["cnr"] < 0
    empty = score_case(np.random.default_rng(0).random((40, 50)), np.zeros((40, 50), bool), (0.3,), "zero")
    assert math.isnan(empty["pointing_game"])


def test_summarize_averages_categories_before_samples():
    records = [
        {"category": "a", "miou": 1.0},
        {"category": "a", "miou": 1.0},
        {"category": "a", "miou": 1.0},
        {"category": "b", "miou": 0.0},
    ]
    summary = summarize(records, thresholds=(), bootstrap=100)
    assert summary["overall"]["miou"]["mean"] == pytest.approx(0.5)
    assert summary["micro"]["miou"] == pytest.approx(0.75)
    assert summary["per_category"]["a"]["n"] == 3
    assert summary["per_category"]["a"]["miou"]["ci95_low"] == pytest.approx(1.0)


def test_evaluate_uses_the_predictors_heatmap_on_the_image_grid(checkpoint, tmp_path):
    """A ground truth equal to the predictor's own mask scores IoU 1 at that threshold."""
    from afloc_models.inference import AFLocPredictor

    predictor = AFLocPredictor.load(checkpoint, device="cpu")
    pixels = (np.random.default_rng(1).random((70, 110)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    own_mask = predictor.localize(path, "left pleural effusion")[0].heatmap >= 0.3
    case = GroundTruthCase(image_path=path, category="effusion", prompt="left pleural effusion", mask_fn=lambda s: own_mask)
    records, skipped, kept = evaluate(predictor, [case], thresholds=(0.3,), keep=[0])
    assert not skipped and records[0]["iou@0.3"] == pytest.approx(1.0)
    heatmap, gt = kept[0]
    assert heatmap.shape == gt.shape == (70, 110)


def test_report_helpers():
    assert to_jsonable({"a": float("nan"), "b": np.float32(0.5), "c": (np.int64(2), Path("x"))}) == {
        "a": None,
        "b": 0.5,
        "c": [2, "x"],
    }
    heat = np.linspace(-1, 1, 600 * 800, dtype=np.float32).reshape(600, 800)
    picture = overlay(np.zeros((600, 800), np.float32), heat, heat > 0.8, heat > 0.2, max_side=400)
    assert picture.shape == (300, 400, 3) and picture.dtype == np.uint8
    assert (picture == [40, 220, 60]).all(axis=2).any()  # ground-truth outline
    assert (picture == [255, 255, 255]).all(axis=2).any()  # predicted-mask outline
    results = {
        "protocol": {"thresholds": [0.3], "level": "deep", "similarity": "cosine", "empty_prediction": "zero", "bootstrap": 0},
        "data": {"path": "d", "format": "masks", "cases": 1, "evaluated": 1, "skipped": 0},
        "checkpoint": {"path": "c", "model_version": "v"},
        "overall": {m: {"mean": float("nan")} for m in ("miou", "mdice", "cnr", "pointing_game", "iou@0.3", "dice@0.3")},
        "per_category": {},
    }
    assert "| **Overall** | 1 | **—** |" in markdown_report(results)


def test_map_options_offer_exactly_what_the_heatmap_settings_accept():
    """The parser names its choices as literals (it parses before torch is imported); they must
    stay the values :class:`HeatmapSettings` validates against."""
    from afloc_models.evaluation.cli import build_parser
    from afloc_models.inference.heatmap import LEVELS, MIRRORS, RECIPES, REFINES, SIMILARITIES

    offered = {action.dest: set(action.choices) for action in build_parser()._actions if action.choices}
    assert offered["level"] == set(LEVELS)
    assert offered["similarity"] == set(SIMILARITIES)
    assert offered["recipe"] == set(RECIPES)
    assert offered["mirror"] == set(MIRRORS)
    assert offered["refine"] == set(REFINES)
