"""Writing evaluation results: ``results.json``, a markdown table, and overlay PNGs.

The results dictionary is built by :func:`afloc_models.evaluation.cli.summarize`; this module only
renders it. NaN ("not scored") becomes ``null`` in JSON and an em dash in markdown.

Overlay colours: the heatmap (``[-1, 1]``) goes from transparent dark blue through cyan and yellow
to red and is blended over the grayscale image; the predicted mask's outline is white, the
ground truth's outline green.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "HEADLINE_METRICS",
    "heat_colors",
    "markdown_report",
    "overlay",
    "to_jsonable",
    "published_markdown",
    "write_json",
    "write_markdown",
    "write_overlay",
]

#: Metrics shown in the main table, with their column titles.
HEADLINE_METRICS: tuple[tuple[str, str], ...] = (
    ("miou", "mIoU"),
    ("mdice", "mDice"),
    ("cnr", "CNR"),
    ("pointing_game", "Pointing game"),
)

# Colour map control points: value in [-1, 1] -> RGB in [0, 1].
_CMAP_POINTS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
_CMAP_RGB = np.array(
    [
        [0.05, 0.05, 0.35],
        [0.0, 0.35, 0.9],
        [0.0, 0.85, 0.85],
        [0.95, 0.9, 0.1],
        [0.9, 0.05, 0.05],
    ]
)
_PRED_OUTLINE = np.array([255, 255, 255], dtype=np.uint8)
_GT_OUTLINE = np.array([40, 220, 60], dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: NaN/inf -> None, numpy scalars and arrays -> Python, paths -> str."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``results`` as indented, strictly valid JSON (atomically)."""
    text = json.dumps(to_jsonable(results), indent=2, allow_nan=False) + "\n"
    return _atomic_write_text(Path(path), text)


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _fmt(value: Optional[float], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def _with_ci(entry: Mapping[str, Any]) -> str:
    text = _fmt(entry.get("mean"))
    low, high = entry.get("ci95_low"), entry.get("ci95_high")
    if text != "—" and low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
        text += f" [{_fmt(low)}, {_fmt(high)}]"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown_report(results: Mapping[str, Any]) -> str:
    """A markdown page: what was run, the headline table with 95% CIs, and the threshold sweep."""
    protocol = results["protocol"]
    data = results["data"]
    checkpoint = results["checkpoint"]
    thresholds = protocol["thresholds"]
    lines = [
        "# AFLoc localization results",
        "",
        f"- Checkpoint: `{checkpoint['path']}` (model version {checkpoint['model_version']})",
        f"- Data: `{data['path']}` ({data['format']}): {data['evaluated']} of {data['cases']} cases "
        f"evaluated, {data['skipped']} skipped",
        f"- Heatmaps: {protocol['level']} level, {protocol['similarity']} similarity, min-max "
        "normalised to [-1, 1] per image and prompt",
        f"- Thresholds: {', '.join(f'{t:g}' for t in thresholds)}; mIoU and mDice average over them; "
        f"empty predictions: {protocol['empty_prediction']}",
        "- Averages: mean per category, then across categories"
        + (
            f"; 95% CIs from {protocol['bootstrap']} bootstrap resamples of the samples"
            if protocol["bootstrap"]
            else ""
        ),
        "",
        "## Summary",
        "",
    ]
    header = ["Category", "n"] + [title for _, title in HEADLINE_METRICS]
    rows = []
    for category, entry in results["per_category"].items():
        rows.append([category, str(entry["n"])] + [_with_ci(entry[m]) for m, _ in HEADLINE_METRICS])
    overall = results["overall"]
    rows.append(["**Overall**", str(data["evaluated"])] + [f"**{_with_ci(overall[m])}**" for m, _ in HEADLINE_METRICS])
    lines += _table(header, rows)

    lines += ["", "## Threshold sweep (category-averaged)", ""]
    sweep_header = ["Category"] + [f"IoU@{t:g}" for t in thresholds] + [f"Dice@{t:g}" for t in thresholds]
    sweep_rows = []
    for category, entry in list(results["per_category"].items()) + [("**Overall**", overall)]:
        cells = [_fmt(entry[f"iou@{t:g}"]["mean"]) for t in thresholds]
        cells += [_fmt(entry[f"dice@{t:g}"]["mean"]) for t in thresholds]
        sweep_rows.append([category] + cells)
    lines += _table(sweep_header, sweep_rows)

    if results.get("overlays"):
        lines += ["", "## Overlays", ""]
        lines.append(
            "Heatmap from dark blue (-1) to red (1) over the image; white outline: predicted mask at "
            f"threshold {protocol['overlay_threshold']:g}; green outline: ground truth."
        )
        lines.append("")
        for name in results["overlays"]:
            lines.append(f"![{name}]({name})")
    if results.get("skipped_cases"):
        lines += ["", "## Skipped cases", ""]
        for item in results["skipped_cases"][:20]:
            lines.append(f"- `{item['image']}` / {item['prompt']!r}: {item['reason']}")
        if len(results["skipped_cases"]) > 20:
            lines.append(f"- ... and {len(results['skipped_cases']) - 20} more (see results.json)")
    return "\n".join(lines) + "\n"


def published_markdown(results: Mapping[str, Any]) -> str:
    """Tables of a ``--protocol published`` run (point estimates, as the published code reports)."""
    summary = results["published"]
    checkpoint = results.get("checkpoint", {})
    data = results.get("data", {})
    lines = [
        "# afloc-eval (published protocol)",
        "",
        f"Checkpoint `{checkpoint.get('model_version')}` (compat {checkpoint.get('compat')}), "
        f"{data.get('evaluated')} of {data.get('cases')} cases scored on the letterbox square.",
        "",
        *_table(
            ["metric", "value"],
            [["mIoU", _fmt(summary["miou"])], ["CNR", _fmt(summary["cnr"])]]
            + [[f"IoU (heatmap > {t})", _fmt(v)] for t, v in summary["iou_per_threshold"].items()],
        ),
        "",
        *_table(
            ["category", "n", "mIoU", "CNR"],
            [[c, str(v["n"]), _fmt(v.get("miou")), _fmt(v.get("cnr"))] for c, v in summary["per_category"].items()],
        ),
        "",
    ]
    return "\n".join(lines)


def write_markdown(path: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write the tables of ``results`` (either protocol) atomically."""
    if results.get("protocol", {}).get("name") == "published":
        return _atomic_write_text(Path(path), published_markdown(results))
    return _atomic_write_text(Path(path), markdown_report(results))


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------


def heat_colors(heatmap: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in ``[-1, 1]`` -> ``[H, W, 3]`` float RGB in ``[0, 1]``."""
    values = np.clip(np.asarray(heatmap, dtype=np.float64), -1.0, 1.0)
    return np.stack([np.interp(values, _CMAP_POINTS, _CMAP_RGB[:, c]) for c in range(3)], axis=-1)


def overlay(
    pixels: np.ndarray,
    heatmap: np.ndarray,
    pred_mask: Optional[np.ndarray] = None,
    gt_mask: Optional[np.ndarray] = None,
    max_side: int = 512,
) -> np.ndarray:
    """Heatmap blended over the image with mask outlines, as uint8 RGB ``[h, w, 3]``.

    Args:
        pixels: ``[H, W]`` or ``[H, W, 3]`` in ``[0, 1]``.
        heatmap: ``[H, W]`` in ``[-1, 1]``.
        pred_mask, gt_mask: bool ``[H, W]`` outlined in white and green.
        max_side: the result is shrunk so its long side is at most this.
    """
    height, width = heatmap.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h)

    gray = pixels if pixels.ndim == 2 else pixels.mean(axis=2)
    gray = _resize(gray.astype(np.float32), size, Image.Resampling.BILINEAR)
    heat = _resize(heatmap.astype(np.float32), size, Image.Resampling.BILINEAR)
    base = np.repeat(np.clip(gray, 0, 1)[:, :, None], 3, axis=2)
    # Cold regions stay mostly transparent so the anatomy remains readable.
    alpha = (0.15 + 0.45 * (np.clip(heat, -1, 1) + 1) / 2)[:, :, None]
    rgb = (1 - alpha) * base + alpha * heat_colors(heat)
    out = np.clip(rgb * 255, 0, 255).astype(np.uint8)
    for mask, colour in ((gt_mask, _GT_OUTLINE), (pred_mask, _PRED_OUTLINE)):
        if mask is not None:
            small = _resize(np.asarray(mask, dtype=np.uint8) * 255, size, Image.Resampling.NEAREST) > 127
            out[_outline(small)] = colour
    return out


def write_overlay(
    path: str | os.PathLike,
    pixels: np.ndarray,
    heatmap: np.ndarray,
    pred_mask: Optional[np.ndarray] = None,
    gt_mask: Optional[np.ndarray] = None,
    max_side: int = 512,
) -> Path:
    """Render :func:`overlay` and save it as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(pixels, heatmap, pred_mask, gt_mask, max_side)).save(path)
    return path


def _resize(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if (array.shape[1], array.shape[0]) == size:
        return np.asarray(array)
    return np.asarray(Image.fromarray(array).resize(size, resample=resample))


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels on the inner border of ``mask``, two pixels thick so they show when shrunk."""
    if not mask.any():
        return mask
    inner = ndimage.binary_erosion(mask, iterations=2, border_value=0)
    return mask & ~inner


def _atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
