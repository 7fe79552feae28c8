#!/usr/bin/env python
"""Build what the demo server needs, reproducibly and only when missing.

``demo/datastore/`` (a MONAI Label local datastore):

- ``DEMO_PHANTOMS`` synthetic chest radiographs with reports (``afloc-phantoms``; their finding
  masks go to ``ground_truth/``, which MONAI Label does not list);
- the real radiographs ``REAL_IMAGE_IDS`` from ``shared/data/cxr-notes`` with their clinical
  notes as reports (``<id>.jpg`` + ``<id>.txt``);
- the real CR DICOM ``RG1_UNCI.dcm`` from pydicom-data;
- ``LICENSES.md``: each copied file's licence and source.

``demo/checkpoint/``: the shipped demo model ``demo/model/`` (a compact checkpoint of AFLoc
``small``, :mod:`afloc_models.compact`) expanded with the installed text body: seconds, no training.
``--retrain`` trains it instead with the recipe that made ``demo/model`` (run as subprocesses,
progress bar included)::

    afloc-phantoms --out WORK/phantoms --n TRAIN_PHANTOMS --seed TRAIN_PHANTOM_SEED --size TRAIN_PHANTOM_SIZE \\
        --workers CPUS --backgrounds CXR_NOTES   # (--backgrounds none when CXR_NOTES has no pairs.csv)
    afloc-train --data WORK/phantoms --out WORK/checkpoint --config TRAIN_CONFIG \\
        --max-steps TRAIN_MAX_STEPS --seed TRAIN_SEED --save-every 0 --trained-on TRAIN_TRAINED_ON

(about 22 minutes on a 2-core CPU with native bf16; ``scripts/make_demo_model.py`` runs the same
two commands and writes ``demo/model``; ``tests/test_demo_model.py`` reruns its first steps).

The recipe is the constants below; change them here. Usage::

    python scripts/build_demo.py                 # build whatever is missing
    python scripts/build_demo.py --force         # rebuild both
    python scripts/build_demo.py --force --retrain --only checkpoint   # train the model here instead
    python scripts/build_demo.py --only datastore
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- the recipe
#: Phantom radiographs in the demo datastore (seed differs from training: unseen images).
DEMO_PHANTOMS = 40
DEMO_PHANTOM_SEED = 2024
DEMO_PHANTOM_SIZE = 512
#: Real radiographs copied from cxr-notes: CC BY 4.0 (0114, 0115, 0119) and CC BY-NC-SA
#: (0001 lobar pneumonia, 0075 normal, 0086 lipoid pneumonia), all PA views.
REAL_IMAGE_IDS = ("cxr_0001", "cxr_0075", "cxr_0086", "cxr_0114", "cxr_0115", "cxr_0119")
#: Training set and schedule of the demo model (demo/model/README.md: why these steps and seed).
TRAIN_PHANTOMS = 2000
TRAIN_PHANTOM_SEED = 1
TRAIN_PHANTOM_SIZE = 256
TRAIN_CONFIG = "small"
#: The ``small`` recipe's ``optim.min_useful_steps``; a step count (not minutes) makes it reproducible.
TRAIN_MAX_STEPS = 1300
#: Of training seeds 0, 1 and 2 at this recipe, the one with the lowest final validation loss.
TRAIN_SEED = 1
#: What the demo model says it was trained on (checkpoint meta.json ``trained_on``; the server's
#: /info, the Slicer module and the OHIF panel show it).
#: (Without ../shared/data/cxr-notes no study is drawn on a real radiograph: TRAIN_TRAINED_ON_PHANTOMS.)
TRAIN_TRAINED_ON = "demo: synthetic phantoms (varied) and findings drawn on real radiographs, not for clinical images"
TRAIN_TRAINED_ON_PHANTOMS = "demo: synthetic phantoms (varied), not for clinical images"

# ----------------------------------------------------------------------------- defaults
DEFAULT_DATASTORE = REPO_ROOT / "demo" / "datastore"
DEFAULT_CHECKPOINT = REPO_ROOT / "demo" / "checkpoint"
#: The shipped demo model (compact checkpoint, tracked in git).
SHIPPED_MODEL = REPO_ROOT / "demo" / "model"
DEFAULT_CXR_NOTES = REPO_ROOT.parent / "shared" / "data" / "cxr-notes"
#: Written last into the datastore folder: a datastore without it is incomplete and rebuilt.
COMPLETE_MARKER = ".afloc-demo-complete"
DICOM_NAME = "RG1_UNCI.dcm"


def log(message: str) -> None:
    print(f"[build_demo] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- datastore
def datastore_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def build_datastore(folder: Path, cxr_notes: Path) -> Path:
    """Write the demo datastore into ``folder`` (emptied first); see the module docstring."""
    rows = _read_cxr_rows(cxr_notes, REAL_IMAGE_IDS) if (cxr_notes / "pairs.csv").is_file() else []
    if not rows:
        log(f"warning: {cxr_notes / 'pairs.csv'} not found: the datastore gets no real radiographs "
            "(pass --cxr-notes DIR to add them)")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log(f"writing {DEMO_PHANTOMS} phantom radiographs into {folder}")
    _run([sys.executable, "-m", "afloc_training.phantoms", "--out", str(folder), "--n", str(DEMO_PHANTOMS),
          "--seed", str(DEMO_PHANTOM_SEED), "--size", str(DEMO_PHANTOM_SIZE), "--style", "plain",
          "--real-fraction", "0"])

    licences = []
    for row in rows:
        source = cxr_notes / row["file"]
        target = folder / f"{row['id']}{source.suffix.lower()}"
        shutil.copyfile(source, target)
        (folder / f"{row['id']}.txt").write_text(row["report"].strip() + "\n", encoding="utf-8")
        origin = f"https://doi.org/{row['source_doi']}" if row.get("source_doi") else row.get("source_url", "")
        licences.append((target.name, row["license"], origin, row.get("source_file", ""), row.get("finding", "")))
    log(f"copied {len(rows)} real radiographs with their notes from {cxr_notes}")

    shutil.copyfile(pydicom_data_file(DICOM_NAME), folder / DICOM_NAME)
    log(f"copied {DICOM_NAME} from pydicom-data")
    (folder / "LICENSES.md").write_text(_licences_markdown(licences), encoding="utf-8")
    (folder / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"), encoding="utf-8")
    return folder


def _read_cxr_rows(cxr_notes: Path, ids: Sequence[str]) -> list[dict[str, str]]:
    table = cxr_notes / "pairs.csv"
    if not table.is_file():
        raise SystemExit(
            f"build_demo: cannot find {table}: pass --cxr-notes DIR (the shared cxr-notes folder with pairs.csv)"
        )
    with table.open(newline="", encoding="utf-8") as handle:
        by_id = {row["id"]: row for row in csv.DictReader(handle)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"build_demo: {table} has no rows {', '.join(missing)}")
    return [by_id[i] for i in ids]


def _licences_markdown(real: Sequence[tuple[str, str, str, str, str]]) -> str:
    lines = [
        "# Licences of the demo datastore",
        "",
        "| file | licence | source | original file | case diagnosis |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, licence, origin, original, finding in real:
        lines.append(f"| `{name}` (+ `.txt` note) | {licence} | {origin} | {original} | {finding} |")
    lines += [
        f"| `{DICOM_NAME}` | MIT (pydicom-data) | https://github.com/pydicom/pydicom-data | {DICOM_NAME} | unknown |",
        "| `phantom_*.png` (+ `.txt` report, `ground_truth/`) | Apache-2.0 (generated by this project's "
        "`afloc-phantoms`) | synthetic | - | see ground_truth/findings.csv |",
        "",
        "The real radiographs and notes come from the COVID-19 image data collection (Cohen et al., "
        "arXiv:2003.11597) via `shared/data/cxr-notes`. Keep these licence and source lines when showing "
        "or redistributing them; NC-licensed images must not be used commercially.",
        "",
    ]
    return "\n".join(lines)


def pydicom_data_file(name: str) -> Path:
    """A file of the pydicom-data package, found without pydicom's pkg_resources-based lookup."""
    spec = importlib.util.find_spec("data_store")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / name
        if candidate.is_file():
            return candidate
    raise SystemExit(f"build_demo: {name} not found: install pydicom-data (a project dependency)")


# ----------------------------------------------------------------------------- checkpoint
def checkpoint_complete(folder: Path) -> bool:
    return all((folder / name).exists() for name in ("config.yaml", "model.safetensors", "text_encoder"))


def cpu_count() -> int:
    return os.cpu_count() or 1


def recipe() -> dict[str, object]:
    """The recipe's settings, as recorded in the shipped model's meta.json."""
    return {"phantoms": {"n": TRAIN_PHANTOMS, "seed": TRAIN_PHANTOM_SEED, "size": TRAIN_PHANTOM_SIZE,
                         "backgrounds": "cxr-notes (training split)"},
            "config": TRAIN_CONFIG, "max_steps": TRAIN_MAX_STEPS, "seed": TRAIN_SEED}


def recipe_text() -> str:
    """The recipe's training data in words (meta.json ``training.data``)."""
    return (f"afloc-phantoms --n {TRAIN_PHANTOMS} --seed {TRAIN_PHANTOM_SEED} --size {TRAIN_PHANTOM_SIZE} "
            "--backgrounds cxr-notes")


def phantom_command(out: Path, cxr_notes: Path) -> list[str]:
    """``afloc-phantoms`` for the training set: real backgrounds from ``cxr_notes`` when it is a
    cxr-notes folder (the one ``--cxr-notes`` names, not only the default beside the repository),
    phantoms only otherwise."""
    backgrounds = str(cxr_notes) if (cxr_notes / "pairs.csv").is_file() else "none"
    return [sys.executable, "-m", "afloc_training.phantoms", "--out", str(out), "--n", str(TRAIN_PHANTOMS),
            "--seed", str(TRAIN_PHANTOM_SEED), "--size", str(TRAIN_PHANTOM_SIZE),
            "--workers", str(cpu_count()), "--backgrounds", backgrounds]


def train_command(phantoms: Path, out: Path, trained_on: str, log_dir: Path) -> list[str]:
    """``afloc-train`` of the recipe on the phantoms in ``phantoms``."""
    return [sys.executable, "-m", "afloc_training.cli", "--data", str(phantoms), "--out", str(out),
            "--config", TRAIN_CONFIG, "--max-steps", str(TRAIN_MAX_STEPS), "--seed", str(TRAIN_SEED),
            "--save-every", "0", "--trained-on", trained_on, "--log-dir", str(log_dir)]


def train_with_recipe(work_dir: Path, cxr_notes: Path) -> tuple[Path, Path]:
    """Run the recipe's two commands in ``work_dir``; returns (checkpoint folder, TensorBoard folder)."""
    phantoms, trained, logs = work_dir / "phantoms", work_dir / "checkpoint", work_dir / "logs"
    log(f"writing {TRAIN_PHANTOMS} training phantoms (seed {TRAIN_PHANTOM_SEED})")
    _run(phantom_command(phantoms, cxr_notes))
    manifest = json.loads((phantoms / "ground_truth" / "manifest.json").read_text(encoding="utf-8"))
    trained_on = TRAIN_TRAINED_ON if manifest.get("real_backgrounds") else TRAIN_TRAINED_ON_PHANTOMS
    log(f"training AFLoc '{TRAIN_CONFIG}' for {TRAIN_MAX_STEPS} steps (seed {TRAIN_SEED}; about 22 min on 2 cores)")
    _run(train_command(phantoms, trained, trained_on, logs))
    if not checkpoint_complete(trained):
        raise SystemExit(f"build_demo: training finished without a checkpoint in {trained}")
    return trained, logs


def shipped_model_present(folder: Path = SHIPPED_MODEL) -> bool:
    return all((folder / name).is_file() for name in ("config.yaml", "meta.json", "weights.safetensors"))


def is_stale_demo_checkpoint(folder: Path, shipped: Path = SHIPPED_MODEL) -> bool:
    """A checkpoint this script made earlier (its ``trained_on`` is the demo's) from another
    shipped model or an older recipe: replaced so that an updated repository serves its updated
    model. A checkpoint someone else put there, or one ``--retrain`` made, is never touched."""
    from afloc_models.compact import EXPANDED_FROM

    try:
        present = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        wanted = json.loads((shipped / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if present.get("trained_on") not in (TRAIN_TRAINED_ON, TRAIN_TRAINED_ON_PHANTOMS):
        return False
    if present.get(EXPANDED_FROM):
        return present[EXPANDED_FROM] != wanted.get("compact", {}).get("weights_sha256")
    training = present.get("training") or {}
    return (training.get("seed"), training.get("step")) != (TRAIN_SEED, TRAIN_MAX_STEPS)


def build_checkpoint(folder: Path, work: Optional[Path] = None, cxr_notes: Path = DEFAULT_CXR_NOTES,
                     retrain: bool = False, shipped: Path = SHIPPED_MODEL) -> Path:
    """Write the demo checkpoint to ``folder``: the shipped model expanded, or (``retrain``, or no
    shipped model) one trained here with the recipe."""
    if not retrain and shipped_model_present(shipped):
        from afloc_models.compact import expand_compact

        log(f"expanding the shipped demo model {shipped} (no training needed)")
        expand_compact(shipped, folder)
        log(f"demo checkpoint ready in {folder}")
        return folder
    if not retrain:
        log(f"no shipped demo model in {shipped}: training one with the recipe instead")
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)  # a --work folder that does not exist yet is made
    work_dir = Path(tempfile.mkdtemp(prefix="afloc-demo-", dir=work))
    try:
        trained, _ = train_with_recipe(work_dir, cxr_notes)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        # The optimiser state (twice the weights' size) is only needed to resume this run.
        shutil.copytree(trained, staging, ignore=shutil.ignore_patterns("train_state.pt"))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        log(f"demo checkpoint ready in {folder}")
        return folder
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _run(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    result = subprocess.run(command, cwd=str(REPO_ROOT), env=env)
    if result.returncode != 0:
        raise SystemExit(f"build_demo: command failed with status {result.returncode}: {' '.join(command)}")


# ----------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the AFLoc Label demo datastore and checkpoint if missing.")
    parser.add_argument("--datastore", type=Path, default=DEFAULT_DATASTORE, help="default: demo/datastore")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: demo/checkpoint")
    parser.add_argument("--cxr-notes", type=Path, default=DEFAULT_CXR_NOTES, help="default: ../shared/data/cxr-notes")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for training (default: system temp)")
    parser.add_argument("--only", choices=("datastore", "checkpoint"), default=None, help="build only this")
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--retrain", action="store_true",
                        help="train the demo checkpoint with the recipe (about 22 min) instead of expanding demo/model")
    args = parser.parse_args(argv)

    if args.only in (None, "datastore"):
        foreign = args.datastore.is_dir() and any(args.datastore.iterdir()) and not datastore_complete(args.datastore)
        if foreign and not args.force:
            log(f"{args.datastore} holds files but was not completely built by this script (interrupted, or "
                "someone else's data): rerun with --force to replace it, or pass another --datastore")
            return 1
        if args.force or not datastore_complete(args.datastore):
            build_datastore(args.datastore.resolve(), args.cxr_notes.resolve())
        else:
            log(f"datastore present: {args.datastore}")
    if args.only in (None, "checkpoint"):
        stale = checkpoint_complete(args.checkpoint) and is_stale_demo_checkpoint(args.checkpoint, SHIPPED_MODEL)
        if stale and not args.retrain:
            log(f"{args.checkpoint} is an older demo model than the shipped one: replacing it")
        if args.force or stale or not checkpoint_complete(args.checkpoint):
            from afloc_models.errors import AFLocError

            try:
                build_checkpoint(args.checkpoint.resolve(), args.work, args.cxr_notes.resolve(), retrain=args.retrain,
                                 shipped=SHIPPED_MODEL)
            except AFLocError as exc:  # e.g. a damaged shipped model or another MiniLM installed
                log(f"cannot build the demo checkpoint: {exc}. To train one here instead (about 22 min): "
                    "python scripts/build_demo.py --retrain --only checkpoint")
                return 1
        else:
            log(f"checkpoint present: {args.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
