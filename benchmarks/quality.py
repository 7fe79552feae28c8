"""Localization quality of AFLoc trained from scratch on phantoms, with loss ablations. Prints JSON.

Not a test: it trains for minutes. The default run (2-core CPU)::

    python benchmarks/quality.py --work /tmp/afloc-quality

1. Writes ``--n-train`` phantom image-report pairs (seed ``--train-seed``) and a fresh test set of
   ``--n-test`` phantoms with masks (another seed), unless they already exist in ``--work``.
2. Trains the full model (``--config``) from scratch for ``--minutes`` minutes (``max_minutes``:
   the cosine learning-rate schedule ends at that deadline, whatever the machine's speed).
3. Evaluates the checkpoint on the test set with :class:`AFLocPredictor` and the protocol metrics
   of :mod:`afloc_models.evaluation` (heatmap min-max normalised to [-1, 1]; pointing game, CNR,
   IoU / Dice at thresholds 0.1 ... 0.5; means per finding, then across findings), once per
   heatmap similarity in ``--similarities`` (``dot``, the inner product, and ``cosine``) plus the
   one the server reads this model's maps with (``similarity: auto``: ``cosine`` for a
   ``regions_cosine`` model, ``dot`` otherwise). That served similarity is the in-domain column
   of the side-by-side table and the targets, and the only one scored on the external sets. Maps
   are read as the server reads them (``--mirror auto``: prompts that name a side mirror
   averaged, ``--refine auto``: guided by the image; ``--mirror on --refine off`` reads them as
   records from 2026-12-03 to 2026-12-05 did, ``--mirror off --refine off`` as those before).
4. Ablations, each from scratch with the shorter ``--ablation-minutes`` budget: the full loss at that
   budget (the reference), no word loss, no sentence loss, global loss only (weights set to 0).

Targets (AFLoc-level behaviour on phantoms): pointing game >= 0.6 and mean CNR >= 1.0 for the
full model.

5. External validation (issue 13): the main checkpoint is also scored on the external test sets of
   :mod:`afloc_models.evaluation.external` (an independently written radiograph simulator, and real
   radiographs with inserted lesions when ``../shared/data/cxr-notes`` is present), reported side
   by side with the in-domain phantoms per finding (``side_by_side``) with bootstrap 95% CIs, and
   checked against the generalization targets (external pointing game >= 0.6, CNR >= 1.5, no
   finding below 0.3; in-domain >= 0.7 / 2.0). ``--checkpoint CKPT`` scores an existing checkpoint
   this way without training.
6. ``--curve-every N`` (optional) copies the main run's checkpoint every N steps and scores each
   copy in-domain and on the external sets (pointing game and CNR, no intervals): how the maps,
   not only the losses, develop over the run (``main.curve``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from afloc_models.config import AFLocConfig, load_config  # noqa: E402
from afloc_training.phantoms.writer import RECIPE_REAL_FRACTION, RECIPE_STYLE  # noqa: E402
from benchmarks.common import cpu_model, cpu_share, cpu_ticks  # noqa: E402

TARGETS = {"pointing_game": 0.6, "cnr": 1.0}
#: Issue 13: on the external sets (every one), and in-domain at the same time.
EXTERNAL_TARGETS = {"pointing_game": 0.6, "cnr": 1.5, "worst_finding_pointing_game": 0.3}
IN_DOMAIN_TARGETS = {"pointing_game": 0.7, "cnr": 2.0}
#: Above this share of stolen CPU time a timed run is flagged as taken under load.
STEAL_WARNING = 0.10
ABLATIONS = {
    "full": {},
    "no_word": {"weight_word": 0.0},
    "no_sentence": {"weight_sentence": 0.0},
    "global_only": {"weight_word": 0.0, "weight_sentence": 0.0},
}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for data, checkpoints and results")
    parser.add_argument("--config", default="small", help="preset or YAML (default small)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--size", type=int, default=256, help="phantom side in pixels")
    parser.add_argument("--style", choices=("plain", "varied"), default=RECIPE_STYLE,
                        help=f"training phantoms' style (default {RECIPE_STYLE}: afloc-phantoms' recipe)")
    parser.add_argument("--real-fraction", type=float, default=RECIPE_REAL_FRACTION,
                        help="share of training studies drawn on real radiographs when ../shared/data/cxr-notes is "
                        f"there (default {RECIPE_REAL_FRACTION}: afloc-phantoms' recipe)")
    parser.add_argument("--train-seed", type=int, default=1)
    parser.add_argument("--test-seed", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of the main run")
    parser.add_argument("--ablation-minutes", type=float, default=5.0, help="budget of each ablation run")
    parser.add_argument("--ablations", default=",".join(ABLATIONS), help="comma list, or 'none'")
    parser.add_argument(
        "--steps", type=int, default=None,
        help="train a fixed number of steps instead of --minutes / --ablation-minutes (e.g. to replay "
        "the CPU run's step count on a GPU)",
    )
    parser.add_argument(
        "--infer-sizes", default="",
        help="comma list of inference letterbox sides to evaluate (default: the config's data.inference_size)",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes drawing phantoms")
    parser.add_argument("--level", default="deep", help="heatmap level: deep (predictor default), shallow, fused")
    parser.add_argument(
        "--similarities", default="dot,cosine",
        help="heatmap similarities to evaluate (dot: the predictor's default)",
    )
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the CIs")
    parser.add_argument(
        "--mirror", choices=("auto", "on", "sides", "off"), default="auto",
        help="mirror averaging of the maps (auto, the server's default: sides, i.e. prompts that name a "
        "side, for project checkpoints; docs/inference.md)",
    )
    parser.add_argument(
        "--refine", choices=("auto", "guided", "off"), default="auto",
        help="guided refinement of the maps by the image (auto, the server's default: guided for project "
        "checkpoints; docs/inference.md)",
    )
    parser.add_argument(
        "--external", type=Path, default=None,
        help="external test sets (afloc_models.evaluation.external layout; default WORK/external, written "
        "if missing: --n-external simulated studies and, when ../shared/data/cxr-notes is there, real "
        "radiographs with inserted lesions)",
    )
    parser.add_argument("--n-external", type=int, default=200, help="simulated external studies (default 200)")
    parser.add_argument("--external-seed", type=int, default=7)
    parser.add_argument("--cxr-notes", type=Path, default=None, help="real radiographs for the external set")
    parser.add_argument(
        "--curve-every", type=int, default=0,
        help="also score the main run's weights every this many steps (0: only the final weights)",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="evaluate this checkpoint (in-domain and external) instead of training; no ablations",
    )
    args = parser.parse_args(argv)
    sides = [s.strip() for s in args.infer_sizes.split(",") if s.strip()]
    if not all(side.isdigit() and 32 <= int(side) <= 4096 for side in sides):
        parser.error(f"--infer-sizes must be a comma list of letterbox sides in pixels (32-4096), "
                     f"got {args.infer_sizes!r}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    import logging

    import torch

    logging.basicConfig(level=logging.INFO, format="[quality] %(message)s", stream=sys.stderr)

    from afloc_training.phantoms import write_phantom_datastore

    args.work.mkdir(parents=True, exist_ok=True)
    train_dir, test_dir = args.work / "train", args.work / "test"
    # The in-domain test set is plain phantoms; the training set follows --style / --real-fraction
    # (default: afloc-phantoms' own defaults, the training recipe).
    wanted = [(test_dir, args.n_test, args.test_seed, "plain", 0.0)]
    if args.checkpoint is None:  # scoring a given checkpoint needs no training set
        wanted.insert(0, (train_dir, args.n_train, args.train_seed, args.style, args.real_fraction))
    for folder, n, seed, style, real in wanted:
        differs = _phantoms_differ(folder, n, seed, args.size, style, real)
        if differs:
            # Only the phantom files and ground_truth/ are replaced (afloc-phantoms --overwrite).
            logging.info("%s: %s; writing the phantoms this run asks for", folder, differs)
            write_phantom_datastore(folder, n, seed, size=args.size, overwrite=True, workers=args.workers,
                                    style=style, real_fraction=real)
    base = load_config(args.config)

    results: dict[str, Any] = {
        "benchmark": "quality",
        "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "data": {"train": str(train_dir), "n_train": args.n_train, "train_seed": args.train_seed,
                 "test": str(test_dir), "n_test": args.n_test, "test_seed": args.test_seed, "size": args.size},
        "config": base.to_dict(),
        "targets": TARGETS,
    }
    results["external_sets"] = {name: str(path) for name, path in _external_sets(args).items()}
    if args.checkpoint is not None:
        from afloc_models.model import AFLoc

        checkpoint = AFLoc.from_pretrained(args.checkpoint)
        results["config"] = checkpoint.config.to_dict()
        served = _served_similarity(checkpoint.config)
        metrics = _metrics_by_size(args, args.checkpoint, checkpoint.config, test_dir, [served])
        results["main"] = {"checkpoint": str(args.checkpoint), "meta": checkpoint.meta, "metrics": metrics,
                           "similarity": served}
        results["main"]["external"] = _external_metrics(args, args.checkpoint, served)
        results["side_by_side"] = side_by_side(results["main"])
        results["generalization_targets"] = generalization_targets(results["main"])
        _write(args.work / "quality.json", results)
        print(json.dumps(results, indent=2))
        return 0
    results["grid_ceiling"] = {size: grid_ceiling(test_dir, base, size) for size in _infer_sizes(args, base)}
    results["main"] = _run(args, "main", base, train_dir, test_dir, args.minutes, curve_every=args.curve_every)
    results["main"]["external"] = _external_metrics(args, Path(results["main"]["checkpoint"]),
                                                    results["main"]["similarity"])
    results["side_by_side"] = side_by_side(results["main"])
    results["generalization_targets"] = generalization_targets(results["main"])
    results["targets_met"] = {
        similarity: {k: bool((m["overall"][k] or 0) >= v) for k, v in TARGETS.items()}
        for similarity, m in results["main"]["metrics"].items()
    }

    chosen = [] if args.ablations == "none" else [a.strip() for a in args.ablations.split(",") if a.strip()]
    results["ablations"] = {"minutes_each": args.ablation_minutes, "runs": {}}
    for name in chosen:
        config = _with_loss(base, **ABLATIONS[name])
        run = _run(args, f"ablation_{name}", config, train_dir, test_dir, args.ablation_minutes)
        results["ablations"]["runs"][name] = run
        _write(args.work / "quality.json", results)

    _write(args.work / "quality.json", results)
    print(json.dumps(results, indent=2))
    return 0


def _external_sets(args) -> dict[str, Path]:
    """The external test sets (written under WORK/external when missing)."""
    from afloc_models.evaluation.external.writer import REAL_DIR, SYNTHETIC_DIR, write_external_sets

    root = args.external or (args.work / "external")
    ready = {name: root / folder for name, folder in (("synthetic", SYNTHETIC_DIR), ("real", REAL_DIR))
             if (root / folder / "ground_truth" / "findings.csv").is_file()}
    if "synthetic" not in ready:
        ready = write_external_sets(root, n=args.n_external, seed=args.external_seed, cxr_notes=args.cxr_notes,
                                    overwrite=True)
    return ready


def _served_similarity(config: AFLocConfig) -> str:
    """The map similarity the server reads this model's maps with (``similarity: auto``)."""
    from afloc_models.inference.heatmap import trained_similarity

    return trained_similarity(config.loss.local_attention)


def _external_metrics(args, checkpoint: Path, similarity: str, bootstrap: Optional[int] = None) -> dict[str, Any]:
    """Maps read as the server reads them (``similarity``), at the checkpoint's own inference
    size, on every external set."""
    resamples = args.bootstrap if bootstrap is None else bootstrap
    return {
        name: evaluate_checkpoint(
            checkpoint, path, args.level, similarity, resamples, args.seed, mirror=args.mirror, refine=args.refine
        )
        for name, path in _external_sets(args).items()
    }


def side_by_side(main: dict[str, Any]) -> dict[str, Any]:
    """Pointing game and CNR with 95% CIs per finding: in-domain phantoms next to each external set."""
    columns = {"in_domain": main["metrics"][main["similarity"]], **{f"external_{k}": v for k, v in main.get("external", {}).items()}}
    findings = sorted({f for m in columns.values() for f in m["per_finding"]})
    table: dict[str, Any] = {}
    for finding in findings + ["overall"]:
        row = {}
        for column, metrics in columns.items():
            entry = metrics["overall"] if finding == "overall" else metrics["per_finding"].get(finding)
            if entry is None:
                continue
            row[column] = {
                k: entry.get(k) for k in ("pointing_game", "pointing_game_ci95", "cnr", "cnr_ci95", "miou", "peak_distance")
            }
            row[column]["n"] = metrics["cases"] if finding == "overall" else entry["n"]
        table[finding] = row
    return table


def generalization_targets(main: dict[str, Any]) -> dict[str, Any]:
    """Issue 13's targets checked on this run: each external set and in-domain."""
    out: dict[str, Any] = {"targets": {"external": EXTERNAL_TARGETS, "in_domain": IN_DOMAIN_TARGETS}}
    inside = main["metrics"][main["similarity"]]["overall"]
    out["in_domain"] = {k: bool((inside[k] or 0) >= v) for k, v in IN_DOMAIN_TARGETS.items()}
    for name, metrics in main.get("external", {}).items():
        overall = metrics["overall"]
        worst = min(((e["pointing_game"] or 0.0, f) for f, e in metrics["per_finding"].items()), default=(0.0, None))
        out[f"external_{name}"] = {
            "pointing_game": bool((overall["pointing_game"] or 0) >= EXTERNAL_TARGETS["pointing_game"]),
            "cnr": bool((overall["cnr"] or 0) >= EXTERNAL_TARGETS["cnr"]),
            "worst_finding": {"finding": worst[1], "pointing_game": worst[0],
                              "met": worst[0] >= EXTERNAL_TARGETS["worst_finding_pointing_game"]},
        }
    return out


def grid_ceiling(test_dir: Path, config: AFLocConfig, size: int) -> dict[str, Any]:
    """Pointing game of a perfect map that peaks at a deep-grid cell centre, per finding.

    A bilinearly upsampled grid map peaks at a cell centre, so a finding whose mask holds no
    cell centre (a 5 px nodule between centres 16 px apart) cannot be hit however good the
    features are. This bounds what the model's grid can reach on this test set.
    """
    from afloc_models.evaluation.cli import load_cases
    from afloc_models.imaging import Letterbox, read_image

    cases, _ = load_cases(test_dir)
    cells = size // config.image.deep_stride
    hits: dict[str, list[bool]] = {}
    for case in cases:
        shape = read_image(case.image_path).pixels.shape[:2]
        box = Letterbox.for_shape(shape, size)
        # The original pixel nearest each cell centre: invert the letterbox on the centre points.
        mask = case.mask(shape)
        scale = size / cells
        ys = (np.arange(cells) + 0.5) * scale
        xs = (np.arange(cells) + 0.5) * scale
        oy = np.floor((ys - box.pad_top) * shape[0] / box.resized_shape[0]).astype(int)
        ox = np.floor((xs - box.pad_left) * shape[1] / box.resized_shape[1]).astype(int)
        oy, ox = oy[(oy >= 0) & (oy < shape[0])], ox[(ox >= 0) & (ox < shape[1])]
        hits.setdefault(case.category, []).append(bool(mask[np.ix_(oy, ox)].any()))
    per = {c: round(float(np.mean(v)), 3) for c, v in sorted(hits.items())}
    return {"cells": cells, "per_finding": per, "mean": round(float(np.mean(list(per.values()))), 3)}


def _phantoms_differ(folder: Path, n: int, seed: int, size: int, style: str, real_fraction: float) -> Optional[str]:
    """None when ``folder`` already holds the phantom set these arguments write, else what differs
    in words (e.g. "it holds real_fraction 0.6, this run asks for 0.3"), so a replaced set is
    never a silent surprise."""
    manifest = folder / "ground_truth" / "manifest.json"
    if not manifest.is_file():
        return "no phantom set there yet"
    try:
        info = json.loads(manifest.read_text())
    except ValueError:
        return "its ground_truth/manifest.json is not valid JSON"
    wanted_real = real_fraction if info.get("real_backgrounds") else 0.0
    have = {"n": info.get("n"), "seed": info.get("seed"), "size": info.get("size"),
            "style": info.get("style", "plain"), "real_fraction": float(info.get("real_fraction", 0.0))}
    want = {"n": n, "seed": seed, "size": size, "style": style, "real_fraction": float(wanted_real)}
    changed = [f"{key} {have[key]} (this run: {want[key]})" for key in want if have[key] != want[key]]
    return "it holds phantoms with " + ", ".join(changed) if changed else None


def _with_loss(config: AFLocConfig, **weights: float) -> AFLocConfig:
    values = config.to_dict()
    values["loss"].update(weights)
    return AFLocConfig.from_dict(values, base=load_config("publication"))


def _run(
    args, name: str, config: AFLocConfig, train_dir: Path, test_dir: Path, minutes: float, curve_every: int = 0
) -> dict[str, Any]:
    """Train from scratch for ``minutes`` (the cosine schedule ends at the deadline), then evaluate.

    ``curve_every``: also keep the weights every this many steps and score them (``curve``).
    """
    import shutil

    from afloc_training.trainer import train

    out = args.work / name
    shutil.rmtree(out, ignore_errors=True)
    snapshots = _Snapshots(out, args.work / f"{name}_curve", curve_every) if curve_every > 0 else None
    started, ticks = time.monotonic(), cpu_ticks()
    # Epochs far beyond reach: the time budget alone ends the run and its learning-rate schedule.
    budget = {"max_steps": args.steps} if args.steps else {"epochs": 100_000, "max_minutes": minutes}
    result = train(train_dir, out, config=config, seed=args.seed, save_every=curve_every, progress=False,
                   log_dir=args.work / "logs" / name, stop_check=snapshots, **budget)
    wall_minutes = (time.monotonic() - started) / 60
    share = cpu_share(ticks, cpu_ticks())
    if share is not None and share["steal"] > STEAL_WARNING:
        print(f"[quality] warning: {name}: the hypervisor took {share['steal']:.0%} of this machine's CPU time "
              f"while it trained (steal); its step count and maps are not comparable with an idle "
              f"machine's", file=sys.stderr)
    served = _served_similarity(config)
    metrics = _metrics_by_size(args, out, config, test_dir, list(dict.fromkeys([served, *_similarities(args)])))
    summary = {
        "checkpoint": str(out),
        "similarity": served,
        "loss_weights": {k: getattr(config.loss, k) for k in ("weight_word", "weight_sentence", "weight_global")},
        "train": {
            "budget_minutes": None if args.steps else minutes,
            "budget_steps": args.steps,
            "steps": result.steps,
            "epochs": round(result.steps / max(1, result.train_pairs // config.optim.batch_size), 2),
            "images_per_second": round(result.steps * config.optim.batch_size / max(result.seconds, 1e-9), 1),
            "stopped": result.stopped,
            "loop_minutes": round(result.seconds / 60, 2),
            "wall_minutes_with_setup": round(wall_minutes, 2),
            "final_train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "cpu_share": share,
            "warnings": result.warnings,
        },
        "metrics": metrics,
    }
    if snapshots is not None:
        summary["curve"] = _score_curve(args, snapshots, test_dir, result.history)
    overall = {similarity: m["overall"] for similarity, m in metrics.items()}
    print(f"[quality] {name}: {json.dumps(summary['train'])} -> {json.dumps(overall)}", file=sys.stderr)
    return summary


class _Snapshots:
    """A ``stop_check`` for :func:`train` that never stops: after each step it reads the step of
    the last saved checkpoint and copies the folder once that step reaches the next multiple of
    ``every`` (the trainer saves at those steps; an epoch end one step later can make it N + 1)."""

    def __init__(self, checkpoint: Path, folder: Path, every: int):
        import shutil

        self.checkpoint, self.folder, self.every = checkpoint, folder, every
        self.copied: list[tuple[int, Path]] = []
        shutil.rmtree(folder, ignore_errors=True)

    def __call__(self) -> bool:
        import shutil

        try:
            step = int(json.loads((self.checkpoint / "meta.json").read_text())["training"]["step"])
        except (OSError, ValueError, KeyError):
            return False  # nothing saved yet
        if step >= self.every * (len(self.copied) + 1):
            target = self.folder / f"step{step}"
            # Weights, config and text encoder; the optimiser state is not needed to score.
            shutil.copytree(self.checkpoint, target, ignore=shutil.ignore_patterns("train_state.pt"))
            self.copied.append((step, target))
        return False


def _score_curve(args, snapshots: _Snapshots, test_dir: Path, history: list[dict]) -> list[dict[str, Any]]:
    """Pointing game and CNR of every kept snapshot, in-domain and external, next to its val loss."""
    import shutil

    val_by_step = {h["step"]: h.get("val_loss") for h in history}
    curve = []
    for step, folder in snapshots.copied:
        # The validation loss of the last epoch that ended at or before this step.
        done = [s for s in val_by_step if s <= step]
        row: dict[str, Any] = {"step": step, "val_loss": val_by_step[max(done)] if done else None}
        similarity = _served_similarity(AFLocConfig.from_yaml(folder / "config.yaml"))
        scored = {
            "in_domain": evaluate_checkpoint(
                folder, test_dir, args.level, similarity, 0, args.seed, mirror=args.mirror, refine=args.refine
            )
        }
        scored.update({f"external_{k}": v for k, v in _external_metrics(args, folder, similarity, bootstrap=0).items()})
        for column, metrics in scored.items():
            row[column] = {k: metrics["overall"][k] for k in ("pointing_game", "cnr")}
        curve.append(row)
        print(f"[quality] curve: {json.dumps(row)}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
    return curve


def _similarities(args) -> list[str]:
    return [s.strip() for s in args.similarities.split(",") if s.strip()]


def _infer_sizes(args, config: AFLocConfig) -> list[int]:
    """The config's own inference size first (the side-by-side table and the external sets read
    maps there), then each other ``--infer-sizes`` side once."""
    own = config.data.inference_size
    extra = [int(s) for s in args.infer_sizes.split(",") if s.strip()]
    return [own] + [size for size in dict.fromkeys(extra) if size != own]


def _metrics_by_size(
    args, checkpoint: Path, config: AFLocConfig, test_dir: Path, similarities: list[str]
) -> dict[str, dict]:
    """In-domain metrics of ``checkpoint`` per reading size and similarity, keyed by
    :func:`_metric_key` (``dot`` at the config's own size, ``dot@224`` at another)."""
    return {
        _metric_key(similarity, size, config): evaluate_checkpoint(
            checkpoint, test_dir, args.level, similarity, args.bootstrap, args.seed, input_size=size,
            mirror=args.mirror, refine=args.refine,
        )
        for size in _infer_sizes(args, config)
        for similarity in similarities
    }


def _metric_key(similarity: str, size: int, config: AFLocConfig) -> str:
    """``dot`` at the config's own inference size, ``dot@192`` at another."""
    return similarity if size == config.data.inference_size else f"{similarity}@{size}"


def evaluate_checkpoint(
    checkpoint: Path, test_dir: Path, level: str, similarity: str, bootstrap: int, seed: int,
    input_size: Optional[int] = None, mirror: str = "auto", refine: str = "auto",
) -> dict:
    """Protocol metrics of ``checkpoint`` on the phantom test set (overall and per finding), maps
    read with ``similarity``, ``mirror`` and ``refine`` (``auto``: as the server reads them)."""
    from afloc_models.evaluation.cli import evaluate, load_cases, summarize
    from afloc_models.evaluation.metrics import DEFAULT_THRESHOLDS
    from afloc_models.inference.heatmap import HeatmapSettings
    from afloc_models.inference.predictor import AFLocPredictor

    cases, _ = load_cases(test_dir)
    settings = HeatmapSettings(level=level, similarity=similarity, mirror=mirror, refine=refine)
    predictor = AFLocPredictor.load(checkpoint, device="auto", settings=settings, input_size=input_size)
    records, skipped, _ = evaluate(predictor, cases, thresholds=DEFAULT_THRESHOLDS, level=level)
    summary = summarize(records, DEFAULT_THRESHOLDS, bootstrap=bootstrap, seed=seed)
    keys = ("pointing_game", "cnr", "miou", "mdice", "peak_distance")

    def pick(entry: dict) -> dict:
        return {k: _round(entry[k]["mean"]) for k in keys} | {
            f"{k}_ci95": [_round(entry[k]["ci95_low"]), _round(entry[k]["ci95_high"])] for k in ("pointing_game", "cnr")
        }

    return {
        "input_size": predictor.input_size,
        "mirror": predictor.settings.mirror,
        "refine": predictor.settings.refine,
        "cases": len(records),
        "skipped": len(skipped),
        "overall": pick(summary["overall"]),
        "per_finding": {c: {"n": e["n"], **pick(e)} for c, e in summary["per_category"].items()},
    }


def _round(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _write(path: Path, results: dict) -> None:
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
