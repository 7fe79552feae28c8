"""Evaluation of text-prompted localization: ground-truth readers and the AFLoc metrics.

``metrics`` is numpy-only; ``ground_truth`` adds Pillow for mask files. Neither imports torch.
"""

from afloc_models.evaluation.ground_truth import (
    Box,
    GroundTruthCase,
    GroundTruthError,
    load_ground_truth,
    read_coco,
    read_mask_folder,
    read_ms_cxr,
    read_rsna_pneumonia,
)
from afloc_models.evaluation.metrics import (
    DEFAULT_THRESHOLDS,
    ConfidenceInterval,
    aggregate,
    bootstrap_ci,
    cnr,
    dice,
    iou,
    normalize_heatmap,
    peak_distance,
    pointing_game,
    threshold_sweep,
)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "Box",
    "ConfidenceInterval",
    "GroundTruthCase",
    "GroundTruthError",
    "aggregate",
    "bootstrap_ci",
    "cnr",
    "dice",
    "iou",
    "load_ground_truth",
    "normalize_heatmap",
    "peak_distance",
    "pointing_game",
    "read_coco",
    "read_mask_folder",
    "read_ms_cxr",
    "read_rsna_pneumonia",
    "threshold_sweep",
]
