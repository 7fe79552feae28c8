"""Loss terms on the sentence maps themselves, beside the contrastive losses. None needs masks.

Each sentence of a report attends over the deep regions of its own image (the softmax the local
loss and the heatmap read, :func:`region_log_attention`). The contrastive losses only ask that
the attended regions match the sentence; these terms ask something of where the attention lies:

- :func:`mirror_consistency_loss` (``loss.mirror_consistency``): the map on the left-right
  mirrored image, the report's sides exchanged, mirrored back, must be the same map. A model whose
  maps sit a cell to one side of every finding (the fourteenth session's measured offset,
  docs/quality-log.md) breaks that; inference can average the two reads (``mirror: on``), but a thin
  finding such as a pneumothorax rim is then smeared between two peaks.
- :func:`appearance_consistency_loss` (``loss.appearance_consistency``): the map must not move
  when the image only looks different (:func:`afloc_training.appearance.perturb_appearance`:
  exposure, gamma, blur or sharpening, noise), as images from another site do.
- :func:`attention_entropy` (``loss.attention_entropy``): the mean entropy of the maps; a
  positive weight asks each sentence to commit to few regions. Measured: the consistency terms
  flatten the maps (a flat map changes little under a mirror or a new look), and among the
  ``small`` seeds the flatter maps were the worse ones outside the generator (docs/quality-log.md,
  eighteenth session).
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
    _check_pair(deep, mirror_deep, sentences, "mirror")
    if mirror_sentences.shape[0] != sentences.shape[0]:
        raise ValueError("expected one report (and one mirrored report) per image")
    s = min(sentences.shape[2], mirror_sentences.shape[2])
    p = region_log_attention(deep, sentences[:, :, :s], cosine, temp1)  # [K, S, H, W]
    q = region_log_attention(mirror_deep, mirror_sentences[:, :, :s], cosine, temp1).flip(-1)
    per_sentence = 0.5 * (_kl(p, q) + _kl(q, p))
    return _mean_over_sentences(per_sentence, torch.minimum(n_sentences, mirror_n_sentences))


def appearance_consistency_loss(
    deep: torch.Tensor,
    sentences: torch.Tensor,
    n_sentences: torch.Tensor,
    perturbed_deep: torch.Tensor,
    cosine: bool = False,
    temp1: float = 4.0,
) -> torch.Tensor:
    """KL divergence of each sentence's map on the perturbed image from its map on the image.

    The map of the unperturbed image is the target (no gradient flows into it), so the term pulls
    the perturbed read towards the clean one and never the clean one towards noise.

    Args:
        deep: ``[K, D, H, W]`` deep features of K training images.
        sentences: ``[K, D, S]`` their reports' sentence embeddings; ``n_sentences`` ``[K]`` valid.
        perturbed_deep: ``[K, D, H, W]`` deep features of the same images with another look.
        cosine, temp1: how regions are scored (see :func:`region_log_attention`).

    Returns:
        Scalar: the mean over valid sentences of ``KL(p || q)``, ``p`` the map on the image
        (detached) and ``q`` the map on the perturbed image. 0 when they agree.
    """
    _check_pair(deep, perturbed_deep, sentences, "perturbed")
    p = region_log_attention(deep, sentences, cosine, temp1).detach()  # [K, S, H, W]
    q = region_log_attention(perturbed_deep, sentences, cosine, temp1)
    return _mean_over_sentences(_kl(p, q), n_sentences)


def attention_entropy(
    deep: torch.Tensor,
    sentences: torch.Tensor,
    n_sentences: torch.Tensor,
    cosine: bool = False,
    temp1: float = 4.0,
) -> torch.Tensor:
    """Mean entropy (nats) of each valid sentence's attention over the regions of its own image.

    Args:
        deep: ``[K, D, H, W]`` deep features of K training images.
        sentences: ``[K, D, S]`` their reports' sentence embeddings; ``n_sentences`` ``[K]`` valid.
        cosine, temp1: how regions are scored (see :func:`region_log_attention`).

    Returns:
        Scalar in ``[0, log(H * W)]``: 0 when every sentence attends to a single cell,
        ``log(H * W)`` when every attention is uniform.
    """
    _check_reports(deep, sentences)
    log_p = region_log_attention(deep, sentences, cosine, temp1)
    entropy = -(log_p.exp() * log_p).sum(dim=(2, 3))  # [K, S]
    return _mean_over_sentences(entropy, n_sentences)


def _check_pair(deep: torch.Tensor, other: torch.Tensor, sentences: torch.Tensor, what: str) -> None:
    if deep.shape != other.shape:
        raise ValueError(f"image and {what} features differ in shape: {tuple(deep.shape)} vs {tuple(other.shape)}")
    _check_reports(deep, sentences)


def _check_reports(deep: torch.Tensor, sentences: torch.Tensor) -> None:
    if deep.shape[0] != sentences.shape[0]:
        raise ValueError("expected one report per image")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` of each ``[H, W]`` map of two ``[K, S, H, W]`` log-probability stacks -> ``[K, S]``."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=(2, 3))


def _mean_over_sentences(values: torch.Tensor, n_sentences: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[K, S]`` over each row's first ``n_sentences[k]`` entries (the valid sentences)."""
    positions = torch.arange(values.shape[1], device=values.device).unsqueeze(0)
    valid = positions < n_sentences.to(values.device).unsqueeze(1)
    return (values * valid).sum() / valid.sum().clamp(min=1)
