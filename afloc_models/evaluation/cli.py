"""``afloc-eval``: localization metrics of a checkpoint on a ground-truth set (the AFLoc protocol).

For every case (image, prompt, ground truth) the predictor's heatmap on the original pixel grid is
min-max normalised to ``[-1, 1]`` and scored against the ground-truth mask: IoU and Dice at each
threshold (0.1 ... 0.5 by default) and their means (mIoU, mDice), the signed contrast-to-noise
ratio and the pointing game. Metrics are averaged per category, then across categories, with
percentile-bootstrap 95% confidence intervals (1000 resamples by default).

``--protocol published`` scores instead as the published AFLoc code does (the 224 letterbox map
with its padding, a 14 px border left out, floored boxes on that grid, ``>`` thresholds, NaN IoU
for empty predictions, overlapping-box pixels out of CNR, per-category means per threshold; see
:mod:`afloc_models.evaluation.published_protocol`): those are the numbers that compare with the
paper's table. The default ``project`` protocol scores the map on the original pixel grid.

Outputs in ``--out``: ``results.json`` (everything, per-sample records included), ``results.md``
(tables) and ``overlays/*.png`` (heatmap and masks over the image for a sample of cases).

Example::

    afloc-eval --checkpoint runs/afloc --data data/phantoms --out results/phantoms
    afloc-eval --checkpoint runs/afloc --data ms_cxr.csv --images /data/mimic-cxr-jpg --out results/mscxr
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from afloc_models.errors import AFLocError, ConfigError
from afloc_models.evaluation.ground_truth import (
    GroundTruthCase,
    load_ground_truth,
    read_coco,
    read_mask_folder,
    read_ms_cxr,
    read_rsna_pneumonia,
)
from afloc_models.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    aggregate,
    bootstrap_ci,
    cnr,
    peak_distance,
    pointing_game,
    threshold_sweep,
)
from afloc_models.evaluation.report import write_json, write_markdown, write_overlay

__all__ = ["build_parser", "evaluate", "evaluate_published", "load_cases", "main", "summarize"]

PROTOCOLS = ("project", "published")

FORMATS = ("auto", "mscxr", "rsna", "coco", "masks")
#: Where a mask-folder table is looked for when ``--data`` is a folder.
MASK_TABLES = ("findings.csv", "ground_truth/findings.csv")


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def load_cases(data: Path, fmt: str = "auto", images: Optional[Path] = None) -> tuple[list[GroundTruthCase], str]:
    """Read the ground truth; returns the cases and the format actually used.

    ``data`` is a CSV or COCO JSON file, or (mask format) a folder holding ``findings.csv`` or
    ``ground_truth/findings.csv`` (a phantom datastore).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if data.is_dir():
        table = next((data / name for name in MASK_TABLES if (data / name).is_file()), None)
        if table is None:
            raise ConfigError(
                f"'{data}' is a folder without {' or '.join(MASK_TABLES)}; pass the ground-truth "
                "CSV or JSON file itself"
            )
        if fmt not in ("auto", "masks"):
            raise ConfigError(f"--format {fmt} needs a file, but '{data}' is a folder")
        data, fmt = table, "masks"
    options: dict[str, Any] = {}
    if images is not None:
        if fmt == "masks":
            raise ConfigError("--images does not apply to --format masks (paths are relative to the CSV)")
        options["images_dir"] = images
    if fmt == "auto":
        cases = load_ground_truth(data, **options)
        fmt = _detected_format(data)
    else:
        reader = {"mscxr": read_ms_cxr, "rsna": read_rsna_pneumonia, "coco": read_coco, "masks": read_mask_folder}[fmt]
        cases = reader(data, **options)
    return cases, fmt


def _detected_format(path: Path) -> str:
    if path.suffix.lower() == ".json":
        return "coco"
    with path.open(encoding="utf-8-sig") as handle:
        header = handle.readline()
    if "mask_file" in header:
        return "masks"
    if "patientId" in header:
        return "rsna"
    return "mscxr"


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def score_case(
    heatmap: np.ndarray, gt: np.ndarray, thresholds: Sequence[float], empty_prediction: str
) -> dict[str, float]:
    """Protocol metrics of one heatmap ``[H, W]`` against its ground truth ``[H, W]``."""
    record = threshold_sweep(heatmap, gt, thresholds, normalize=True, empty_prediction=empty_prediction)
    record["cnr"] = cnr(heatmap, gt)
    record["pointing_game"] = float(pointing_game(heatmap, gt)) if gt.any() else math.nan
    record["peak_distance"] = peak_distance(heatmap, gt) if gt.any() else math.nan
    return record


def evaluate(
    predictor: Any,
    cases: Sequence[GroundTruthCase],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    empty_prediction: str = "zero",
    level: Optional[str] = None,
    keep: Sequence[int] = (),
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, str]], dict[int, tuple]]:
    """Score every case; a case whose image, prompt or mask cannot be used is skipped.

    Cases on the same image are localized in one call (the image is encoded once).

    Returns:
        ``(records, skipped, kept)``: one record per scored case (category, case id, prompt,
        image and the metrics), one entry with a reason per skipped case, and for the case
        indices in ``keep`` the ``(heatmap, ground truth)`` pair (for overlays).
    """
    keep = set(keep)
    walk = _CaseWalk(cases, progress)
    kept: dict[int, tuple] = {}
    for image_path, usable in walk.images():
        try:
            result = predictor.localize(image_path, [cases[i].prompt for i in usable], level=level)
        except AFLocError as exc:
            walk.skip_all(usable, str(exc))
            continue
        for position, index in enumerate(usable):
            heatmap = result[position].heatmap
            try:
                gt = cases[index].mask(result.image_shape)
            except AFLocError as exc:
                walk.skip(index, str(exc))
                continue
            walk.record(index, score_case(heatmap, gt, thresholds, empty_prediction))
            if index in keep:
                kept[index] = (heatmap, gt)
    return walk.records(), walk.skipped, kept


class _CaseWalk:
    """Cases grouped by image (each image is encoded once), prompts checked first, with progress.

    Collects one record per scored case and one entry with a reason per skipped case.
    """

    def __init__(self, cases: Sequence[GroundTruthCase], progress: bool):
        self.cases = cases
        self.progress = progress
        self.skipped: list[dict[str, str]] = []
        self._records: dict[int, dict[str, Any]] = {}

    def images(self):
        """Yields ``(image_path, usable case indices)`` for every image with a usable prompt."""
        from tqdm import tqdm

        from afloc_models.inference.predictor import normalize_prompt

        groups: OrderedDict[Path, list[int]] = OrderedDict()
        for index, case in enumerate(self.cases):
            groups.setdefault(case.image_path, []).append(index)
        with tqdm(total=len(self.cases), desc="afloc-eval", unit="case", disable=not self.progress,
                  file=sys.stderr) as bar:
            for image_path, indices in groups.items():
                usable = []
                for index in indices:
                    try:
                        normalize_prompt(self.cases[index].prompt)
                        usable.append(index)
                    except AFLocError as exc:
                        self.skip(index, str(exc))
                if usable:
                    yield image_path, usable
                bar.update(len(indices))

    def skip(self, index: int, reason: str) -> None:
        case = self.cases[index]
        self.skipped.append(
            {"case_id": case.case_id, "image": str(case.image_path), "prompt": case.prompt, "reason": reason}
        )

    def skip_all(self, indices: Sequence[int], reason: str) -> None:
        for index in indices:
            self.skip(index, reason)

    def record(self, index: int, metrics: dict[str, Any]) -> None:
        case = self.cases[index]
        self._records[index] = {
            "category": case.category, "case_id": case.case_id, "prompt": case.prompt,
            "image": str(case.image_path), **metrics,
        }

    def records(self) -> list[dict[str, Any]]:
        return [self._records[i] for i in sorted(self._records)]


def evaluate_published(
    predictor: Any,
    cases: Sequence[GroundTruthCase],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Score every case with the published protocol on the predictor's input square.

    Returns:
        ``(records, skipped)`` as :func:`evaluate` (records hold ``iou@t`` and ``cnr``).
    """
    from afloc_models.evaluation.published_protocol import case_counts, score_square

    walk = _CaseWalk(cases, progress)
    for image_path, usable in walk.images():
        try:
            squares, box = predictor.square_heatmaps(image_path, [cases[i].prompt for i in usable], level="deep")
        except AFLocError as exc:
            walk.skip_all(usable, str(exc))
            continue
        for position, index in enumerate(usable):
            try:
                counts = case_counts(cases[index], box.original_shape, box)
            except AFLocError as exc:
                walk.skip(index, str(exc))
                continue
            walk.record(index, score_square(squares[position], counts, thresholds))
    return walk.records(), walk.skipped


def metric_names(thresholds: Sequence[float]) -> list[str]:
    names = ["miou", "mdice", "cnr", "pointing_game", "peak_distance"]
    names += [f"iou@{t:g}" for t in thresholds] + [f"dice@{t:g}" for t in thresholds]
    return names


def summarize(
    records: Sequence[dict[str, Any]], thresholds: Sequence[float], bootstrap: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Category-then-overall means with bootstrap 95% CIs for every metric.

    Returns:
        ``{"overall": {metric: {mean, ci95_low, ci95_high}}, "per_category": {category:
        {"n": n, metric: {...}}}, "micro": {metric: mean over samples}}``.
    """
    names = metric_names(thresholds)
    if not records:
        empty = {m: {"mean": math.nan, "ci95_low": math.nan, "ci95_high": math.nan} for m in names}
        return {"overall": empty, "per_category": {}, "micro": {m: math.nan for m in names}}
    table = aggregate(records)

    def entry(subset: Sequence[dict[str, Any]], mean: float, metric: str) -> dict[str, float]:
        low = high = math.nan
        if bootstrap > 0 and any(math.isfinite(float(r.get(metric, math.nan))) for r in subset):
            interval = bootstrap_ci(subset, metric=metric, n=bootstrap, seed=seed)
            low, high = interval.low, interval.high
        return {"mean": mean, "ci95_low": low, "ci95_high": high}

    overall = {m: entry(records, table["overall"].get(m, math.nan), m) for m in names}
    per_category: dict[str, dict[str, Any]] = {}
    for category, means in table["per_category"].items():
        subset = [r for r in records if str(r["category"]) == category]
        per_category[category] = {"n": means["n"], **{m: entry(subset, means.get(m, math.nan), m) for m in names}}
    micro = {m: table["micro"].get(m, math.nan) for m in names}
    return {"overall": overall, "per_category": per_category, "micro": micro}


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"thresholds must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one threshold")
    if any(not -1.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds apply to a [-1, 1] heatmap; got {text!r}")
    return values


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afloc-eval",
        description="Evaluate text-prompted localization with the AFLoc protocol (IoU/Dice over "
        "thresholds, CNR, pointing game; per-category then overall means with bootstrap CIs).",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="AFLoc checkpoint folder")
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="ground truth: MS-CXR or RSNA CSV, COCO JSON, a mask-folder findings.csv, or a folder "
        "holding findings.csv or ground_truth/findings.csv (phantom datastore)",
    )
    parser.add_argument("--out", required=True, type=Path, help="results folder (created)")
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="project",
        help="project: maps on the original pixel grid (default); published: the published AFLoc "
        "evaluation on the 224 letterbox square (compares with the paper's table)",
    )
    parser.add_argument("--format", choices=FORMATS, default="auto", help="ground-truth format (default: detect)")
    parser.add_argument("--images", type=Path, help="image folder the table's paths are relative to")
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        default=DEFAULT_THRESHOLDS,
        help="thresholds on the [-1, 1] heatmap (default: 0.1,0.2,0.3,0.4,0.5)",
    )
    parser.add_argument(
        "--empty",
        choices=("zero", "drop"),
        default="zero",
        help="an empty predicted mask scores 0 (zero, default) or is left out (drop)",
    )
    parser.add_argument(
        "--similarity", choices=("auto", "dot", "cosine"), default="auto",
        help="feature similarity of the maps (auto: the one the checkpoint was trained with)",
    )
    parser.add_argument("--level", choices=("deep", "shallow", "fused"), default="deep", help="feature level")
    parser.add_argument(
        "--recipe",
        choices=("auto", "project", "published"),
        default="auto",
        help="heatmap recipe (auto: the checkpoint's compat; see docs/inference.md)",
    )
    parser.add_argument(
        "--mirror", choices=("auto", "on", "sides", "off"), default="auto",
        help="average each map with the mirrored image's (sides: only for prompts that name a side; "
        "auto: sides for project checkpoints, off for published ones, and off with --protocol published "
        "whatever the checkpoint; see docs/inference.md)",
    )
    parser.add_argument(
        "--refine", choices=("auto", "guided", "off"), default="auto",
        help="refine each map with a guided filter that follows the image's edges (auto: guided for "
        "project checkpoints, off for published ones and with --protocol published; see docs/inference.md)",
    )
    parser.add_argument("--bootstrap", type=_non_negative, default=1000, help="bootstrap resamples (0: no CIs)")
    parser.add_argument("--overlays", type=_non_negative, default=16, help="overlay PNGs to write (0: none)")
    parser.add_argument("--limit", type=_non_negative, default=0, help="evaluate only the first N cases (0: all)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _overlay_indices(n_cases: int, count: int) -> list[int]:
    """``count`` case indices spread evenly over the list (deterministic)."""
    if count <= 0 or n_cases == 0:
        return []
    if count >= n_cases:
        return list(range(n_cases))
    return sorted({int(round(i)) for i in np.linspace(0, n_cases - 1, count)})


def _overlay_name(rank: int, case: GroundTruthCase) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{case.category}_{case.image_path.stem}")
    return f"{rank:03d}_{stem[:60]}.png"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        cases, fmt = load_cases(args.data, args.format, args.images)
        if args.limit:
            cases = cases[: args.limit]
        if not cases:
            raise ConfigError(f"'{args.data}' holds no cases to evaluate")

        # Heavy imports (torch, transformers) only once the inputs look right.
        from afloc_models.imaging import read_image
        from afloc_models.inference.heatmap import DEFAULT_THRESHOLD, HeatmapSettings
        from afloc_models.inference.predictor import AFLocPredictor

        settings = HeatmapSettings(
            level=args.level, similarity=args.similarity, recipe=args.recipe, mirror=args.mirror, refine=args.refine
        )
        if args.protocol == "published":
            from afloc_models.evaluation.published_protocol import GRID

            # The published evaluation reads every map once, on the 224 px square: no mirror
            # averaging unless it is asked for by name, whatever the checkpoint.
            if args.mirror == "auto":
                settings = dataclasses.replace(settings, mirror="off")
            if args.refine == "auto":
                settings = dataclasses.replace(settings, refine="off")
            predictor = AFLocPredictor.load(args.checkpoint, device=args.device, settings=settings, input_size=GRID)
            return _main_published(args, cases, fmt, predictor, started)
        predictor = AFLocPredictor.load(args.checkpoint, device=args.device, settings=settings)
        chosen = _overlay_indices(len(cases), args.overlays)
        records, skipped, kept = evaluate(
            predictor,
            cases,
            thresholds=args.thresholds,
            empty_prediction=args.empty,
            level=args.level,
            keep=chosen,
            progress=not args.quiet,
        )
        summary = summarize(records, args.thresholds, bootstrap=args.bootstrap, seed=args.seed)

        out: Path = args.out
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "overlays").glob("*.png"):  # from an earlier run into the same folder
            stale.unlink()
        overlay_names = []
        for rank, index in enumerate(sorted(kept)):
            heatmap, gt = kept[index]
            case = cases[index]
            name = f"overlays/{_overlay_name(rank, case)}"
            pixels = read_image(case.image_path).pixels
            write_overlay(out / name, pixels, heatmap, heatmap >= DEFAULT_THRESHOLD, gt)
            overlay_names.append(name)

        results = {
            "tool": "afloc-eval",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "checkpoint": {"path": str(args.checkpoint), "model_version": predictor.model_version},
            "data": {
                "path": str(args.data),
                "format": fmt,
                "cases": len(cases),
                "evaluated": len(records),
                "skipped": len(skipped),
            },
            "protocol": {
                "name": "project",
                "heatmap_normalisation": "min-max to [-1, 1] per image and prompt",
                "thresholds": list(args.thresholds),
                "empty_prediction": args.empty,
                "similarity": predictor.settings.similarity,
                "mirror": predictor.settings.mirror,
                "refine": predictor.settings.refine,
                "level": args.level,
                "recipe": predictor.settings.recipe,
                "aggregation": "mean per category, then mean across categories",
                "bootstrap": args.bootstrap,
                "confidence": 0.95,
                "seed": args.seed,
                "overlay_threshold": DEFAULT_THRESHOLD,
            },
            **summary,
            "samples": records,
            "skipped_cases": skipped,
            "overlays": overlay_names,
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_json(out / "results.json", results)
        write_markdown(out / "results.md", results)
    except AFLocError as exc:
        print(f"afloc-eval: error: {exc}", file=sys.stderr)
        return 2

    overall = results["overall"]
    print(
        f"afloc-eval: {len(records)} of {len(cases)} cases scored ({len(skipped)} skipped) in "
        f"{results['seconds']:.1f} s; mIoU {overall['miou']['mean']:.3f}, mDice {overall['mdice']['mean']:.3f}, "
        f"CNR {overall['cnr']['mean']:.3f}, pointing game {overall['pointing_game']['mean']:.3f}"
    )
    print(f"afloc-eval: wrote {out / 'results.json'}, {out / 'results.md'} and {len(overlay_names)} overlays")
    if not records:
        print("afloc-eval: error: no case could be scored; see skipped_cases in results.json", file=sys.stderr)
        return 1
    return 0


def _main_published(args: argparse.Namespace, cases: list, fmt: str, predictor: Any, started: float) -> int:
    """``--protocol published``: score, write results.json / results.md, print the summary."""
    from afloc_models.evaluation.published_protocol import MARGIN, summarize_published

    if args.level != "deep":
        raise ConfigError("--protocol published scores the deep-level map; drop --level")
    records, skipped = evaluate_published(predictor, cases, thresholds=args.thresholds, progress=not args.quiet)
    summary = summarize_published(records, args.thresholds)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "tool": "afloc-eval",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": {"path": str(args.checkpoint), "model_version": predictor.model_version, "compat": predictor.compat},
        "data": {"path": str(args.data), "format": fmt, "cases": len(cases), "evaluated": len(records), "skipped": len(skipped)},
        "protocol": {
            "name": "published",
            "grid": f"{predictor.input_size} px letterbox square, padding included",
            "margin_px": MARGIN,
            "thresholds": list(args.thresholds),
            "threshold_rule": "heatmap > t",
            "empty_prediction": "NaN (left out)",
            "aggregation": "per threshold: mean per category, then across categories; then mean over thresholds",
            "recipe": predictor.settings.recipe,
            "mirror": predictor.settings.mirror,
            "refine": predictor.settings.refine,
        },
        "published": summary,
        "samples": records,
        "skipped_cases": skipped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out / "results.json", results)
    write_markdown(out / "results.md", results)
    print(
        f"afloc-eval: published protocol, {len(records)} of {len(cases)} cases scored ({len(skipped)} skipped) in "
        f"{results['seconds']:.1f} s; mIoU {summary['miou']:.3f}, CNR {summary['cnr']:.3f}"
    )
    print(f"afloc-eval: wrote {out / 'results.json'} and {out / 'results.md'}")
    if not records:
        print("afloc-eval: error: no case could be scored; see skipped_cases in results.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
