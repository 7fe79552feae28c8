"""Inference: prompt -> similarity map -> heatmap on the original pixel grid -> mask and boxes.

``AFLocPredictor`` (in :mod:`afloc_models.inference.predictor`) loads a checkpoint and serves
``localize``, ``localize_batch`` and ``classify``; :mod:`afloc_models.inference.heatmap` holds the
map arithmetic and :mod:`afloc_models.inference.cache` the bounded feature caches.
"""

from afloc_models.inference.heatmap import DEFAULT_THRESHOLD, Box, HeatmapSettings
from afloc_models.inference.predictor import (
    MAX_PROMPT_CHARS,
    AFLocPredictor,
    EncoderCounts,
    Localization,
    PromptResult,
    PromptTruncatedWarning,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "MAX_PROMPT_CHARS",
    "AFLocPredictor",
    "Box",
    "EncoderCounts",
    "HeatmapSettings",
    "Localization",
    "PromptResult",
    "PromptTruncatedWarning",
]
