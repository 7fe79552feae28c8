"""Which real radiographs may be trained on, and which are kept for external evaluation.

The real radiographs of ``../shared/data/cxr-notes`` serve twice: as backgrounds for training
studies with inserted findings (:mod:`afloc_training.phantoms.radiographs`) and as the real external
test set (:mod:`afloc_models.evaluation.external`). A model must never be scored on an image it was
trained on, so every image belongs to exactly one side, decided by its **patient** (all images of
a patient go to the same side) through a fixed hash: the split does not depend on the order of
``pairs.csv``, on which other images exist, or on any random seed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["TRAIN", "TEST", "default_cxr_notes", "radiograph_split"]

TRAIN = "train"
TEST = "test"


def radiograph_split(patient: str) -> str:
    """``"train"`` or ``"test"`` for a patient id (about half each)."""
    digest = hashlib.sha256(f"afloc-radiograph-split:{str(patient).strip()}".encode("utf-8")).digest()
    return TRAIN if digest[0] % 2 == 0 else TEST


def default_cxr_notes() -> Path:
    """``../shared/data/cxr-notes`` beside the repository (it may not exist)."""
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-notes"
