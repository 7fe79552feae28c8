"""``afloc-train``: train AFLoc on a datastore folder, a CSV manifest, MIMIC-CXR-JPG or a PACS (DICOMweb).

One process::

    afloc-train --data DIR_OR_CSV --out CKPT_DIR [--config small|publication|published|FILE.yaml]
                [--epochs N | --max-steps N | --max-minutes M] [--resume] [--seed S] [--init-from CKPT]

Several processes (one per GPU, or gloo on CPU)::

    torchrun --nproc_per_node=N -m afloc_training.cli --data ... --out ...

A problem the user can fix (missing data, bad config, foreign checkpoint) prints one line naming it
and exits with status 1. SIGINT/SIGTERM stop after the current step, save, and exit with 130/143;
``--resume`` continues from there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Optional, Sequence

PROG = "afloc-train"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train AFLoc (annotation-free pathology localization) on image-report pairs.",
        epilog="Several processes: torchrun --nproc_per_node=N -m afloc_training.cli --data ... --out ...",
    )
    parser.add_argument(
        "--data", required=True,
        help="MONAI Label datastore folder, CSV manifest, MIMIC-CXR-JPG root, or DICOMweb URL (http://host/dicom-web: "
        "CR/DX images with the reports of their studies' SR instances)",
    )
    parser.add_argument("--out", required=True, help="checkpoint folder to write (loadable at any time during training)")
    parser.add_argument("--config", default=None, help="preset (small, publication, published) or YAML file; default small")
    parser.add_argument("--epochs", type=_positive_int, default=None, help="total epochs (default: the config's, or more to reach its optim.min_useful_steps)")
    parser.add_argument("--max-steps", type=_positive_int, default=None, help="total optimiser steps (global batches)")
    parser.add_argument("--max-minutes", type=_positive_float, default=None, help="stop and save after this much time; the cosine schedule ends then")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--init-from", default=None, help="checkpoint folder to fine-tune from")
    parser.add_argument("--save-every", type=_non_negative_int, default=500, help="save every N steps (0: epoch ends only)")
    parser.add_argument("--log-dir", default=None, help="TensorBoard folder (default: OUT/../logs/<name of OUT>)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--reports-root", default=None, help="MIMIC-CXR: root of the mimic-cxr-reports tree")
    parser.add_argument("--views", default="PA,AP", help="MIMIC-CXR: ViewPosition values to keep (default PA,AP)")
    parser.add_argument(
        "--dicomweb-cache", default=None,
        help="DICOMweb: where downloaded images are kept (default $AFLOC_DICOMWEB_CACHE or ~/.cache/afloc/dicomweb)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--trained-on", default=None,
        help="what the model is trained on, in words, stored in meta.json as trained_on and shown by "
        "the server (default: described from --data; phantoms are marked 'not for clinical images')",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"),
        stream=sys.stderr,
    )
    stop = _StopOnSignal()
    from afloc_models.errors import AFLocError

    if args.dicomweb_cache:
        os.environ["AFLOC_DICOMWEB_CACHE"] = str(args.dicomweb_cache)
    try:
        _check_cheaply(args)
        # torch, transformers and MONAI take seconds to import: only once the arguments look right.
        from afloc_training.trainer import train

        _quiet_transformers()
        result = train(
            args.data,
            args.out,
            config=args.config,
            epochs=args.epochs,
            max_steps=args.max_steps,
            max_minutes=args.max_minutes,
            resume=args.resume,
            seed=args.seed,
            init_from=args.init_from,
            progress=not args.no_progress,
            stop_check=stop,
            log_dir=args.log_dir,
            save_every=args.save_every,
            device=args.device,
            reports_root=args.reports_root,
            views=[v.strip() for v in args.views.split(",") if v.strip()],
            trained_on=args.trained_on,
        )
    except AFLocError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permission denied on --out or --log-dir
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; --resume continues from the last checkpoint", file=sys.stderr)
        return 130
    if rank == 0:
        val = f"{result.val_loss:.4f}" if result.val_loss is not None else "n/a"
        print(
            f"{PROG}: {result.stopped} after {result.steps} steps ({result.epochs} epochs, "
            f"{result.seconds / 60:.1f} min); val loss {val}; checkpoint {result.checkpoint}"
        )
        if result.unreadable:
            print(f"{PROG}: {len(result.unreadable)} unreadable image(s) skipped, e.g. {result.unreadable[0]}")
        for text in result.warnings:
            print(f"{PROG}: warning: {text}")
    if stop.signal_number is not None:
        return 128 + stop.signal_number
    return 0


def _check_cheaply(args: argparse.Namespace) -> None:
    """Errors that need no torch: a missing data source, an unknown preset or a broken YAML."""
    from pathlib import Path

    from afloc_models.config import load_config
    from afloc_models.errors import AFLocError

    from afloc_training.dicomweb import is_dicomweb_url

    if not is_dicomweb_url(args.data) and not Path(args.data).expanduser().exists():
        raise AFLocError(f"training data '{args.data}' does not exist")
    if args.config is not None:
        load_config(args.config)


class _StopOnSignal:
    """``stop_check`` that turns the first SIGINT/SIGTERM into a clean stop (save, then exit)."""

    def __init__(self):
        self.signal_number: Optional[int] = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, number, _frame) -> None:
        if self.signal_number is not None:  # a second signal: stop right away
            raise KeyboardInterrupt
        self.signal_number = number
        print(f"{PROG}: {signal.Signals(number).name}: stopping after this step and saving", file=sys.stderr)

    def __call__(self) -> bool:
        return self.signal_number is not None


def _quiet_transformers() -> None:
    """No "Loading weights" progress bars from transformers on every model build."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
