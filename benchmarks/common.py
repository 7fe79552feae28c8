"""Helpers shared by the benchmarks: offline model folders and timing statistics."""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path


def bert_base_folder(root: Path | None = None) -> Path:
    """A BERT-base shaped model folder (random weights at load) with MiniLM's uncased vocabulary.

    No clinical BERT is obtainable offline, so the benchmarks time an architecture of the
    publication's size (12 layers, 768 wide) rather than its weights.
    """
    from transformers import BertConfig

    from afloc_models.model import default_text_model_folder

    folder = Path(root or tempfile.mkdtemp(prefix="bert_base_")) / "bert-base-random"
    folder.mkdir(parents=True, exist_ok=True)
    BertConfig().save_pretrained(folder)
    minilm = default_text_model_folder()
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm / name).exists():
            shutil.copy(minilm / name, folder / name)
    return folder


def summarize(seconds: list[float]) -> dict[str, float]:
    """Median, p95 and count of a list of durations in seconds (reported in ms)."""
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 2),
        "p95_ms": round(1000 * p95, 2),
        "n": len(ordered),
    }
