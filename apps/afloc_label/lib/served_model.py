"""The loaded predictor of the served checkpoint, reloaded when a new one is published.

Loading is lazy (the async training subprocess rebuilds the whole app and must not load a model
it never uses) and happens under a lock, so concurrent first requests load once. Every request
compares the served checkpoint's fingerprint (a few ``stat`` calls) with the loaded one and
reloads after a publication; requests already holding the old predictor finish with it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from afloc_models.errors import AFLocError

from lib.checkpoints import CheckpointRef, ModelStore
from lib.errors import ModelUnavailableError

logger = logging.getLogger(__name__)

__all__ = ["ServedModel", "describe_trained_on", "UNKNOWN_TRAINING"]

#: Shown when a checkpoint's meta.json does not say what it was trained on.
UNKNOWN_TRAINING = "unknown: the checkpoint does not say what it was trained on"


def describe_trained_on(ref: Optional[CheckpointRef]) -> Optional[str]:
    """The served checkpoint's ``trained_on`` for ``/info`` (None when nothing is served)."""
    if ref is None:
        return None
    return ref.trained_on or UNKNOWN_TRAINING


class ServedModel:
    """Hands out the ``AFLocPredictor`` of the checkpoint :class:`ModelStore` serves now."""

    def __init__(self, store: ModelStore, device: str = "auto"):
        self.store = store
        self.device = device
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._ref: Optional[CheckpointRef] = None
        self._failed: Optional[tuple] = None  # fingerprint that failed to load: not retried

    def get(self) -> tuple[Any, CheckpointRef]:
        """``(predictor, checkpoint)``; loads or reloads as needed.

        Raises:
            ModelUnavailableError: nothing is served, or the served checkpoint does not load and
                no earlier model is loaded to fall back on.
        """
        ref = self.store.served()
        if ref is None:
            raise ModelUnavailableError(self.store.describe_missing())
        with self._lock:
            if self._ref is not None and self._ref.fingerprint == ref.fingerprint:
                return self._predictor, self._ref
            if self._failed == ref.fingerprint:
                return self._fallback(ref, "it failed to load earlier (see the server log)")
            try:
                predictor = self._load(ref)
            except (AFLocError, OSError, RuntimeError) as exc:
                logger.error("cannot load checkpoint %s: %s", ref.path, exc)
                self._failed = ref.fingerprint
                return self._fallback(ref, str(exc))
            self._predictor, self._ref, self._failed = predictor, ref, None
            logger.info("serving AFLoc checkpoint %s (version %s, %s)", ref.path, ref.version, ref.source)
            return predictor, ref

    def loaded(self) -> Optional[CheckpointRef]:
        """The checkpoint whose predictor is loaded now, if any."""
        return self._ref

    def _load(self, ref: CheckpointRef) -> Any:
        from afloc_models.inference import AFLocPredictor

        return AFLocPredictor.load(ref.path, device=self.device)

    def _fallback(self, ref: CheckpointRef, reason: str) -> tuple[Any, CheckpointRef]:
        if self._predictor is not None and self._ref is not None:
            logger.warning("still serving %s: %s does not load (%s)", self._ref.path, ref.path, reason)
            return self._predictor, self._ref
        raise ModelUnavailableError(f"the served checkpoint '{ref.path}' cannot be loaded: {reason}")
