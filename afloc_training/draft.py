"""Report-driven draft labels: the positive findings of an image's report, localized by AFLoc.

:func:`draft_from_report` turns one image and its report into a :class:`Draft`: the report's
positive findings (:func:`afloc_training.findings.report_findings`; negated ones draft nothing,
uncertain ones are marked) become prompts, each prompt's mask becomes one segment of a single
label (value ``i + 1``; where masks overlap the prompt with the higher heat wins), and every
segment keeps its source sentence, certainty, score and zero-shot probability. A draft's
``uncertainty`` (0-1, higher = review first) is the largest over its segments of
``1 - |2p - 1|`` for the zero-shot probability ``p`` of the finding, and 1 for a finding the
report itself marks as uncertain.

``afloc-draft`` (``python -m afloc_training.draft``) drafts every image with a report of a
datastore folder, CSV manifest or DICOMweb URL (the sources of :func:`afloc_training.data.load_pairs`)
into a folder: ``<id>.png`` (the label, 8-bit, value = segment) and ``<id>.json`` (segments,
sentences, scores, uncertainty). A rerun skips images whose draft is already there for the same
report and model (``--overwrite`` redoes them), so an interrupted run resumes. The MONAI Label app
drafts into its datastore instead (label tag ``afloc_draft``, ``POST /afloc/draft``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from afloc_training.findings import Finding, report_findings

logger = logging.getLogger("afloc.draft")

__all__ = ["Draft", "DraftSegment", "combine_masks", "draft_from_report", "report_hash", "main"]

PROG = "afloc-draft"
#: Most prompts drafted per image (the localize task's own limit).
MAX_PROMPTS = 8


@dataclass(frozen=True)
class DraftSegment:
    """One segment of a draft: a finding of the report and its mask's statistics."""

    value: int
    prompt: str
    finding: str
    sentence: str
    certainty: str
    cue: str
    score: float
    probability: Optional[float]
    pixels: int


@dataclass
class Draft:
    """A draft label for one image (``label`` is None when the report has no positive finding)."""

    label: Optional[np.ndarray]
    segments: list[DraftSegment]
    image_shape: tuple[int, int]
    spacing: Optional[tuple[float, float]]
    model_version: str
    uncertainty: float
    report_hash: str
    threshold: Optional[float] = None
    left_out: list[str] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """JSON-ready description (what a datastore keeps as label info)."""
        return {
            "source": "report",
            "model": "afloc",
            "model_version": self.model_version,
            "report_hash": self.report_hash,
            "uncertainty": round(float(self.uncertainty), 4),
            "threshold": self.threshold,
            "status": "pending_review",
            "segments": [asdict(s) for s in self.segments],
            "label_names": {s.prompt: s.value for s in self.segments},
            "left_out": self.left_out,
        }


def report_hash(report: str) -> str:
    """Short fingerprint of a report's text (a draft is redone when its report changes)."""
    return hashlib.sha1(report.strip().encode("utf-8")).hexdigest()[:16]


def combine_masks(heatmaps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    """One label ``[H, W]`` (uint8) from P masks: value ``i + 1`` where prompt ``i`` wins.

    A pixel inside several masks goes to the prompt with the highest heat there (the first on
    ties); a pixel in no mask is 0. The infer task ``afloc`` uses the same rule.
    """
    if len(masks) == 1:
        return masks[0].astype(np.uint8)
    # One pass per prompt keeping the best heat so far: memory O(H*W), not O(P*H*W) (eight
    # stacked float32 copies of a 4096 x 4096 heatmap were half a gigabyte).
    label = np.zeros(masks[0].shape, dtype=np.uint8)
    best = np.full(masks[0].shape, -np.inf, dtype=np.float32)
    for index, (heat, mask) in enumerate(zip(heatmaps, masks)):
        wins = np.greater(heat, best, where=mask, out=np.zeros(mask.shape, dtype=bool))
        label[wins] = index + 1
        np.copyto(best, heat, where=wins)
    return label


def draft_from_report(predictor: Any, image: Any, report: str, threshold: Optional[float] = None) -> Draft:
    """Draft one image from its report (see the module docstring).

    Args:
        predictor: an :class:`afloc_models.inference.AFLocPredictor`.
        image: what ``predictor.localize`` takes (a path or an array).
        report: the report text.
        threshold: mask threshold on the ``[-1, 1]`` heatmap (default: the predictor's).

    The image is not read when the report has no positive finding.
    """
    findings: list[Finding] = report_findings(report)
    digest = report_hash(report)
    version = str(getattr(predictor, "model_version", "unknown"))
    left_out = [f.prompt for f in findings[MAX_PROMPTS:]]
    findings = findings[:MAX_PROMPTS]
    if not findings:
        return Draft(None, [], (0, 0), None, version, 0.0, digest, threshold)
    located = predictor.localize(image, [f.prompt for f in findings], threshold=threshold)
    results = located.results
    label = combine_masks([r.heatmap for r in results], [r.mask for r in results])
    counts = np.bincount(label.ravel(), minlength=len(results) + 1)
    segments, uncertainty = [], 0.0
    for i, (finding, result) in enumerate(zip(findings, results)):
        p = result.probability
        u = 1.0 if finding.certainty == "uncertain" or p is None else 1.0 - abs(2.0 * float(p) - 1.0)
        uncertainty = max(uncertainty, u)
        segments.append(
            DraftSegment(
                value=i + 1, prompt=finding.prompt, finding=finding.finding, sentence=finding.sentence,
                certainty=finding.certainty, cue=finding.cue, score=round(float(result.score), 4),
                probability=None if p is None else round(float(p), 4), pixels=int(counts[i + 1]),
            )
        )  # fmt: skip
    return Draft(
        label, segments, tuple(located.image_shape), located.spacing, located.model_version, uncertainty,
        digest, results[0].threshold, left_out,
    )


# ----------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Draft labels from reports: each positive finding of an image's report is localized by AFLoc.",
    )
    parser.add_argument("--data", required=True, help="datastore folder, CSV manifest or DICOMweb URL (http://host/dicom-web)")
    parser.add_argument("--checkpoint", required=True, help="AFLoc checkpoint folder")
    parser.add_argument("--out", required=True, help="folder for <id>.png labels and <id>.json details")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold on the [-1, 1] heatmap")
    parser.add_argument("--limit", type=int, default=None, help="draft at most this many images")
    parser.add_argument("--overwrite", action="store_true", help="redo drafts that are already there")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="PyTorch CPU threads (default 1: measured 280 images/min with 1 thread vs 55 with 2 on a busy "
        "2-core CPU; 0 keeps PyTorch's own choice)",
    )
    parser.add_argument("--dicomweb-cache", default=None, help="DICOMweb: where downloaded images are kept")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from afloc_models.errors import AFLocError

    if args.dicomweb_cache:
        os.environ["AFLOC_DICOMWEB_CACHE"] = str(args.dicomweb_cache)
    try:
        summary = run(args)
    except AFLocError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again to continue", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Draft every image with a report of ``args.data`` into ``args.out``; returns counts."""
    from afloc_models.inference import AFLocPredictor
    from afloc_training.data import load_pairs

    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(int(args.threads))
    pairs = load_pairs(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = AFLocPredictor.load(args.checkpoint, device=args.device)
    counts = {"drafted": 0, "no_positive_finding": 0, "kept": 0, "failed": 0}
    started = time.perf_counter()
    todo = list(pairs)[: args.limit] if args.limit else list(pairs)
    for pair in todo:
        # The pair holds the report's normalised sentences; full stops keep them apart.
        report = "".join(f"{sentence}. " for sentence in pair.sentences).strip()
        meta_file = out / f"{pair.id}.json"
        if not args.overwrite and _up_to_date(meta_file, report_hash(report), predictor.model_version):
            counts["kept"] += 1
            continue
        try:
            draft = draft_from_report(predictor, pair.image, report, threshold=args.threshold)
        except Exception as exc:  # one bad image must not stop the run
            counts["failed"] += 1
            logger.warning("%s: could not draft '%s': %s", PROG, pair.image, exc)
            continue
        if draft.label is not None:
            _atomic_write(out / f"{pair.id}.png", _png(draft.label))
            counts["drafted"] += 1
        else:
            counts["no_positive_finding"] += 1
        info = {"id": pair.id, "image": str(pair.image), **draft.info()}
        _atomic_write(meta_file, json.dumps(info, indent=2).encode("utf-8"))
    seconds = time.perf_counter() - started
    done = counts["drafted"] + counts["no_positive_finding"]
    return {
        **counts,
        "images": len(todo),
        "skipped_listing": dict(pairs.skipped),
        "seconds": round(seconds, 2),
        "images_per_min": round(60.0 * done / seconds, 1) if seconds > 0 and done else None,
        "out": str(out),
    }


def _up_to_date(meta_file: Path, digest: str, version: str) -> bool:
    try:
        info = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("report_hash") == digest and info.get("model_version") == version


def _png(label: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(label.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
