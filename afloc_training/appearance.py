"""Appearance perturbations of a training batch, for the appearance consistency of the maps.

``loss.appearance_consistency`` encodes a share of each batch a second time with its look changed
the way radiographs from another site differ: exposure window, gamma, detector blur or console
sharpening, noise. Geometry is left alone, so each region still covers the same anatomy and the
two maps of a sentence can be compared cell by cell
(:func:`afloc_models.map_regularizers.appearance_consistency_loss`).

Runs on the batch tensor, on the training device, after the crop; draws come from a generator the
trainer seeds with the run's seed and step, so a resumed run perturbs as the uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["perturb_appearance"]


def perturb_appearance(
    images: torch.Tensor, generator: torch.Generator, mean: float = 0.5, std: float = 0.5
) -> torch.Tensor:
    """One random change of look per image of a normalised batch ``[K, C, H, W]``.

    Each image is brought back to ``[0, 1]`` (``x * std + mean``), given a new window
    (black point -0.10..0.15, white point 0.85..1.10), a gamma of ``exp(U(-0.5, 0.5))``, then
    either a detector blur (sigma 0.5-1.5 px) or console sharpening (unsharp mask, amount
    0.3-1.0, radius 3-10 px), then noise whose spread grows with the signal (0-0.06 at full
    brightness), clipped to ``[0, 1]`` and normalised again.

    Args:
        images: ``[K, C, H, W]`` normalised images (any float dtype; the result has the same).
        generator: a CPU ``torch.Generator``: every draw comes from it.
        mean, std: the normalisation of the batch (``data.mean``, ``data.std``).

    Returns:
        ``[K, C, H, W]`` perturbed images, normalised as the input was.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [K, C, H, W], got shape {tuple(images.shape)}")
    k = images.shape[0]
    device, dtype = images.device, images.dtype

    def draw(low: float, high: float) -> torch.Tensor:
        values = low + (high - low) * torch.rand(k, generator=generator)
        return values.to(device).view(k, 1, 1, 1)

    unit = (images.float() * std + mean).clamp(0.0, 1.0)
    black, white = draw(-0.10, 0.15), draw(0.85, 1.10)
    unit = ((unit - black) / (white - black)).clamp(0.0, 1.0)
    unit = unit.clamp(min=1e-6) ** torch.exp(draw(-0.5, 0.5))
    sharpen = (torch.rand(k, generator=generator) < 0.5).to(device).view(k, 1, 1, 1)
    blurred = _gaussian_blur(unit, draw(0.5, 1.5).flatten())
    background = _gaussian_blur(unit, draw(3.0, 10.0).flatten())
    sharpened = unit + draw(0.3, 1.0) * (unit - background)
    unit = torch.where(sharpen, sharpened, blurred)
    noise = torch.randn(unit.shape, generator=generator).to(device)
    unit = unit + draw(0.0, 0.06) * unit.clamp(min=0.0).sqrt() * noise
    return ((unit.clamp(0.0, 1.0) - mean) / std).to(dtype)


def _gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of ``[K, C, H, W]`` with one sigma (pixels) per image; edges replicated."""
    k, c, h, w = images.shape
    radius = int(math.ceil(3.0 * float(sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigmas.to(images.device, images.dtype)[:, None]) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)  # [K, 2R + 1]
    kernels = kernels.repeat_interleave(c, dim=0)  # one per (image, channel)
    planes = images.reshape(1, k * c, h, w)
    planes = F.pad(planes, (radius, radius, radius, radius), mode="replicate")
    planes = F.conv2d(planes, kernels.view(k * c, 1, 1, -1), groups=k * c)
    planes = F.conv2d(planes, kernels.view(k * c, 1, -1, 1), groups=k * c)
    return planes.view(k, c, h, w)
