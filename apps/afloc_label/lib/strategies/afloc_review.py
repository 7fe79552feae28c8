"""Active-learning strategy ``afloc_review``: the next image whose report-driven draft waits for review.

``POST /activelearning/afloc_review`` (the "Next Sample" button of Slicer and OHIF) returns, in
this order:

1. images with an ``afloc_draft`` made from their report (``source: report`` in the label info)
   and no ``final`` label yet, most uncertain draft first (the draft's ``uncertainty``; ties by
   image id);
2. then images that have a report but no draft and no ``final`` label, by image id.

Images with a ``final`` label have been reviewed and are never returned. The reply names why the
image was chosen (``reason``), the draft's ``uncertainty`` and how many images wait in each group.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

logger = logging.getLogger(__name__)

__all__ = ["AFLocReview", "review_order"]

DRAFT_TAG = "afloc_draft"


def review_order(datastore: Any) -> tuple[list[tuple[str, float]], list[str]]:
    """``(drafted, undrafted)``: drafts waiting for review as ``(image, uncertainty)`` (most
    uncertain first) and images with a report but no draft, neither group with a final label."""
    finals = set(datastore.get_labeled_images())
    objects = getattr(getattr(datastore, "_datastore", None), "objects", {})
    drafted: list[tuple[str, float]] = []
    undrafted: list[str] = []
    for image_id in sorted(datastore.list_images()):
        if image_id in finals:
            continue
        obj = objects.get(image_id)
        label = obj.labels.get(DRAFT_TAG) if obj is not None else None
        info = dict(label.info) if label is not None else {}
        if info.get("source") == "report":
            drafted.append((image_id, _number(info.get("uncertainty"))))
        elif label is None and _has_report(datastore, image_id):
            undrafted.append(image_id)
    drafted.sort(key=lambda item: (-item[1], item[0]))
    return drafted, undrafted


class AFLocReview(Strategy):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__("Next report-driven draft to review (most uncertain first), then reported images without a draft")

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Optional[Dict[str, Any]]:
        drafted, undrafted = review_order(datastore)
        counts = {"drafts_waiting": len(drafted), "reported_without_draft": len(undrafted)}
        if drafted:
            image_id, uncertainty = drafted[0]
            logger.info("afloc_review: %s (draft uncertainty %.3f)", image_id, uncertainty)
            return {"id": image_id, "reason": "draft_waits_for_review", "uncertainty": uncertainty, "label_tag": DRAFT_TAG, **counts}
        if undrafted:
            logger.info("afloc_review: %s (report, no draft yet)", undrafted[0])
            return {"id": undrafted[0], "reason": "report_without_draft", "uncertainty": None, **counts}
        return None


def _has_report(datastore: Any, image_id: str) -> bool:
    finder = getattr(datastore, "report", None)
    try:
        return bool(finder(image_id)) if finder else False
    except Exception as exc:  # a PACS lookup failing must not break "Next sample"
        logger.warning("afloc_review: report lookup for %s failed: %s", image_id, exc)
        return False


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
