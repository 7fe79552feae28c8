#!/usr/bin/env python
"""Redraw the demo model's pictures in docs/app.md ("What the demo model shows").

- ``docs/images/demo-heatmaps.png``: the 8 overlays ``afloc-eval --overlays 8`` draws on the demo
  datastore's phantoms (heatmap, ground truth in green, predicted mask in white), 4 by 2;
- ``docs/images/demo-cxr0001.png``: the real radiograph ``cxr_0001`` (right lower lobe pneumonia)
  with the maps of three prompts, each peak circled.

Both read maps as the server does (mirror averaged). Prints the evaluation summary and each
prompt's peak (row and column as shares of the image's height and width), the figures docs/app.md
quotes. Needs the demo datastore and checkpoint that ``scripts/build_demo.py`` builds.

Usage::

    python scripts/build_demo.py && python scripts/demo_figures.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

REAL_IMAGE = "cxr_0001"
PROMPTS = ("right lower lobe consolidation", "left pleural effusion", "cardiomegaly")
PANEL_SIDE = 320  #: side of each panel of the cxr_0001 figure
OVERLAYS, GRID_COLUMNS, TILE = 8, 4, 256


def heatmap_grid(checkpoint: Path, datastore: Path, out: Path) -> dict:
    """Score the demo datastore with ``afloc-eval`` and tile its overlays; returns its results."""
    with tempfile.TemporaryDirectory(prefix="afloc-demo-figures-") as scratch:
        results_dir = Path(scratch) / "eval"
        subprocess.run(
            [sys.executable, "-m", "afloc_models.evaluation.cli", "--checkpoint", str(checkpoint),
             "--data", str(datastore), "--out", str(results_dir), "--overlays", str(OVERLAYS), "--quiet"],
            check=True,
        )
        tiles = sorted((results_dir / "overlays").glob("*.png"))
        if not tiles:
            raise SystemExit("demo_figures: afloc-eval wrote no overlays")
        rows = -(-len(tiles) // GRID_COLUMNS)
        sheet = Image.new("RGB", (GRID_COLUMNS * TILE, rows * TILE), "black")
        for i, path in enumerate(tiles):
            tile = Image.open(path).convert("RGB")
            tile.thumbnail((TILE, TILE))
            sheet.paste(tile, ((i % GRID_COLUMNS) * TILE, (i // GRID_COLUMNS) * TILE))
        sheet.save(out)
        return json.loads((results_dir / "results.json").read_text())


def real_radiograph_panels(checkpoint: Path, datastore: Path, out: Path) -> list[dict]:
    """The three prompts' maps on ``cxr_0001``, side by side, each peak circled."""
    from afloc_models.evaluation.report import overlay
    from afloc_models.imaging import read_image
    from afloc_models.inference.predictor import AFLocPredictor

    from afloc_training.data import load_pairs

    image = next((pair.image for pair in load_pairs(datastore).pairs if pair.id == REAL_IMAGE), None)
    if image is None:
        raise SystemExit(f"demo_figures: {REAL_IMAGE} is not in {datastore} (run scripts/build_demo.py)")
    predictor = AFLocPredictor.load(checkpoint, device="cpu")
    pixels = read_image(image).pixels
    result = predictor.localize(image, list(PROMPTS))
    panels, peaks = [], []
    for prompt, item in zip(PROMPTS, result):
        heat = item.heatmap
        row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
        peaks.append({"prompt": prompt, "row": round(row / heat.shape[0], 2), "column": round(col / heat.shape[1], 2)})
        panel = Image.fromarray(overlay(pixels, heat, max_side=PANEL_SIDE))
        draw = ImageDraw.Draw(panel)
        x, y = col * panel.width / heat.shape[1], row * panel.height / heat.shape[0]
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), outline=(255, 255, 0), width=2)
        draw.rectangle((0, 0, panel.width, 14), fill=(0, 0, 0))
        draw.text((4, 1), prompt, fill=(255, 255, 0))
        panels.append(panel)
    sheet = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), "black")
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width
    sheet.save(out)
    return peaks


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "demo" / "checkpoint")
    parser.add_argument("--datastore", type=Path, default=REPO_ROOT / "demo" / "datastore")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images")
    args = parser.parse_args(argv)
    for folder, what in ((args.checkpoint, "checkpoint"), (args.datastore, "datastore")):
        if not folder.is_dir():
            parser.error(f"no demo {what} at {folder}: run scripts/build_demo.py first")
    args.out.mkdir(parents=True, exist_ok=True)
    results = heatmap_grid(args.checkpoint, args.datastore, args.out / "demo-heatmaps.png")
    overall = results["overall"]
    print("demo datastore: " + ", ".join(f"{k} {overall[k]['mean']:.2f}" for k in ("pointing_game", "cnr", "miou", "mdice")))
    for name, values in sorted(results["per_category"].items()):
        print(f"  {name}: pointing game {values['pointing_game']['mean']:.2f} (n {values['n']})")
    for peak in real_radiograph_panels(args.checkpoint, args.datastore, args.out / "demo-cxr0001.png"):
        print(f"{REAL_IMAGE}: '{peak['prompt']}' peaks at row {peak['row']}, column {peak['column']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
