"""Infer task ``afloc_classify``: zero-shot probability of each named finding (no label file).

Request field ``findings``: names separated by commas or semicolons, or a JSON list (at most 32).
Reply: params JSON ``{"findings": {name: probability}, "model_version": ..., ...}``; MONAI Label
sends it as plain JSON because the task returns no file.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Tuple, Union

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.image_source import resolve_image_file
from lib.params import parse_findings
from lib.served_model import ServedModel, describe_trained_on

__all__ = ["DEFAULT_FINDINGS", "AFLocClassifyTask"]

#: Findings scored when a request names none (common chest X-ray findings).
DEFAULT_FINDINGS = "atelectasis, cardiomegaly, pleural effusion, pneumonia, pneumothorax, pulmonary edema"


class AFLocClassifyTask(InferTask):
    """Zero-shot finding classification with the served AFLoc checkpoint."""

    def __init__(self, served: ServedModel, description: str = ""):
        super().__init__(
            type=InferType.CLASSIFICATION,
            labels=[],
            dimension=2,
            description=description
            or "AFLoc: zero-shot probability of each finding listed in 'findings' (comma separated)",
            config={"findings": DEFAULT_FINDINGS},
        )
        self.served = served

    def is_valid(self) -> bool:
        return True

    def info(self) -> Dict[str, Any]:
        info = super().info()
        ref = self.served.store.served()
        info["model_version"] = ref.version if ref else None
        info["trained_on"] = describe_trained_on(ref)
        return info

    def __call__(self, request: Dict[str, Any]) -> Tuple[Union[str, None], Dict[str, Any]]:
        started = time.perf_counter()
        value = request.get("findings")
        findings = parse_findings(DEFAULT_FINDINGS if value is None or value == "" else value)
        image_path = resolve_image_file(request.get("image"))
        predictor, ref = self.served.get()
        probabilities = predictor.classify(image_path, findings)
        return None, {
            "model": "afloc_classify",
            "model_version": predictor.model_version,
            "checkpoint": ref.path.name,
            "findings": {name: round(float(p), 6) for name, p in probabilities.items()},
            "image": {"id": request.get("image_id")},
            "latencies": {"total": round(time.perf_counter() - started, 4)},
        }
