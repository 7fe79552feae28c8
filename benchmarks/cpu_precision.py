"""The ``small`` training step on a CPU in fp32 and under bf16 autocast, side by side. Prints JSON.

    python benchmarks/cpu_precision.py [--batch 32] [--repeats 8] [--out results.json]

Times what ``optim.cpu_precision`` changes: the image encoder's forward and backward (autocast
or not), with the multilevel loss in fp32 and an Adam update, on one batch of random images and
phantom-style reports (the frozen text body's features computed once, as the trainer's cache
does). The two precisions alternate, so both see the same machine state. Reports medians, p95
and the fp32/bf16 ratio, and whether this CPU has native bf16 (``auto`` uses bf16 only then).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afloc_models.model import AFLoc  # noqa: E402
from afloc_training.trainer import native_cpu_bf16  # noqa: E402
from benchmarks.common import cpu_model, summarize  # noqa: E402

REPORTS = (
    ["small right pleural effusion", "left lower lobe atelectasis"],
    ["there is a nodule in the right upper lobe", "the heart size is normal"],
    ["cardiomegaly", "mild pulmonary edema", "no pneumothorax"],
    ["no acute cardiopulmonary process"],
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="training crop side (small: 128)")
    parser.add_argument("--repeats", type=int, default=8, help="timed steps per precision")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = AFLoc("small").train()
    model.image_encoder.to(memory_format=torch.channels_last)
    model.text_encoder.model.eval()
    images = torch.randn(args.batch, 1, args.size, args.size).contiguous(memory_format=torch.channels_last)
    tokens = model.tokenize([REPORTS[i % len(REPORTS)] for i in range(args.batch)])
    with torch.no_grad():
        text = model.encode_text(tokens)  # frozen body: the trainer caches these
    params = [p for p in model.image_encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = model.encode_image(images)
        features = type(features)(*(t.float() for t in (features.shallow, features.deep, features.global_)))
        loss = model.compute_loss(features, text).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for name in times:  # warm-up: oneDNN picks its kernels on the first call
        step(name == "bf16")
    for _ in range(args.repeats):
        for name in times:
            times[name].append(step(name == "bf16"))
    result = {
        "benchmark": "cpu_precision",
        "machine": {"platform": platform.platform(), "processor": cpu_model() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "native_bf16": native_cpu_bf16()},
        "shape": {"batch": args.batch, "size": args.size, "config": "small"},
        "step": {name: summarize(values) for name, values in times.items()},
    }
    result["fp32_over_bf16"] = round(result["step"]["fp32"]["p50_ms"] / result["step"]["bf16"]["p50_ms"], 2)
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.out:
        args.out.write_text(text_out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
