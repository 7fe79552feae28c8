#!/usr/bin/env python
"""Train the demo model that ships in ``demo/model/`` with the recipe of ``scripts/build_demo.py``.

Runs the recipe's two commands (``afloc-phantoms`` then ``afloc-train``, exactly as
``build_demo.py --retrain`` does), then writes into ``--out`` (default ``demo/model``):

- ``config.yaml``, ``weights.safetensors``, ``meta.json``: the compact checkpoint
  (:mod:`afloc_models.compact`: every trained weight, not the frozen text body of the installed
  MiniLM), with the recipe, the training set's content digest and the final validation loss;
- ``training_log.csv``: every step's losses, learning rate and gradient norm, and each epoch's
  validation loss (``tests/test_demo_model.py`` reruns the recipe's first steps against it);
- ``training_backgrounds.csv``: the cxr-notes radiographs the training studies were drawn on,
  with each one's licence and source (most are CC BY-NC-SA: see ``demo/model/README.md``);
- ``evaluation.json``: pointing game, CNR, mIoU per finding with 95% bootstrap intervals on 200
  unseen plain phantoms (seed 2) and on the external sets (seed 7), which share no code with the
  training phantoms.

``demo/model/README.md`` is written by hand and left alone. Needs the cxr-notes folder: the
recipe draws 30% of its studies on real radiographs. About 30 minutes on a 2-core CPU.

Usage::

    python scripts/make_demo_model.py --work /tmp/demo-model     # then review and commit demo/model
    python scripts/make_demo_model.py --evaluate-only            # rescore demo/model, no training (~10 min)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.quality scores the model
import build_demo  # noqa: E402  (the recipe's constants and commands live there)

REPO_ROOT = build_demo.REPO_ROOT
DEFAULT_OUT = REPO_ROOT / "demo" / "model"
#: Evaluation sets: unseen in-domain plain phantoms and the external sets (benchmarks/quality.py's).
TEST_PHANTOMS, TEST_SEED = 200, 2
EXTERNAL_STUDIES, EXTERNAL_SEED = 200, 7
BOOTSTRAP = 200
LOG_TAGS = ("loss", "loss_sentence", "loss_global", "lr", "grad_norm")


def training_log_rows(log_dir: Path) -> list[dict[str, Any]]:
    """One row per step from the run's TensorBoard events: the ``LOG_TAGS`` and ``val_loss``
    (empty except at the steps where an epoch's validation ran)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    if len(files) != 1:
        raise SystemExit(f"make_demo_model: expected one TensorBoard events file under {log_dir}, found {len(files)}")
    events = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})
    events.Reload()
    rows: dict[int, dict[str, Any]] = {}
    for tag in LOG_TAGS:
        for event in events.Scalars(f"train/{tag}"):
            rows.setdefault(event.step, {"step": event.step})[tag] = event.value
    for event in events.Scalars("val/loss") if "val/loss" in events.Tags()["scalars"] else []:
        rows.setdefault(event.step, {"step": event.step})["val_loss"] = event.value
    return [rows[step] for step in sorted(rows)]


def write_training_log(rows: list[dict[str, Any]], path: Path) -> None:
    from afloc_models.atomic import atomic_write_text

    columns = ["step", *LOG_TAGS, "val_loss"]
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join("" if row.get(c) is None else (str(row[c]) if c == "step" else f"{row[c]:.6g}")
                              for c in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_training_log(path: Path) -> list[dict[str, Optional[float]]]:
    """``training_log.csv`` back as dicts (empty cells: None)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{k: (float(v) if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)]


def write_background_sources(cxr_notes: Path, path: Path) -> int:
    """List the radiographs the recipe draws findings on (id, licence, source); returns how many."""
    from afloc_models.atomic import atomic_write_text
    from afloc_training.phantoms.radiographs import find_backgrounds

    with open(cxr_notes / "pairs.csv", newline="", encoding="utf-8") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["id", "license", "source"])
    backgrounds = find_backgrounds(cxr_notes, build_demo.TRAIN_PHANTOM_SIZE)
    for background in backgrounds:
        row = rows[background.name]
        source = f"https://doi.org/{row['source_doi']}" if row.get("source_doi") else row.get("source_url", "")
        writer.writerow([background.name, row.get("license", ""), source])
    atomic_write_text(path, table.getvalue())
    return len(backgrounds)


def evaluate(checkpoint: Path, work: Path, cxr_notes: Path) -> dict[str, Any]:
    """Protocol metrics of ``checkpoint`` on the in-domain test phantoms and the external sets,
    scored as ``benchmarks/quality.py`` scores them, with the maps the server reads."""
    from afloc_models.config import AFLocConfig
    from afloc_models.evaluation.external.writer import write_external_sets
    from afloc_models.inference.heatmap import trained_similarity
    from afloc_models.model import CONFIG_FILE
    from afloc_training.phantoms import write_phantom_datastore
    from benchmarks.quality import evaluate_checkpoint

    sets = {"in_domain": write_phantom_datastore(work / "test", TEST_PHANTOMS, TEST_SEED, style="plain",
                                                 backgrounds=None, real_fraction=0.0, overwrite=True,
                                                 workers=build_demo.cpu_count())}
    external = write_external_sets(work / "external", n=EXTERNAL_STUDIES, seed=EXTERNAL_SEED, cxr_notes=cxr_notes,
                                   overwrite=True)
    sets.update({f"external_{name}": path for name, path in external.items()})
    config = AFLocConfig.from_yaml(checkpoint / CONFIG_FILE)
    similarity = trained_similarity(config.loss.local_attention)
    results: dict[str, Any] = {"similarity": similarity, "input_size": config.data.inference_size,
                               "bootstrap_resamples": BOOTSTRAP}
    for name, folder in sets.items():
        results[name] = evaluate_checkpoint(checkpoint, folder, "deep", similarity, BOOTSTRAP, seed=0)
        overall = results[name]["overall"]
        build_demo.log(f"{name}: pointing game {overall['pointing_game']} CNR {overall['cnr']} "
                       f"({results[name]['cases']} findings)")
    # As the server reads the maps (mirror: auto, refine: auto).
    results["mirror"], results["refine"] = results["in_domain"]["mirror"], results["in_domain"]["refine"]
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train, export and evaluate the shipped demo model (demo/model).")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: demo/model")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary folder)")
    parser.add_argument("--cxr-notes", type=Path, default=build_demo.DEFAULT_CXR_NOTES,
                        help="default: ../shared/data/cxr-notes")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: score the model already in --out again (e.g. after the way the server "
                        "reads maps changed) and rewrite its evaluation.json")
    args = parser.parse_args(argv)
    if not (args.cxr_notes / "pairs.csv").is_file():
        parser.error(f"{args.cxr_notes} has no pairs.csv: the demo recipe draws findings on the real radiographs "
                     "of cxr-notes (--cxr-notes DIR)")

    from afloc_models.atomic import atomic_copy
    from afloc_models.compact import COMPACT_WEIGHTS, export_compact
    from afloc_models.model import CONFIG_FILE, META_FILE
    from afloc_training.phantoms.digest import content_digest

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)  # a scratch folder that does not exist yet is made
    work = Path(tempfile.mkdtemp(prefix="afloc-demo-model-", dir=args.work))
    if args.evaluate_only:
        from afloc_models.atomic import atomic_write_text
        from afloc_models.compact import expand_compact

        results = evaluate(expand_compact(args.out, work / "checkpoint"), work / "eval", args.cxr_notes.resolve())
        atomic_write_text(args.out / "evaluation.json", json.dumps(results, indent=2) + "\n")
        build_demo.log(f"{args.out / 'evaluation.json'} rewritten (scratch kept in {work}); update {args.out / 'README.md'}")
        return 0
    trained, logs = build_demo.train_with_recipe(work, args.cxr_notes.resolve())
    rows = training_log_rows(logs)
    data_digest = content_digest(work / "phantoms")
    model_meta = json.loads((trained / META_FILE).read_text(encoding="utf-8"))
    training = {**model_meta.get("training", {}), "data": build_demo.recipe_text(), "data_sha256": data_digest}
    compact = export_compact(trained, work / "compact", meta={"training": training, "recipe": build_demo.recipe()})
    write_training_log(rows, compact / "training_log.csv")
    write_background_sources(args.cxr_notes.resolve(), compact / "training_backgrounds.csv")
    results = evaluate(trained, work / "eval", args.cxr_notes.resolve())
    (compact / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    args.out.mkdir(parents=True, exist_ok=True)
    # Weights first and meta.json (which records the weights' digest) last: an interrupted copy
    # leaves a folder that expand_compact refuses with a clear message, never a silent mix.
    for name in (COMPACT_WEIGHTS, CONFIG_FILE, "training_log.csv", "training_backgrounds.csv", "evaluation.json",
                 META_FILE):
        atomic_copy(compact / name, args.out / name)
    build_demo.log(f"demo model written to {args.out} (scratch kept in {work}); update {args.out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
