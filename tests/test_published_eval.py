"""``afloc-eval --protocol published`` reproduces the published evaluation (``eval/`` of the published code).

The reference is :func:`published_reference.evaluate`, re-implemented from the published
``box_transfer``, ``box2mask``, ``set_margin``, ``norm_heatmap``, ``compute_iou``,
``compute_cnr`` and the threshold / category loop; ours is
:mod:`afloc_models.evaluation.published_protocol` and the CLI around it.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

import published_reference as ref
from afloc_models.evaluation.cli import main
from afloc_models.evaluation.ground_truth import GroundTruthCase
from afloc_models.evaluation.metrics import cnr, threshold_sweep
from afloc_models.evaluation.published_protocol import (
    MARGIN,
    box_to_grid,
    case_counts,
    score_square,
    summarize_published,
)
from afloc_models.imaging import Letterbox
from afloc_models.inference.heatmap import HeatmapSettings


def _cases(rng, n=24):
    """Random maps with boxes: overlapping pairs, boxes in the margin, several categories."""
    out = []
    for i in range(n):
        h, w = (int(rng.integers(300, 900)), int(rng.integers(300, 900))) if i != 5 else (400, 400)
        n_boxes = 1 + i % 3
        boxes = []
        for _ in range(n_boxes):
            bw, bh = rng.uniform(20, w / 2), rng.uniform(20, h / 2)
            boxes.append((float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), float(bw), float(bh)))
        if i % 3 == 2:  # a second box overlapping the first
            x, y, bw, bh = boxes[0]
            boxes[1] = (x + bw / 3, y + bh / 3, bw, bh)
        if i == 5:  # a box inside the excluded border only: empty ground truth on the scored pixels
            boxes = [(0.0, 0.0, 3.0 * max(h, w) / 224, 3.0 * max(h, w) / 224)]
        yy, xx = np.mgrid[0:224, 0:224]
        cy, cx = rng.uniform(40, 184, 2)
        hmap = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(10, 40) ** 2)) + rng.normal(0, 0.05, (224, 224))
        out.append({"shape": (h, w), "boxes": boxes, "hmap": hmap.astype(np.float32), "category": f"cat{i % 4}"})
    return out


def test_published_protocol_matches_the_reference():
    rng = np.random.default_rng(7)
    cases = _cases(rng)
    ref_cases, records = [], []
    for i, c in enumerate(cases):
        h, w = c["shape"]
        gt = sum(ref.box_mask(ref.box_to_224(b, w, h)) for b in c["boxes"])
        ref_cases.append({"hmap": c["hmap"], "gt": gt, "category": c["category"]})
        case = GroundTruthCase(image_path=f"img{i}.png", category=c["category"], prompt="x", boxes=tuple(c["boxes"]))
        counts = case_counts(case, (h, w), Letterbox.for_shape((h, w), 224, floor=True))
        assert np.array_equal(counts, gt)
        records.append({"category": c["category"], **score_square(c["hmap"], counts)})
    theirs = ref.evaluate(ref_cases)
    ours = summarize_published(records)
    np.testing.assert_allclose(list(ours["iou_per_threshold"].values()), theirs["iou"], rtol=1e-12)
    assert math.isclose(ours["miou"], theirs["miou"], rel_tol=1e-12)
    assert math.isclose(ours["cnr"], theirs["mcnr"], rel_tol=1e-12)
    assert math.isnan(records[5]["iou@0.1"]) and math.isnan(records[5]["cnr"])
    assert MARGIN == 14


def test_the_two_protocols_differ_on_the_same_map_and_box():
    # One map, one box: the published protocol scores the 224 square (padding, border, floored
    # box, '>' threshold); ours scores the original grid. They are different numbers.
    h, w = 600, 480
    box = Letterbox.for_shape((h, w), 224, floor=True)
    yy, xx = np.mgrid[0:224, 0:224]
    square = np.exp(-((yy - 30) ** 2 + (xx - 60) ** 2) / (2 * 25.0**2)).astype(np.float32)
    # A finding at the top edge: the published border and padding change what is scored.
    case = GroundTruthCase(image_path="a.png", category="c", prompt="x", boxes=((20.0, 0.0, 160.0, 150.0),))
    published = score_square(square, case_counts(case, (h, w), box))
    original = box.to_original(square)
    project = threshold_sweep(original, case.mask((h, w)))
    assert box_to_grid(case.boxes[0], w, h) == (29, 0, 59, 56)  # 224/600 scale, 22 px left padding, floored
    p_miou = np.mean([published[f"iou@{t:g}"] for t in (0.1, 0.2, 0.3, 0.4, 0.5)])
    assert p_miou == pytest.approx(0.622, abs=1e-3) and project["miou"] == pytest.approx(0.511, abs=1e-3)
    assert published["cnr"] == pytest.approx(3.636, abs=1e-3) and cnr(original, case.mask((h, w))) == pytest.approx(3.195, abs=1e-3)


def test_cli_published_protocol_end_to_end(tmp_path):
    """A small checkpoint, two images, an MS-CXR table: the CLI's numbers are the reference's."""
    import torch

    from afloc_models.inference.predictor import AFLocPredictor
    from afloc_models.model import AFLoc

    torch.manual_seed(0)
    model = AFLoc("small")
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    rows = []
    for name, (h, w) in (("a.png", (320, 256)), ("b.png", (240, 300))):
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(tmp_path / name)
        rows.append({"path": name, "category_name": "Effusion", "label_text": "left pleural effusion",
                     "x": 30, "y": 40, "w": 100, "h": 90, "image_width": w, "image_height": h})
        rows.append({"path": name, "category_name": "Effusion", "label_text": "left pleural effusion",
                     "x": 80, "y": 60, "w": 60, "h": 70, "image_width": w, "image_height": h})
        rows.append({"path": name, "category_name": "Opacity", "label_text": "right lung opacity",
                     "x": 150, "y": 100, "w": 50, "h": 80, "image_width": w, "image_height": h})
    table = tmp_path / "ms_cxr.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--data", str(table), "--out", str(out), "--protocol", "published",
                 "--device", "cpu", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["name"] == "published" and results["data"]["evaluated"] == 4
    # A project checkpoint is mirror averaged by default elsewhere; the published protocol reads once.
    assert results["protocol"]["mirror"] == "off" and results["protocol"]["refine"] == "off"
    assert "mIoU" in (out / "results.md").read_text()
    # Recompute with the reference from the predictor's square maps, each image read once, unrefined.
    predictor = AFLocPredictor.load(ckpt, device="cpu", input_size=224,
                                    settings=HeatmapSettings(mirror="off", refine="off"))
    ref_cases = []
    for name, (h, w) in (("a.png", (320, 256)), ("b.png", (240, 300))):
        squares, _ = predictor.square_heatmaps(tmp_path / name, ["left pleural effusion", "right lung opacity"])
        mine = [r for r in rows if r["path"] == name]
        eff = sum(ref.box_mask(ref.box_to_224((r["x"], r["y"], r["w"], r["h"]), w, h)) for r in mine[:2])
        opa = ref.box_mask(ref.box_to_224((mine[2]["x"], mine[2]["y"], mine[2]["w"], mine[2]["h"]), w, h))
        ref_cases += [{"hmap": squares[0], "gt": eff, "category": "Effusion"},
                      {"hmap": squares[1], "gt": opa, "category": "Opacity"}]
    theirs = ref.evaluate(ref_cases)
    assert results["published"]["miou"] == pytest.approx(theirs["miou"], rel=1e-6)
    assert results["published"]["cnr"] == pytest.approx(theirs["mcnr"], rel=1e-6)
    # Asked for by name, the mirror is still averaged, and said so.
    mirrored = tmp_path / "mirrored"
    assert main(["--checkpoint", str(ckpt), "--data", str(table), "--out", str(mirrored), "--protocol", "published",
                 "--mirror", "on", "--device", "cpu", "--quiet"]) == 0
    averaged = json.loads((mirrored / "results.json").read_text())
    assert averaged["protocol"]["mirror"] == "on"
    assert averaged["published"]["cnr"] != pytest.approx(results["published"]["cnr"], rel=1e-6)
