"""Helpers shared by the benchmarks: offline model folders, timing statistics, and how much of
the machine's CPU time a run really had (``/proc/stat``)."""

from __future__ import annotations

import platform
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Optional


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


# The first eight counters of /proc/stat's "cpu" line, in clock ticks since boot.
_CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_ticks(stat_text: Optional[str] = None) -> Optional[dict[str, int]]:
    """The machine-wide CPU time counters of ``/proc/stat`` (or of ``stat_text``); None where the
    file does not exist (not Linux) or its first line is not the expected ``cpu`` line."""
    if stat_text is None:
        try:
            stat_text = Path("/proc/stat").read_text()
        except OSError:
            return None
    first = stat_text.splitlines()[0].split() if stat_text.strip() else []
    if len(first) < 5 or first[0] != "cpu" or not all(v.isdigit() for v in first[1:]):
        return None
    values = [int(v) for v in first[1 : 1 + len(_CPU_FIELDS)]]
    values += [0] * (len(_CPU_FIELDS) - len(values))  # old kernels lack iowait ... steal
    return dict(zip(_CPU_FIELDS, values))


def cpu_share(before: Optional[dict[str, int]], after: Optional[dict[str, int]]) -> Optional[dict[str, float]]:
    """How the machine's CPU time between two :func:`cpu_ticks` readings was spent, as fractions:
    ``busy`` (this and every other process), ``idle`` (including waiting for I/O) and ``steal``
    (taken by the hypervisor for other guests: a shared virtual machine under load).

    A timed run on a machine with 50% steal gets about half the steps of the same run on an idle
    one, so benchmark records carry this beside their figures. None when either reading is None
    or no time passed.
    """
    if before is None or after is None:
        return None
    delta = {k: after[k] - before[k] for k in _CPU_FIELDS}
    total = sum(delta.values())
    if total <= 0:
        return None
    busy = delta["user"] + delta["nice"] + delta["system"] + delta["irq"] + delta["softirq"]
    return {
        "busy": round(busy / total, 3),
        "idle": round((delta["idle"] + delta["iowait"]) / total, 3),
        "steal": round(delta["steal"] / total, 3),
    }


def cpu_model() -> Optional[str]:
    """The processor's model name from ``/proc/cpuinfo`` (e.g. "AMD EPYC 9B14"), else
    :func:`platform.processor`, else None: records name the machine their figures came from."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
