"""One AFLoc training step, ours vs the published way, side by side in one run. Prints JSON.

Publication shape on a GPU (ResNet-50, BERT-base shaped text encoder with random weights,
batch 128, 224 px, 97 tokens, bf16 autocast)::

    python benchmarks/train_step.py --device cuda

Small shapes on a CPU (the default there)::

    python benchmarks/train_step.py --device cpu --batch 8 --image-size 128 --arch resnet18

Both variants run the same model, optimiser and batch; only word merging and the local loss
differ (``benchmarks/published_way.py``). Reported: median step time, images/s, peak GPU memory
(``torch.cuda.max_memory_allocated``) and the speed-up ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afloc_models.config import preset  # noqa: E402
from afloc_models.model import AFLoc  # noqa: E402
from benchmarks.common import bert_base_folder, cpu_model  # noqa: E402
from benchmarks.published_way import published_step_loss  # noqa: E402

WORDS = (
    "there is a small right pleural effusion with adjacent basilar atelectasis the cardiomediastinal "
    "silhouette is enlarged no pneumothorax is seen patchy opacities in the left lower lobe may reflect "
    "pneumonia mild pulmonary vascular congestion without frank edema"
).split()


def make_reports(batch: int, seed: int) -> list[list[str]]:
    """Reports of several sentences, long enough to fill the 97-token budget."""
    gen = torch.Generator().manual_seed(seed)
    reports = []
    for _ in range(batch):
        sentences = []
        for _ in range(8):
            idx = torch.randint(len(WORDS), (int(torch.randint(5, 12, (1,), generator=gen)),), generator=gen)
            sentences.append(" ".join(WORDS[i] for i in idx.tolist()))
        reports.append(sentences)
    return reports


def run_variant(model, optimizer, images, tokens, use_published: bool, steps: int, device: torch.device) -> dict:
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    )

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            losses = published_step_loss(model, images, tokens) if use_published else model(images, tokens)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        optimizer.step()
        return float(losses.total.detach())

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step()  # warm-up (allocator, kernels, autotuning)
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    result = {
        "step_s_median": round(median, 4),
        "step_s_all": [round(t, 4) for t in times],
        "images_per_s": round(images.shape[0] / median, 2),
        "loss": round(loss, 4),
    }
    if device.type == "cuda":
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on GPU, 8 on CPU")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 on GPU, 128 on CPU")
    parser.add_argument("--arch", default=None, help="resnet50 (GPU default) or resnet18 (CPU default)")
    parser.add_argument("--tokens", type=int, default=97)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 5 GPU, 2 CPU)")
    parser.add_argument("--chunk", type=int, default=None, help="local-loss chunk size (config default if unset)")
    parser.add_argument("--skip-published", action="store_true")
    parser.add_argument(
        "--working-size", type=int, default=0,
        help="resize inputs to this side inside the image encoder (299: the published working resolution)",
    )
    parser.add_argument(
        "--local-impls", default=None,
        help="comma-separated local-loss implementations measured side by side as ours_<impl> "
        "(auto, fused, chunked; default: fused,chunked on GPU, chunked on CPU)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (128 if gpu else 8)
    size = args.image_size or (224 if gpu else 128)
    steps = args.steps or (5 if gpu else 2)

    torch.manual_seed(0)
    config = preset("publication")
    config.compat = "published"  # the published objective, so both variants compute the same losses
    config.image.arch = args.arch or ("resnet50" if gpu else "resnet18")
    config.text.max_tokens = args.tokens
    if args.chunk is not None:
        config.loss.local_chunk_size = args.chunk
    if args.working_size:
        config.image.working_size = args.working_size
    with tempfile.TemporaryDirectory() as tmp:
        model = AFLoc(config, text_folder=bert_base_folder(Path(tmp)), text_random_init=True).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    tokens = model.tokenize(make_reports(batch, seed=0))
    images = torch.randn(batch, 1, size, size, device=device)

    result = {
        "benchmark": "train_step",
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({cpu_model() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "shape": {
            "batch": batch, "image_size": size, "arch": config.image.arch, "text": "bert-base (random init)",
            "tokens": int(tokens.input_ids.shape[1]), "words_max": int(tokens.n_words.max()),
            "embed_dim": config.embed_dim, "local_chunk_size": config.loss.local_chunk_size,
            "working_size": args.working_size or size,
            "autocast": "bf16" if gpu else "fp32",
        },
    }
    impls = (args.local_impls or ("fused,chunked" if gpu else "chunked")).split(",")
    for impl in impls:
        model.config.loss.local_impl = impl
        result[f"ours_{impl}"] = run_variant(model, optimizer, images, tokens, False, steps, device)
    result["ours"] = result[f"ours_{impls[0]}"]
    if not args.skip_published:
        try:
            result["published_way"] = run_variant(model, optimizer, images, tokens, True, steps, device)
            for impl in impls:
                result[f"speedup_{impl}"] = round(
                    result[f"ours_{impl}"]["images_per_s"] / result["published_way"]["images_per_s"], 2
                )
            result["speedup_images_per_s"] = result[f"speedup_{impls[0]}"]
        except torch.cuda.OutOfMemoryError as exc:  # the published way may not fit at all
            result["published_way"] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
