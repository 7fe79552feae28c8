"""AFLoc's contrastive losses.

- :func:`global_loss`: symmetric InfoNCE between global image and report embeddings.
- :func:`local_loss`: the attention-based local loss of GLoRIA, which AFLoc applies twice
  (words <-> shallow features, sentences <-> deep features).

The local loss scores every (image, text) pair of the batch. Materialising all pairs at once
costs ``B * B * N * L`` attention weights per intermediate (tens of GiB at the publication's
batch of 128), so the score matrix is built in chunks of image rows, each chunk under
activation checkpointing: the forward keeps only the ``[chunk, B]`` scores and the backward
recomputes one chunk at a time. No Python loop runs over batch items inside a chunk.

On CUDA the attention tiles can instead be computed on chip by the Triton kernels of
:mod:`afloc_models.fused_local_loss` (``impl="fused"``, opt-in): only the ``[B, B, L, D]``
attended contexts reach global memory. Measured on an H200 at the publication's shape they are
slower than the chunked path (0.71 against 0.27 s a step, 1.7x the memory;
docs/records/train-step-h200-2026-12-04.json), so ``impl="auto"`` is the chunked path everywhere.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from afloc_models.config import LOCAL_ATTENTIONS

_EPS = 1e-8


def global_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temp3: float = 10.0,
    negatives: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE on cosine similarity.

    Args:
        image_emb: ``[B, D]`` global image embeddings.
        text_emb: ``[B, D]`` report embeddings; row i pairs with image i.
        temp3: scale applied to the cosine similarities.
        negatives: optional ``(emb [B, D], valid [B] bool)``: extra texts (e.g. location-swapped
            reports) that every image must score below its own report; only the image-to-text
            direction sees them, and columns marked invalid are left out.

    Returns:
        ``(loss_i2t, loss_t2i)``: mean cross entropies, images over texts and texts over images.
    """
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"expected matching [B, D] inputs, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    texts = text_emb if negatives is None else torch.cat([text_emb, negatives[0]], dim=0)
    scores = temp3 * cosine_matrix(image_emb, texts)  # [B, B] or [B, 2B]
    return _contrast(scores, None if negatives is None else negatives[1])


def _contrast(scores: torch.Tensor, negative_valid: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropies of a scaled score matrix ``[B, B]`` (or ``[B, 2B]`` with extra negative
    columns, masked by ``negative_valid`` ``[B]``): rows over all columns, columns over rows."""
    batch = scores.shape[0]
    labels = torch.arange(batch, device=scores.device)
    rows = scores
    if negative_valid is not None:
        keep = torch.cat([torch.ones(batch, dtype=torch.bool, device=scores.device), negative_valid.to(scores.device)])
        rows = scores.masked_fill(~keep.unsqueeze(0), float("-inf"))
    return F.cross_entropy(rows, labels), F.cross_entropy(scores[:, :batch].t(), labels)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` ``[N, D]`` with every row of ``b`` ``[M, D]`` -> ``[N, M]``."""
    norms = a.norm(dim=1, keepdim=True) * b.norm(dim=1, keepdim=True).t()
    return (a @ b.t()) / norms.clamp(min=_EPS)


def local_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    lengths: torch.Tensor,
    temp1: float = 4.0,
    temp2: float = 5.0,
    temp3: float = 10.0,
    chunk_size: int = 16,
    impl: str = "auto",
    negatives: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    attention: str = "words_first",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention-based local contrastive loss over all (image, text) pairs.

    For image i and text j, each valid word attends over the regions of image i; the word is
    compared (cosine) with its attended context, and the comparisons are aggregated into one
    score ``S[i, j]``. Cross entropy over rows and columns of ``S`` gives the two losses.

    Args:
        image_features: ``[B, D, H, W]`` local image features.
        text_features: ``[B, D, L]`` word (or sentence) features, padded beyond ``lengths``.
        lengths: ``[B]`` valid positions per text, each >= 1.
        temp1: sharpens the attention over regions.
        temp2: sharpness of the log-sum-exp over words.
        temp3: scale of the score matrix.
        chunk_size: image rows of ``S`` computed (and recomputed in backward) at once; 0 = all
            at once without checkpointing (chunked implementation only).
        impl: ``auto`` (the chunked PyTorch path, the faster one measured on CPU and GPU alike),
            ``chunked``, or ``fused`` (the Triton kernels; CUDA only).
        negatives: optional ``(features [B, D, L'], lengths [B], valid [B] bool)``: extra texts
            scored against every image in the image-to-text direction only (see
            :func:`global_loss`).
        attention: how a word finds its regions (see
            :data:`afloc_models.config.LOCAL_ATTENTIONS`).

    Returns:
        ``(loss_i2t, loss_t2i)``.
    """
    valid = None
    if negatives is not None:
        extra, extra_lengths, valid = negatives
        text_features, lengths = _stack_texts(text_features, extra), torch.cat([lengths, extra_lengths.to(lengths.device)])
    scores = local_score_matrix(image_features, text_features, lengths, temp1, temp2, chunk_size, impl, attention) * temp3
    return _contrast(scores, valid)


def _stack_texts(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[B1, D, L1]`` and ``[B2, D, L2]`` -> ``[B1 + B2, D, max(L1, L2)]``, zero-padded."""
    width = max(a.shape[2], b.shape[2])
    return torch.cat([F.pad(a, (0, width - a.shape[2])), F.pad(b, (0, width - b.shape[2]))], dim=0)


def local_score_matrix(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    lengths: torch.Tensor,
    temp1: float = 4.0,
    temp2: float = 5.0,
    chunk_size: int = 16,
    impl: str = "auto",
    attention: str = "words_first",
) -> torch.Tensor:
    """Unscaled local scores ``S`` ``[B_img, B_txt]`` (see :func:`local_loss`)."""
    if attention not in LOCAL_ATTENTIONS:
        raise ValueError(f"local attention must be one of {', '.join(LOCAL_ATTENTIONS)}, got {attention!r}")
    if image_features.ndim != 4 or text_features.ndim != 3:
        raise ValueError(
            f"expected image [B, D, H, W] and text [B, D, L], got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"feature widths differ: {image_features.shape[1]} vs {text_features.shape[1]}")
    if lengths.device.type == "cpu" and bool((lengths < 1).any()):
        # Checked where it is free; on a GPU this would stall the step on a host-device sync.
        raise ValueError("every text needs at least one valid position")
    regions = image_features.flatten(2)  # [Bi, D, N]
    positions = torch.arange(text_features.shape[2], device=text_features.device)
    valid = positions.unsqueeze(0) < lengths.to(text_features.device).unsqueeze(1)  # [Bt, L]
    if attention == "words_first" and _use_fused(impl, regions.device):
        return _fused_scores(regions, text_features, lengths, valid, temp1, temp2)
    if chunk_size <= 0 or chunk_size >= regions.shape[0]:
        return _chunk_scores(regions, text_features, valid, temp1, temp2, attention)
    rows = []
    for start in range(0, regions.shape[0], chunk_size):
        chunk = regions[start : start + chunk_size]
        if torch.is_grad_enabled() and (chunk.requires_grad or text_features.requires_grad):
            rows.append(
                checkpoint(_chunk_scores, chunk, text_features, valid, temp1, temp2, attention, use_reentrant=False)
            )
        else:
            rows.append(_chunk_scores(chunk, text_features, valid, temp1, temp2, attention))
    return torch.cat(rows, dim=0)


def _use_fused(impl: str, device: torch.device) -> bool:
    if impl == "chunked":
        return False
    if impl not in ("auto", "fused"):
        raise ValueError(f"local loss impl must be 'auto', 'fused' or 'chunked', got {impl!r}")
    if impl == "auto":
        # The fused kernels measured 2.7x slower than the chunked path on an H200 (module docstring):
        # they stay opt-in, and ``auto`` never imports Triton.
        return False
    from afloc_models.fused_local_loss import fused_available

    if not fused_available(device):
        raise RuntimeError(f"local loss impl 'fused' needs a CUDA device with Triton, got {device}")
    return True


def _fused_scores(
    regions: torch.Tensor,
    texts: torch.Tensor,
    lengths: torch.Tensor,
    valid: torch.Tensor,
    temp1: float,
    temp2: float,
) -> torch.Tensor:
    """:func:`_chunk_scores` for all rows at once, the attention computed by the fused kernels."""
    from afloc_models.fused_local_loss import fused_attended_context

    context = fused_attended_context(regions, texts, lengths, temp1)  # [Bi, Bt, L, D] float32
    words = texts.float()  # [Bt, D, L]
    dots = torch.einsum("ijld,jdl->ijl", context, words)
    norms = context.norm(dim=3) * words.norm(dim=1).unsqueeze(0)
    cos = (temp2 * dots / norms.clamp(min=_EPS)).masked_fill(~valid.unsqueeze(0), float("-inf"))
    return torch.logsumexp(cos, dim=2).to(regions.dtype)


def _chunk_scores(
    regions: torch.Tensor,
    texts: torch.Tensor,
    valid: torch.Tensor,
    temp1: float,
    temp2: float,
    attention: str = "words_first",
) -> torch.Tensor:
    """Scores of image rows ``regions`` ``[C, D, N]`` against all texts ``[Bt, D, L]`` -> ``[C, Bt]``.

    Intermediates are laid out ``[C, N, Bt, L]`` / ``[C, D, Bt, L]``: exactly what the two
    matrix products produce, so no permuted copies of the large tensors are made.
    """
    d = regions.shape[1]
    texts_dtl = texts.permute(1, 0, 2)  # [D, Bt, L]
    if attention == "regions_cosine":
        # Cosines of every region with every word, one GEMM of unit vectors: [C, N, Bt, L]; then
        # a softmax over regions of a fixed sharpness (temp1), whatever the feature norms.
        unit = _pair_products(F.normalize(regions, dim=1, eps=_EPS), F.normalize(texts_dtl, dim=0, eps=_EPS))
        attn = torch.softmax(unit * temp1, dim=1)
        return _attended_scores(regions, texts_dtl, attn, valid, temp2)
    # Region-word dot products for every pair, one GEMM: [C, N, Bt, L].
    sim = _pair_products(regions, texts_dtl)
    if attention == "regions":
        # Each word attends over the regions by its scaled inner product alone: the same
        # quantity the heatmap reads, so training shapes the map a single prompt produces.
        attn = torch.softmax(sim * (d**-0.5), dim=1)
    else:
        # Each region's attention over the valid words of the text ...
        attn = torch.softmax(sim.masked_fill(~valid[None, None], float("-inf")), dim=3)
        # ... then each word's attention over regions, sharpened by temp1.
        attn = torch.softmax(attn * temp1, dim=1)
    return _attended_scores(regions, texts_dtl, attn, valid, temp2)


def _pair_products(regions: torch.Tensor, texts_dtl: torch.Tensor) -> torch.Tensor:
    """Inner products of regions ``[C, D, N]`` with words ``[D, Bt, L]`` -> ``[C, N, Bt, L]``."""
    c, d, n = regions.shape
    _, t, l = texts_dtl.shape
    return (regions.transpose(1, 2).reshape(c * n, d) @ texts_dtl.reshape(d, t * l)).view(c, n, t, l)


def _attended_scores(
    regions: torch.Tensor, texts_dtl: torch.Tensor, attn: torch.Tensor, valid: torch.Tensor, temp2: float
) -> torch.Tensor:
    """Each word against its attended context (``attn`` ``[C, N, Bt, L]`` over regions), cosines
    aggregated over the valid words by a log-sum-exp sharpened by ``temp2`` -> ``[C, Bt]``."""
    c, d, n = regions.shape
    _, t, l = texts_dtl.shape
    context = torch.bmm(regions, attn.reshape(c, n, t * l)).view(c, d, t, l)  # [C, D, Bt, L]
    cos = (context * texts_dtl).sum(dim=1) / (context.norm(dim=1) * texts_dtl.norm(dim=0)).clamp(min=_EPS)
    cos = (temp2 * cos).masked_fill(~valid.unsqueeze(0), float("-inf"))  # [C, Bt, L]
    return torch.logsumexp(cos, dim=2)
