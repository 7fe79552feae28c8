"""Entropy of the sentence maps (``loss.attention_entropy``): a regulariser for sharp maps.

Each sentence of a report attends over the deep regions of its own image (the softmax the local
loss and the heatmap read). A spread attention lets the sentence match a blend of many cells, and
the map then has no clear peak; among the `small` models measured, the ones whose attention
spread over more cells scored lower outside the generator, and the consistency terms that made
the maps worse flattened it (docs/training.md, eighteenth session). This term is the mean entropy
of that attention, in nats: adding it with a positive weight asks each sentence to commit to few
regions. It needs no masks.
"""

from __future__ import annotations

import torch

from afloc_models.mirror_loss import region_log_attention


def attention_entropy(
    deep: torch.Tensor,
    sentences: torch.Tensor,
    n_sentences: torch.Tensor,
    cosine: bool = False,
    temp1: float = 4.0,
) -> torch.Tensor:
    """Mean entropy of each valid sentence's attention over the regions of its own image.

    Args:
        deep: ``[K, D, H, W]`` deep features of K training images.
        sentences: ``[K, D, S]`` their reports' sentence embeddings; ``n_sentences`` ``[K]`` valid.
        cosine, temp1: how regions are scored (:func:`afloc_models.mirror_loss.region_log_attention`).

    Returns:
        Scalar in ``[0, log(H * W)]``: 0 when every sentence attends to a single cell,
        ``log(H * W)`` when every attention is uniform.
    """
    if deep.shape[0] != sentences.shape[0]:
        raise ValueError("expected one report per image")
    log_p = region_log_attention(deep, sentences, cosine, temp1).flatten(2)  # [K, S, N]
    entropy = -(log_p.exp() * log_p).sum(dim=2)  # [K, S]
    valid = torch.arange(sentences.shape[2], device=deep.device).unsqueeze(0) < n_sentences.to(deep.device).unsqueeze(1)
    return (entropy * valid).sum() / valid.sum().clamp(min=1)
