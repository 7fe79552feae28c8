"""Inference latency of ``AFLocPredictor`` on a real chest radiograph. Prints JSON.

The image is ``RG1_UNCI.dcm`` from ``pydicom-data`` (CR, 1955 x 1841, 15 bits stored); the
model has the publication's shape: ResNet-50 at 224 px and a BERT-base shaped text encoder
(random weights: no clinical BERT is available offline; latency depends on shape only).

Measured, each as p50 / p95 over ``--repeats`` runs after a warm-up:

- ``first_prompt``: one image + one prompt from the DICOM file to mask and boxes, caches empty
  (decode, letterbox, image encoder, text encoder, heatmap on the 1955 x 1841 grid, boxes).
- ``further_prompt``: another, never-seen prompt on the same file (image features cached: text
  encoder and heatmap only); ``further_prompt_without_probability`` the same with
  ``probability=False`` (the counterpart prompt is not encoded).
- ``stages``: the pieces of the first measurement timed alone, to see where the time goes.

Each is measured with mirror averaging on (the default for project checkpoints: the image and its
mirror are encoded together, and a prompt naming a side also encodes its mirrored text) and off,
side by side (``--mirror``).

Usage::

    python benchmarks/infer_latency.py                # CPU, and CUDA when available
    python benchmarks/infer_latency.py --repeats 30 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afloc_models.config import preset  # noqa: E402
from afloc_models.imaging import letterbox, read_image  # noqa: E402
from afloc_models.inference.heatmap import (  # noqa: E402
    HeatmapSettings,
    deep_similarity,
    mask_boxes,
    render_heatmaps,
    threshold_mask,
)
from afloc_models.inference.predictor import AFLocPredictor  # noqa: E402
from afloc_models.model import AFLoc  # noqa: E402
from benchmarks.common import bert_base_folder, summarize  # noqa: E402

FINDINGS = ("pleural effusion", "pneumothorax", "consolidation", "nodule", "atelectasis", "edema", "opacity")
SIDES = ("left", "right", "bilateral")
ZONES = ("upper", "middle", "lower", "apical", "basal")
TARGETS_CPU_MS = {"first_prompt": 500.0, "further_prompt": 60.0, "further_prompt_without_probability": 60.0}


def chest_cr_path() -> Path:
    """``RG1_UNCI.dcm`` inside the installed ``pydicom-data`` package."""
    import site

    roots = [Path(p) for p in site.getsitepackages() + [site.getusersitepackages()]]
    for root in roots:
        candidate = root / "data_store" / "data" / "RG1_UNCI.dcm"
        if candidate.is_file():
            return candidate
    raise SystemExit("RG1_UNCI.dcm not found: pip install pydicom-data")


def distinct_prompts() -> list[str]:
    """Many different prompts, so each measured 'further prompt' misses the text cache."""
    return [f"{side} {zone} {finding}" for finding in FINDINGS for side in SIDES for zone in ZONES]


def build_model(root: Path, text: str = "bert-base") -> AFLoc:
    """Publication image side; text encoder BERT-base shaped (random) or the default MiniLM."""
    config = preset("publication")
    if text == "bert-base":
        config = dataclasses.replace(
            config, text=dataclasses.replace(config.text, model_path=str(bert_base_folder(root)), random_init=True)
        )
    torch.manual_seed(0)
    return AFLoc(config)


def timed(
    function: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None]
) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each run.

    CPU time is what a run costs whatever else the machine is doing: on a shared machine, wall
    time also counts the waits for cores held by other processes.
    """
    for _ in range(warmup):
        function()
    sync()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def both(times: tuple[list[float], list[float]]) -> dict:
    wall, cpu = times
    stats = summarize(wall)
    cpu_stats = summarize(cpu)
    stats.update({"cpu_p50_ms": cpu_stats["p50_ms"], "cpu_p95_ms": cpu_stats["p95_ms"]})
    return stats


def measure(model: AFLoc, device: str, precision: str, path: Path, repeats: int, warmup: int, mirror: str = "on") -> dict:
    predictor = AFLocPredictor(model, device=device, precision=precision, settings=HeatmapSettings(mirror=mirror))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    prompts = iter(distinct_prompts() * 20)

    def first() -> None:
        predictor.clear_cache()
        result = predictor.localize(path, next(prompts))
        assert result[0].mask.shape == (1955, 1841)

    def further() -> None:
        predictor.localize(path, next(prompts))

    def further_without_probability() -> None:
        predictor.localize(path, next(prompts), probability=False)

    first_s = timed(first, repeats, warmup, sync)
    predictor.clear_cache()
    predictor.localize(path, "cardiomegaly")  # the image is now cached
    further_s = timed(further, repeats, warmup, sync)
    further_mask_s = timed(further_without_probability, repeats, warmup, sync)

    # Stages of the first measurement, one at a time.
    settings = HeatmapSettings()
    pixels = read_image(path).pixels
    square, box = letterbox(pixels, model.config.data.inference_size)
    batch = ((torch.from_numpy(square)[None, None] - 0.5) / 0.5).to(device, dtype=predictor.dtype)
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        features = model.encode_image(batch)
        tokens = model.tokenize(["left pleural effusion", "no left pleural effusion"])
        text = model.encode_text(tokens)
    deep, sentence = features.deep[0].float(), text.sentences[:1, :, 0].float()

    def heatmap_only() -> None:
        heat = render_heatmaps(box, settings, deep_maps=deep_similarity(deep, sentence))[0]
        mask_boxes(threshold_mask(heat, settings.threshold), heat)

    def image_encoder() -> None:
        with torch.inference_mode():
            model.encode_image(batch)

    def text_encoder() -> None:
        with torch.inference_mode():
            model.encode_text(model.tokenize(["left pleural effusion", "no left pleural effusion"]))

    stage_repeats = max(5, repeats // 2)
    stages = {
        "read_dicom": both(timed(lambda: read_image(path), stage_repeats, 1, sync)),
        "letterbox": both(timed(lambda: letterbox(pixels, model.config.data.inference_size), stage_repeats, 1, sync)),
        "image_encoder": both(timed(image_encoder, stage_repeats, 1, sync)),
        "text_encoder_2_prompts": both(timed(text_encoder, stage_repeats, 1, sync)),
        "heatmap_mask_boxes": both(timed(heatmap_only, stage_repeats, 1, sync)),
    }
    return {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "precision": precision,
        "mirror": mirror,
        "first_prompt": both(first_s),
        "further_prompt": both(further_s),
        "further_prompt_without_probability": both(further_mask_s),
        "stages": stages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU measurement")
    parser.add_argument(
        "--text",
        choices=("bert-base", "minilm"),
        default="bert-base",
        help="text encoder: BERT-base shaped (publication size) or the installed MiniLM (project default)",
    )
    parser.add_argument(
        "--precision", default="float32,bfloat16", help="comma-separated predictor precisions to measure"
    )
    parser.add_argument("--mirror", default="on,off", help="comma-separated mirror settings to measure (on, off)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # RG1_UNCI's PixelSpacing 0\0 warning on every read

    path = chest_cr_path()
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    mirrors = [m.strip() for m in args.mirror.split(",") if m.strip()]
    if not mirrors or any(m not in ("on", "off") for m in mirrors):
        parser.error(f"--mirror must be a comma list of on and off, got {args.mirror!r}")
    with tempfile.TemporaryDirectory(prefix="afloc_latency_") as root:
        model = build_model(Path(root), args.text)
        report = {
            "benchmark": "infer_latency",
            "image": {"file": path.name, "shape": list(read_image(path).shape)},
            "model": {
                "image_encoder": model.config.image.arch,
                "input_size": model.config.data.inference_size,
                "text_encoder": (
                    "BERT-base shape (12 x 768), random weights"
                    if args.text == "bert-base"
                    else "all-MiniLM-L6-v2 (6 x 384)"
                ),
                "embed_dim": model.config.embed_dim,
            },
            "host": {
                "cpu_count": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "load_average_1min_at_start": round(os.getloadavg()[0], 2),
            },
            "targets_cpu_ms_p50": TARGETS_CPU_MS,
            "results": [],
        }
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
        for device in devices:
            for precision in precisions:
                for mirror in mirrors:
                    # The predictor converts the model in place: a fresh one per measurement.
                    fresh = build_model(Path(root), args.text) if report["results"] else model
                    report["results"].append(
                        measure(fresh, device, precision, path, args.repeats, args.warmup, mirror=mirror)
                    )
    report["host"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    report["cpu_meets_targets"] = {
        f"{result['precision']}, mirror {result['mirror']}": {
            name: result[name]["p50_ms"] <= target for name, target in TARGETS_CPU_MS.items()
        }
        for result in report["results"]
        if result["device"] == "cpu"
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
