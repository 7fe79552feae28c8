"""Report-driven drafting: throughput (folder and through Orthanc) and draft quality. Prints JSON.

Not a test: it drafts hundreds of images. Default run (2-core CPU)::

    python benchmarks/draft_throughput.py --work /tmp/afloc-drafts --checkpoint demo/checkpoint --orthanc

1. Writes ``--n`` phantoms with reports and masks (seed ``--seed``, 256 px) into ``--work/test``.
2. Uses ``--checkpoint``, or trains the ``small`` model for ``--train-minutes`` on ``--train-n``
   other phantoms (seed ``--train-seed``) when none is given.
3. **Folder throughput**: ``afloc-draft`` over the test folder (reads each report, finds its
   positive findings, localizes them, writes ``<id>.png`` + ``<id>.json``); images per minute over
   every image with a report (those without a positive finding cost almost nothing) and over the
   drafted ones alone. Model loading is not counted.
4. **Quality** against the phantom masks, per finding: Dice of the draft's segment (the combined
   label, where the higher heat wins overlaps) and pointing game of its heatmap; beside the same
   numbers for hand-typed prompts, both the canonical phantom prompt ("right lower zone opacity")
   and the bare finding name ("opacity"), each localized alone. A finding the report parser missed
   counts as Dice 0 and a pointing miss.
5. With ``--orthanc`` (root, ``unshare``, Orthanc): the same phantoms as DX DICOM, each with a
   Comprehensive SR report, in Orthanc; the server in DICOMweb mode drafts them all
   (``POST /afloc/draft``, cold cache: downloads, SR lookups and label writing included); its
   ``images_per_min``.

Target: >= 60 images/min with the ``small`` model on the 2-core CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

TARGET_IMAGES_PER_MIN = 60.0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--train-minutes", type=float, default=3.0)
    parser.add_argument("--train-n", type=int, default=600)
    parser.add_argument("--train-seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--orthanc", action="store_true", help="also draft through Orthanc (needs root and Orthanc)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def ensure_checkpoint(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    if args.checkpoint:
        return args.checkpoint, {"given": str(args.checkpoint)}
    from afloc_training.phantoms import write_phantom_datastore
    from afloc_training.trainer import train

    train_dir, out = args.work / "train", args.work / "model"
    if not (train_dir / "ground_truth" / "manifest.json").is_file():
        write_phantom_datastore(train_dir, n=args.train_n, seed=args.train_seed, size=args.size, overwrite=True)
    if not (out / "model.safetensors").is_file():
        result = train(train_dir, out, config="small", max_minutes=args.train_minutes, seed=0, progress=False)
        return out, {"trained_minutes": args.train_minutes, "train_pairs": result.train_pairs, "steps": result.steps,
                     "val_loss": result.val_loss}
    return out, {"reused": str(out)}


def folder_throughput(test_dir: Path, checkpoint: Path, work: Path) -> dict[str, Any]:
    from afloc_training.draft import run

    args = argparse.Namespace(data=str(test_dir), checkpoint=str(checkpoint), out=str(work / "drafts"), threshold=None,
                              limit=None, overwrite=True, device="cpu", threads=None)
    summary = run(args)
    seconds = summary["seconds"]
    summary["drafted_per_min"] = round(60.0 * summary["drafted"] / seconds, 1) if seconds else None
    return summary


def quality(test_dir: Path, checkpoint: Path) -> dict[str, Any]:
    from PIL import Image

    from afloc_models.evaluation.metrics import dice, pointing_game
    from afloc_models.inference import AFLocPredictor
    from afloc_training.draft import combine_masks
    from afloc_training.findings import report_findings

    predictor = AFLocPredictor.load(checkpoint, device="cpu")
    truth = test_dir / "ground_truth"
    rows: dict[str, list[dict[str, str]]] = {}
    with open(truth / "findings.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(Path(row["image"]).stem, []).append(row)
    records: dict[str, list[dict[str, float]]] = {"report_draft": [], "canonical_prompt": [], "finding_name": []}
    recall = {"found": 0, "total": 0, "extra": 0}
    for stem, findings in sorted(rows.items()):
        image = str(test_dir / f"{stem}.png")
        report = (test_dir / f"{stem}.txt").read_text(encoding="utf-8")
        masks = [np.asarray(Image.open(truth / r["mask_file"])) > 0 for r in findings]
        drafted = report_findings(report)
        prompts = [f.prompt for f in drafted]
        if prompts:
            located = predictor.localize(image, prompts).results
            label = combine_masks([r.heatmap for r in located], [r.mask for r in located])
        recall["extra"] += len({p for p in prompts} - {r["prompt"] for r in findings})
        for row, gt in zip(findings, masks):
            recall["total"] += 1
            name = row["finding"]
            if row["prompt"] in prompts:
                recall["found"] += 1
                i = prompts.index(row["prompt"])
                records["report_draft"].append({"finding": name, "dice": dice(label == i + 1, gt),
                                                "pointing": float(pointing_game(located[i].heatmap, gt))})
            else:
                records["report_draft"].append({"finding": name, "dice": 0.0, "pointing": 0.0})
            for key, prompt in (("canonical_prompt", row["prompt"]), ("finding_name", name)):
                result = predictor.localize(image, [prompt]).results[0]
                records[key].append({"finding": name, "dice": dice(result.mask, gt),
                                     "pointing": float(pointing_game(result.heatmap, gt))})
    table: dict[str, Any] = {}
    for key, items in records.items():
        per = {}
        for name in sorted({r["finding"] for r in items}):
            chosen = [r for r in items if r["finding"] == name]
            per[name] = {"n": len(chosen), "dice": round(float(np.mean([r["dice"] for r in chosen])), 3),
                         "pointing_game": round(float(np.mean([r["pointing"] for r in chosen])), 3)}
        table[key] = {
            "per_finding": per,
            "mean_over_findings": {
                "dice": round(float(np.mean([v["dice"] for v in per.values()])), 3) if per else None,
                "pointing_game": round(float(np.mean([v["pointing_game"] for v in per.values()])), 3) if per else None,
            },
        }
    return {"findings": recall, "prompts": table, "model_version": predictor.model_version}


def orthanc_throughput(test_dir: Path, checkpoint: Path, work: Path, n: int, seed: int, size: int) -> dict[str, Any]:
    import pydicom

    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import make_ohif_demo_dicoms as demo

    dicom_dir = work / "orthanc-dicom"
    if not dicom_dir.is_dir():
        for index in range(n):
            folder = dicom_dir / f"p{index:05d}"
            image = demo.write_demo_dx(folder, seed=seed * 100_000 + index, size=size)
            report = str(pydicom.dcmread(str(image), stop_before_pixels=True).ImageComments)
            demo.write_report_sr(image, report, folder / "report.dcm")
    out = work / "orthanc-run"
    env = {**os.environ, "AFLOC_PYTHON": sys.executable, "AFLOC_STACK_ARGS": f"--no-demo --dicom {dicom_dir}",
           "AFLOC_NETNS_CHECK": str(Path(__file__).resolve().parent / "draft_orthanc_check.py")}
    started = time.perf_counter()
    done = subprocess.run(["unshare", "-n", "bash", str(REPO_ROOT / "tests" / "browser" / "run_in_netns.sh"), str(out),
                           str(checkpoint)], env=env, capture_output=True, text=True, timeout=3600)
    result_file = out / "draft-orthanc.json"
    if done.returncode != 0 or not result_file.is_file():
        return {"error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
    result = json.loads(result_file.read_text())
    result["wall_s_with_stack_start"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from afloc_training.phantoms import write_phantom_datastore

    args.work.mkdir(parents=True, exist_ok=True)
    test_dir = args.work / "test"
    if not (test_dir / "ground_truth" / "manifest.json").is_file():
        write_phantom_datastore(test_dir, n=args.n, seed=args.seed, size=args.size, overwrite=True)
    checkpoint, model = ensure_checkpoint(args)
    record: dict[str, Any] = {
        "benchmark": "draft_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "load_avg_at_start": os.getloadavg()},
        "n": args.n, "size": args.size, "model": model, "target_images_per_min": TARGET_IMAGES_PER_MIN,
    }  # fmt: skip
    record["folder"] = folder_throughput(test_dir, checkpoint, args.work)
    record["quality"] = quality(test_dir, checkpoint)
    if args.orthanc:
        record["orthanc"] = orthanc_throughput(test_dir, checkpoint, args.work, args.n, args.seed, args.size)
    record["machine"]["load_avg_at_end"] = os.getloadavg()
    text = json.dumps(record, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
