"""Command line of ``afloc-phantoms``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from afloc_models.errors import AFLocError
from afloc_training.phantoms.generator import MAX_SIZE, MIN_SIZE
from afloc_training.phantoms.style import STYLES
from afloc_training.phantoms.writer import (
    GROUND_TRUTH_DIR,
    RECIPE_REAL_FRACTION,
    RECIPE_STYLE,
    write_phantom_datastore,
)

def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="afloc-phantoms",
        description=(
            "Write synthetic chest-radiograph phantoms (8-bit PNG + report .txt) as a MONAI Label "
            f"datastore folder, with finding masks and findings.csv in {GROUND_TRUTH_DIR}/."
        ),
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    parser.add_argument("--n", required=True, type=int, help="number of phantoms (> 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same files")
    parser.add_argument(
        "--size", type=int, default=256, help=f"image side in pixels ({MIN_SIZE}-{MAX_SIZE}, default 256)"
    )
    parser.add_argument(
        "--style", choices=STYLES, default=RECIPE_STYLE,
        help=f"plain: clean phantoms; varied: domain randomisation of pose, texture, exposure, noise, devices "
        f"and finding appearance (default {RECIPE_STYLE}, the training recipe)",
    )
    parser.add_argument(
        "--real-fraction", type=float, default=RECIPE_REAL_FRACTION,
        help="share of studies drawn on real radiographs (training split of the --backgrounds folder) "
        f"instead of phantoms (default {RECIPE_REAL_FRACTION}, the training recipe; ignored without backgrounds)",
    )
    parser.add_argument(
        "--backgrounds", default="auto",
        help="cxr-notes folder of real radiographs; 'auto' (default): ../shared/data/cxr-notes beside the "
        "repository when present, else phantoms only; 'none': phantoms only",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace phantoms already in --out")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing phantoms (same files; default 1)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console script ``afloc-phantoms``; returns the process exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.n <= 0:
        parser.error(f"--n must be a positive integer, got {args.n}")
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        parser.error(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {args.size}")
    if not 0.0 <= args.real_fraction <= 1.0:
        parser.error(f"--real-fraction must be between 0 and 1, got {args.real_fraction}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out '{args.out}' is a file, not a folder")
    try:
        out = write_phantom_datastore(
            args.out, args.n, args.seed, args.size, overwrite=args.overwrite, workers=max(1, args.workers),
            style=args.style, backgrounds=None if args.backgrounds == "none" else args.backgrounds,
            real_fraction=args.real_fraction,
        )
    except AFLocError as error:
        print(f"afloc-phantoms: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        reason = error.strerror or error
        print(f"afloc-phantoms: error: cannot write to '{args.out}': {reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("afloc-phantoms: interrupted; every file already written is complete", file=sys.stderr)
        return 130
    print(f"wrote {args.n} phantoms to {out} (ground truth in {out / GROUND_TRUTH_DIR})")
    return 0
