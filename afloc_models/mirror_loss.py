"""Mirror consistency of the sentence maps (``loss.mirror_consistency``).

A sentence's map over the deep regions of an image should be the mirror image of the map of
the same sentence, its sides exchanged ("right" <-> "left"), over the left-right mirrored image.
A model whose maps sit a cell beside the finding, always to the same side (the fourteenth
session's measured offset, docs/training.md), breaks that: on the mirrored image the offset
points the other way once mirrored back. Nothing in the contrastive losses sees where a map
peaks, so nothing else corrects it; inference can average the two reads (``mirror: on``), but a
thin finding such as a pneumothorax rim is then smeared between two peaks.

The term needs no masks: the two maps come from the same training pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def region_log_attention(deep: torch.Tensor, sentences: torch.Tensor, cosine: bool = False,
                         temp1: float = 4.0) -> torch.Tensor:
    """Log of each sentence's attention over the regions of its own image.

    Args:
        deep: ``[K, D, H, W]`` deep local features.
        sentences: ``[K, D, S]`` sentence embeddings of each image's own report.
        cosine: score regions by cosine times ``temp1`` (``loss.local_attention: regions_cosine``)
            instead of the inner product over ``sqrt(D)`` (``regions``, what the heatmap reads).

    Returns:
        ``[K, S, H, W]`` log-probabilities (each ``[H, W]`` map sums to 1 once exponentiated).
    """
    k, d, h, w = deep.shape
    regions = deep.flatten(2)  # [K, D, N]
    if cosine:
        scores = temp1 * torch.einsum("kdn,kds->ksn", F.normalize(regions, dim=1, eps=_EPS),
                                      F.normalize(sentences, dim=1, eps=_EPS))
    else:
        scores = torch.einsum("kdn,kds->ksn", regions, sentences) * d**-0.5
    return torch.log_softmax(scores.float(), dim=2).view(k, -1, h, w)


def mirror_consistency_loss(
    deep: torch.Tensor,
    sentences: torch.Tensor,
    n_sentences: torch.Tensor,
    mirror_deep: torch.Tensor,
    mirror_sentences: torch.Tensor,
    mirror_n_sentences: torch.Tensor,
    cosine: bool = False,
    temp1: float = 4.0,
) -> torch.Tensor:
    """Symmetric KL divergence between each sentence's map and its mirror read, mirrored back.

    Args:
        deep: ``[K, D, H, W]`` deep features of K training images.
        sentences: ``[K, D, S]`` their reports' sentence embeddings; ``n_sentences`` ``[K]`` valid.
        mirror_deep: ``[K, D, H, W]`` deep features of the same images mirrored left-right.
        mirror_sentences: ``[K, D, S']`` the same reports with sides exchanged, sentence by
            sentence (:func:`afloc_models.text_normalization.mirror_sides`);
            ``mirror_n_sentences`` ``[K]``.
        cosine, temp1: how regions are scored (see :func:`region_log_attention`).

    Returns:
        Scalar: the mean over valid sentences of ``(KL(p || q) + KL(q || p)) / 2``, ``p`` the
        map on the image and ``q`` the map on the mirror, flipped back. 0 when they agree.
    """
    if deep.shape != mirror_deep.shape:
        raise ValueError(f"image and mirror features differ in shape: {tuple(deep.shape)} vs {tuple(mirror_deep.shape)}")
    if deep.shape[0] != sentences.shape[0] or mirror_sentences.shape[0] != sentences.shape[0]:
        raise ValueError("expected one report (and one mirrored report) per image")
    s = min(sentences.shape[2], mirror_sentences.shape[2])
    p = region_log_attention(deep, sentences[:, :, :s], cosine, temp1)  # [K, S, H, W]
    q = region_log_attention(mirror_deep, mirror_sentences[:, :, :s], cosine, temp1).flip(-1)
    n = torch.minimum(n_sentences, mirror_n_sentences).to(deep.device)
    valid = torch.arange(s, device=deep.device).unsqueeze(0) < n.unsqueeze(1)  # [K, S]
    kl_pq = (p.exp() * (p - q)).sum(dim=(2, 3))
    kl_qp = (q.exp() * (q - p)).sum(dim=(2, 3))
    per_sentence = 0.5 * (kl_pq + kl_qp)
    return (per_sentence * valid).sum() / valid.sum().clamp(min=1)
