"""Appearance consistency of the sentence maps (``loss.appearance_consistency``).

A sentence's map over the deep regions of an image should not move when the image only looks
different: another exposure, gamma, detector blur or console sharpening, more noise
(:func:`afloc_training.appearance.perturb_appearance`). The external test sets differ from the
training phantoms in exactly such ways, and the maps measured there wander to the image border
and to regions far from the finding (docs/training.md, issue 13). The contrastive losses only ask
that the attended regions match the sentence, not that the same regions are chosen whatever the
look; this term asks for that.

The map of the unperturbed image is the target (no gradient flows into it), so the term pulls
the perturbed read towards the clean one and never the clean one towards noise. It needs no
masks: both maps come from the same training pair.
"""

from __future__ import annotations

import torch

from afloc_models.mirror_loss import region_log_attention


def appearance_consistency_loss(
    deep: torch.Tensor,
    sentences: torch.Tensor,
    n_sentences: torch.Tensor,
    perturbed_deep: torch.Tensor,
    cosine: bool = False,
    temp1: float = 4.0,
) -> torch.Tensor:
    """KL divergence of each sentence's map on the perturbed image from its map on the image.

    Args:
        deep: ``[K, D, H, W]`` deep features of K training images.
        sentences: ``[K, D, S]`` their reports' sentence embeddings; ``n_sentences`` ``[K]`` valid.
        perturbed_deep: ``[K, D, H, W]`` deep features of the same images with another look.
        cosine, temp1: how regions are scored (:func:`afloc_models.mirror_loss.region_log_attention`).

    Returns:
        Scalar: the mean over valid sentences of ``KL(p || q)``, ``p`` the map on the image
        (detached: the target) and ``q`` the map on the perturbed image. 0 when they agree.
    """
    if deep.shape != perturbed_deep.shape:
        raise ValueError(
            f"image and perturbed features differ in shape: {tuple(deep.shape)} vs {tuple(perturbed_deep.shape)}"
        )
    if deep.shape[0] != sentences.shape[0]:
        raise ValueError("expected one report per image")
    p = region_log_attention(deep, sentences, cosine, temp1).detach()  # [K, S, H, W]
    q = region_log_attention(perturbed_deep, sentences, cosine, temp1)
    valid = torch.arange(sentences.shape[2], device=deep.device).unsqueeze(0) < n_sentences.to(deep.device).unsqueeze(1)
    per_sentence = (p.exp() * (p - q)).sum(dim=(2, 3))  # [K, S]
    return (per_sentence * valid).sum() / valid.sum().clamp(min=1)
