"""Multi-process training helpers: process-group setup and a gradient-correct feature gather.

AFLoc's losses contrast every image with every report of the batch, so with data parallelism each
rank must see the features of the *whole* global batch as negatives. :func:`gather_features`
all-gathers image and text features with ``torch.distributed.nn.functional.all_gather``, whose
backward sends each rank the gradient of its own rows (summed over ranks). Every rank then
computes the same global loss; DistributedDataParallel averages the parameter gradients over the
ranks, which gives exactly the gradient of one process running the full global batch (as long as
BatchNorm statistics are not part of the comparison: each rank normalises its own rows).

Ranks may hold different numbers of rows (an unreadable image was dropped) and their reports
different numbers of words and sentences: tensors are zero-padded to the largest shape before the
gather and the padding is cut away afterwards, so the padding never reaches the loss.

Launch with ``torchrun --nproc_per_node=N -m afloc_training.cli ...``; a plain ``python -m afloc_training.cli``
runs one process without a process group.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist

from afloc_models.image_encoder import ImageFeatures
from afloc_models.text_encoder import TextFeatures


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]  #: ``nccl``, ``gloo`` or None (single process, no process group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None


def init_distributed(device: Optional[str] = None, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group described by torchrun's environment, or run alone.

    Args:
        device: ``cpu`` or ``cuda`` to override the automatic choice (CUDA when available).
        timeout_minutes: collective timeout (rank 0 validates and saves while the others wait).
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size <= 1:
        return DistContext(0, 1, 0, target, None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, target, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (keeps stop decisions in step)."""
    if not ctx.is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not ctx.is_distributed:
        return [obj]
    result: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(result, obj)
    return result


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.is_distributed:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_sizes(ctx: DistContext, *sizes: int) -> torch.Tensor:
    """``[world_size, len(sizes)]`` integer table (on the CPU) of every rank's ``sizes``.

    A single process needs no collective, so nothing touches the device (no host-device sync).
    """
    if not ctx.is_distributed:
        return torch.tensor(sizes, dtype=torch.long).unsqueeze(0)
    local = torch.tensor(sizes, dtype=torch.long, device=ctx.device)
    table = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(table, local)
    return torch.stack(table).cpu()


def gather_features(
    ctx: DistContext, image: ImageFeatures, text: TextFeatures
) -> tuple[ImageFeatures, TextFeatures]:
    """All ranks' features concatenated in rank order, differentiable w.r.t. the local ones.

    Args:
        image: this rank's ``shallow [b, D, h1, w1]``, ``deep [b, D, h2, w2]``, ``global_ [b, D]``.
        text: this rank's ``words [b, D, W]``, ``sentences [b, D, S]``, ``report [b, D]`` and counts.

    Returns:
        The same structures with ``B = sum of b over ranks`` rows; ``W`` and ``S`` become the
        largest over ranks (zero padding past each report's counts, which the loss masks out).
    """
    if not ctx.is_distributed:
        return image, text
    rows, max_words, max_sentences = _text_sizes(ctx, text)
    gathered_image = ImageFeatures(
        shallow=_gather_rows(ctx, image.shallow, rows),
        deep=_gather_rows(ctx, image.deep, rows),
        global_=_gather_rows(ctx, image.global_, rows),
    )
    return gathered_image, _gather_text(ctx, text, rows, max_words, max_sentences)


def gather_negatives(
    ctx: DistContext, negatives: TextFeatures, valid: torch.Tensor
) -> tuple[TextFeatures, torch.Tensor]:
    """All ranks' per-image negative reports (``loss.swap_negatives``) in rank order.

    Row ``i`` of the result belongs to row ``i`` of :func:`gather_features`'s images, because
    both concatenate the ranks' rows in the same order.

    Args:
        negatives: this rank's ``[b]`` negative reports (one per image, e.g. location-swapped).
        valid: ``[b]`` bool, False where an image has no negative (nothing to swap).

    Returns:
        ``([B] features, [B] bool)`` with ``B = sum of b over ranks``.
    """
    if not ctx.is_distributed:
        return negatives, valid
    rows, max_words, max_sentences = _text_sizes(ctx, negatives)
    flags = _gather_rows(ctx, valid.to(ctx.device, torch.uint8), rows, differentiable=False)
    return _gather_text(ctx, negatives, rows, max_words, max_sentences), flags.bool()


def _text_sizes(ctx: DistContext, text: TextFeatures) -> tuple[list[int], int, int]:
    """Every rank's row count, and the largest word and sentence counts over the ranks."""
    table = gather_sizes(ctx, text.report.shape[0], text.words.shape[2], text.sentences.shape[2])
    max_words, max_sentences = (int(v) for v in table[:, 1:].max(dim=0).values.tolist())
    return [int(r) for r in table[:, 0].tolist()], max_words, max_sentences


def _gather_text(
    ctx: DistContext, text: TextFeatures, rows: list[int], max_words: int, max_sentences: int
) -> TextFeatures:
    return TextFeatures(
        words=_gather_rows(ctx, _pad_last(text.words, max_words), rows),
        n_words=_gather_rows(ctx, text.n_words, rows, differentiable=False),
        sentences=_gather_rows(ctx, _pad_last(text.sentences, max_sentences), rows),
        n_sentences=_gather_rows(ctx, text.n_sentences, rows, differentiable=False),
        report=_gather_rows(ctx, text.report, rows),
    )


def _gather_rows(ctx: DistContext, tensor: torch.Tensor, rows: list[int], differentiable: bool = True) -> torch.Tensor:
    """Every rank's ``tensor`` (``rows[r]`` rows on rank ``r``, other dims equal) concatenated."""
    padded = _pad_rows(tensor, max(rows))
    if differentiable:
        with warnings.catch_warnings():
            # Deprecated in favour of a private API, but it is the public autograd-aware gather.
            warnings.simplefilter("ignore", FutureWarning)
            parts = torch.distributed.nn.functional.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, rows)], dim=0)


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((missing, *tensor.shape[1:]))], dim=0)


def _pad_last(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[-1]
    if missing <= 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, missing))
