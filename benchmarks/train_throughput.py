"""Training throughput end to end: JPEG files on disk -> data loader -> model step. Prints JSON.

Writes (once) a folder of radiograph-sized JPEGs with reports, then measures, side by side in
one run:

1. ``loader``: the trainer's own dataset + collate in a DataLoader with ``--workers`` processes,
   no model: the most images/s the data path can feed.
2. ``train``: :func:`afloc_training.trainer.train` itself for ``--steps`` steps (publication
   shape: ResNet-50 + BERT-base-shaped text encoder, bf16 autocast on CUDA): images/s the trainer
   sustains, and the share of that time the loop waited for data.
3. ``train_no_draft`` (``--compare-draft``): the same with JPEG draft decoding off.

GPU (publication shape; 5,000 files of 2,000 x 2,000 px, 16 loader processes)::

    python benchmarks/train_throughput.py --work /tmp/afloc-tp --n 5000 --size 2000 \\
        --workers 16 --batch 128 --steps 200 --device cuda

CPU smoke run (what the tests run)::

    python benchmarks/train_throughput.py --work /tmp/afloc-tp --n 16 --size 512 --unique 4 \\
        --workers 0 --batch 4 --steps 2 --device cpu --config small

Files are drawn by the phantom generator at ``--draw-size`` pixels (``--unique`` distinct
phantoms), enlarged to ``--size`` and saved as JPEG (quality 90); further files are hard links
of those (each is still read and decoded on its own).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afloc_models.config import load_config  # noqa: E402
from benchmarks.common import bert_base_folder  # noqa: E402

MARKER = "afloc-throughput.json"


def write_jpegs(folder: Path, n: int, size: int, unique: int, draw_size: int, seed: int = 0) -> Path:
    """A datastore folder of ``n`` JPEG radiographs (``size`` px) with ``.txt`` reports; reused when present."""
    from PIL import Image

    from afloc_training.phantoms import generate_phantom

    wanted = {"n": n, "size": size, "unique": unique, "draw_size": draw_size, "seed": seed}
    marker = folder / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("tp_*"):
        old.unlink()
    rng = np.random.default_rng(seed)
    originals = []
    for k in range(min(unique, n)):
        phantom = generate_phantom(rng, size=draw_size)
        image = Image.fromarray(phantom.image).resize((size, size), Image.BICUBIC)
        path = folder / f"tp_{k:05d}.jpg"
        image.save(path, "JPEG", quality=90)
        (folder / f"tp_{k:05d}.txt").write_text(phantom.report, encoding="utf-8")
        originals.append(path)
    for k in range(len(originals), n):
        source = originals[k % len(originals)]
        os.link(source, folder / f"tp_{k:05d}.jpg")
        os.link(source.with_suffix(".txt"), folder / f"tp_{k:05d}.txt")
    marker.write_text(json.dumps(wanted))
    return folder


def measure_loader(folder: Path, config, workers: int, batch: int, batches: int) -> dict:
    """Images/s of the trainer's dataset + collate alone (no model)."""
    from torch.utils.data import DataLoader

    from afloc_models.text_encoder import ReportTokenizer  # noqa: F401  (import cost outside timing)
    from afloc_models.model import AFLoc
    from afloc_training.data import PairDataset, ReportCollate, load_pairs

    pairs = load_pairs(folder)
    dataset = PairDataset(pairs, config.data, channels=config.image.in_channels, train=True)
    tokenizer = AFLoc(config).tokenizer
    collate = ReportCollate(tokenizer, config.image.in_channels, config.data.crop)
    loader = DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate, drop_last=True,
        prefetch_factor=4 if workers > 0 else None, persistent_workers=False,
    )
    iterator = iter(loader)
    next(iterator)  # workers started, first batch ready
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            images += len(next(iterator))
        except StopIteration:
            iterator = iter(loader)
            images += len(next(iterator))
    seconds = time.perf_counter() - start
    return {"images": images, "seconds": round(seconds, 3), "images_per_s": round(images / seconds, 1)}


def measure_train(folder: Path, config, steps: int, device: str) -> dict:
    from afloc_training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        result = train(folder, Path(tmp) / "ckpt", config=config, max_steps=steps, progress=False,
                       save_every=0, device=device, log_dir=Path(tmp) / "logs")
    return {
        "steps": result.steps,
        "images_per_s": round(result.images_per_s or 0.0, 1),
        "data_wait_fraction": round(result.data_wait_fraction or 0.0, 3),
        "seconds_total": round(result.seconds, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="folder for the JPEG files (reused)")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--size", type=int, default=2000, help="side of the JPEG files")
    parser.add_argument("--unique", type=int, default=200, help="distinct phantoms (the rest are hard links)")
    parser.add_argument("--draw-size", type=int, default=512, help="side the phantoms are drawn at")
    parser.add_argument("--config", default="publication")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compare-draft", action="store_true", help="also train with JPEG draft decoding off")
    args = parser.parse_args(argv)

    folder = write_jpegs(args.work / "jpegs", args.n, args.size, args.unique, args.draw_size)
    config = load_config(args.config)
    config.optim.batch_size = args.batch
    config.data.num_workers = args.workers
    config.data.val_fraction = 0.0
    if args.config == "publication":
        config.text.model_path = str(bert_base_folder(args.work))
        config.text.random_init = True
    result = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({platform.machine()})",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "files": {"n": args.n, "size": args.size, "unique": args.unique, "format": "jpeg q90"},
        "config": args.config, "batch": args.batch, "workers": args.workers,
        "loader": measure_loader(folder, config, args.workers, args.batch, max(4, min(args.steps, 50))),
        "train": measure_train(folder, config, args.steps, args.device),
    }
    if args.compare_draft:
        config.data.jpeg_draft = False
        result["loader_no_draft"] = measure_loader(folder, config, args.workers, args.batch, max(4, min(args.steps, 50)))
        result["train_no_draft"] = measure_train(folder, config, args.steps, args.device)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
