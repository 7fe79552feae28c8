"""How much each heatmap recipe loses with a perfect feature map (an oracle). Prints JSON.

For every case of a ground-truth set (default: a phantom test set), the ground-truth mask is
letterboxed and area-averaged onto the deep feature grid: the best map a model could produce on
that grid. Each recipe of :mod:`afloc_models.inference.heatmap` then renders it (``project``:
upsample, smooth with sigma 0.5 cells on the square; ``published``: smooth with sigma 1.5 cells
on the grid, then upsample), and the result is scored with this package's protocol on the
original grid. No model is involved, so this isolates the recipe::

    python benchmarks/recipe_oracle.py --data /tmp/phantoms-test --size 224 --stride 16
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    from afloc_models.evaluation.cli import load_cases, score_case
    from afloc_models.evaluation.metrics import aggregate
    from afloc_models.imaging import letterbox, read_image
    from afloc_models.inference.heatmap import HeatmapSettings, render_heatmaps

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="ground truth (afloc-eval --data)")
    parser.add_argument("--size", type=int, default=224, help="input square")
    parser.add_argument("--stride", type=int, default=16, help="deep-feature stride (16: 14x14 at 224)")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args(argv)
    cases, _ = load_cases(args.data)
    if args.limit:
        cases = cases[: args.limit]
    cells = args.size // args.stride
    records: dict[str, list[dict]] = {"project": [], "published": []}
    for case in cases:
        shape = read_image(case.image_path).pixels.shape[:2]
        gt = case.mask(shape)
        square, box = letterbox(gt.astype(np.float32), args.size)
        grid = square.reshape(cells, args.stride, cells, args.stride).mean(axis=(1, 3))  # oracle map
        maps = torch.from_numpy(grid)[None]
        for recipe in records:
            (heatmap,) = render_heatmaps(box, HeatmapSettings(recipe=recipe), deep_maps=maps, level="deep")
            records[recipe].append({"category": case.category, **score_case(heatmap, gt, (0.1, 0.2, 0.3, 0.4, 0.5), "zero")})
    result = {
        "benchmark": "recipe_oracle",
        "data": str(args.data),
        "cases": len(cases),
        "size": args.size,
        "cells": cells,
        "recipes": {
            recipe: {k: round(v, 3) for k, v in aggregate(rows)["overall"].items() if k in ("miou", "mdice", "cnr", "pointing_game")}
            for recipe, rows in records.items()
        },
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
