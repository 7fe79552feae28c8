"""Report-driven drafts for the whole datastore, in the background: ``/afloc/draft``.

``POST /afloc/draft`` starts a job in the server process that drafts every datastore image with a
report (:func:`afloc_training.draft.draft_from_report`): the report's positive findings become
the named segments of one label stored under tag ``afloc_draft`` (Slicer-style NRRD), with each
segment's source sentence, certainty, score and probability, and the draft's ``uncertainty``, in
the label info. ``GET /afloc/draft`` shows its progress, ``DELETE /afloc/draft`` stops it after
the current image. Optional query fields of the POST: ``threshold`` (mask threshold), ``limit``
(at most this many images), ``overwrite`` (redo drafts already made).

Resumable: an image whose ``afloc_draft`` was made from the same report (hash) by the same
model is skipped, so a stopped or crashed job continues where it ended. A draft someone made by
hand (``save_draft`` of the infer task, no ``source: report`` in its info) is kept unless
``overwrite``; images with a ``final`` label are left alone, and ``final`` is never written.
Progress is also kept in ``<model_dir>/draft_stats.json`` (atomically replaced).

It runs in the server process (one image at a time, in a thread) rather than in a MONAI Label
subprocess, so the datastore index has a single writer; MONAI Label's scoring tasks, the other
place for such a job, are started automatically at server start and after every "Next sample".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from lib.errors import BadRequestError

logger = logging.getLogger(__name__)

__all__ = ["DRAFT_TAG", "DraftJob", "draft_image", "install"]

DRAFT_TAG = "afloc_draft"
FINAL_TAG = "final"
#: Messages (one per skipped or failed image) kept in the progress record.
MAX_MESSAGES = 50


def draft_image(datastore: Any, predictor: Any, image_id: str, report: str, threshold: Optional[float],
                report_source: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Draft one datastore image from its report and store the label; returns what happened.

    ``{"outcome": "drafted", "uncertainty": ..., "segments": n}`` or ``{"outcome":
    "no_positive_finding"}`` (nothing stored).
    """
    from afloc_training.draft import draft_from_report

    from lib.geometry import geometry_for
    from lib.image_source import resolve_image_file
    from lib.label_io import SEGMENT_COLORS, Segment, write_label

    image_path = resolve_image_file(datastore.get_image_uri(image_id))
    draft = draft_from_report(predictor, image_path, report, threshold=threshold)
    if draft.label is None:
        return {"outcome": "no_positive_finding"}
    geometry = geometry_for(image_path, draft.image_shape, draft.spacing)
    segments = [
        Segment(name=s.prompt, value=s.value, color=SEGMENT_COLORS[(s.value - 1) % len(SEGMENT_COLORS)])
        for s in draft.segments
    ]
    info = draft.info()
    if report_source:
        info["report_source"] = {k: v for k, v in report_source.items() if k != "skipped"}
    folder = Path(tempfile.mkdtemp(prefix="afloc-draft-"))
    try:
        path = write_label(folder / "draft.seg.nrrd", draft.label, segments, geometry)
        datastore.save_label(image_id, str(path), DRAFT_TAG, info)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"outcome": "drafted", "uncertainty": info["uncertainty"], "segments": len(segments)}


class DraftJob:
    """One background drafting job at a time for an app (see the module docstring)."""

    def __init__(self, served: Any, datastore: Callable[[], Any], stats_file: Path):
        self.served = served
        self._datastore = datastore
        self.stats_file = Path(stats_file)
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._state: Dict[str, Any] = self._load_state()

    # ------------------------------------------------------------------ API
    def start(self, threshold: Optional[float] = None, limit: Optional[int] = None, overwrite: bool = False) -> Dict[str, Any]:
        """Start drafting; raises :class:`BadRequestError` (409) when a job is running."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise DraftJobRunning("a drafting job is already running: GET /afloc/draft shows it, DELETE /afloc/draft stops it")
            self._stop.clear()
            options = {"threshold": threshold, "limit": limit, "overwrite": overwrite}
            self._state = {
                "status": "STARTING", "options": options, "total": None, "done": 0, "drafted": 0,
                "kept": 0, "no_positive_finding": 0, "no_report": 0, "has_final": 0, "hand_made_draft": 0,
                "failed": 0, "current": None, "started": time.time(), "elapsed_s": 0.0,
                "images_per_min": None, "messages": [], "model_version": None,
            }  # fmt: skip
            self._thread = threading.Thread(target=self._run, args=(options,), name="afloc-draft", daemon=True)
            self._thread.start()
        return self.status()

    def status(self) -> Dict[str, Any]:
        with self._lock:
            state = dict(self._state)
        state["running"] = self._thread is not None and self._thread.is_alive()
        return state

    def stop(self) -> Dict[str, Any]:
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=120)
        return self.status()

    # ------------------------------------------------------------------ the job
    def _run(self, options: Dict[str, Any]) -> None:
        try:
            self._update(status="RUNNING")
            predictor, ref = self.served.get()
            self._update(model_version=ref.version)
            datastore = self._datastore()
            images = sorted(datastore.list_images())
            self._update(total=len(images) if not options["limit"] else min(len(images), options["limit"]))
            finals = set(datastore.get_labeled_images())
            started, worked = time.perf_counter(), 0
            for image_id in images:
                if self._stop.is_set():
                    self._finish("STOPPED")
                    return
                if options["limit"] and self._state["done"] >= options["limit"]:
                    break
                self._update(current=image_id)
                outcome = self._one(datastore, predictor, ref.version, image_id, finals, options)
                if outcome in ("drafted", "no_positive_finding"):
                    worked += 1
                elapsed = time.perf_counter() - started
                self._update(
                    done=self._state["done"] + 1, elapsed_s=round(elapsed, 1),
                    images_per_min=round(60.0 * worked / elapsed, 1) if worked and elapsed > 0 else None,
                    **{outcome: self._state[outcome] + 1},
                )  # fmt: skip
            self._finish("DONE")
        except Exception as exc:
            logger.exception("drafting job failed")
            self._finish("ERROR", error=f"{type(exc).__name__}: {exc}")

    def _one(self, datastore: Any, predictor: Any, version: str, image_id: str, finals: set, options: Dict[str, Any]) -> str:
        if image_id in finals:
            return "has_final"
        try:
            report, source = datastore.report_with_source(image_id)
        except Exception as exc:
            self._message(image_id, f"report lookup failed: {exc}")
            return "failed"
        if not report:
            self._message(image_id, f"no report: {source.get('reason', 'none found')}")
            return "no_report"
        from afloc_training.draft import report_hash

        existing = _draft_info(datastore, image_id)
        if existing is not None and not options["overwrite"]:
            if existing.get("source") != "report":
                self._message(image_id, "kept the draft made by hand (overwrite=true replaces it)")
                return "hand_made_draft"
            if existing.get("report_hash") == report_hash(report) and existing.get("model_version") == version:
                return "kept"
        try:
            result = draft_image(datastore, predictor, image_id, report, options["threshold"], source)
        except Exception as exc:  # one unreadable image must not stop the job
            logger.warning("could not draft %s: %s", image_id, exc)
            self._message(image_id, f"{type(exc).__name__}: {exc}")
            return "failed"
        return str(result["outcome"])

    # ------------------------------------------------------------------ state
    def _update(self, **values: Any) -> None:
        with self._lock:
            self._state.update(values)
            state = dict(self._state)
        self._save(state)

    def _message(self, image_id: str, text: str) -> None:
        with self._lock:
            if len(self._state["messages"]) < MAX_MESSAGES:
                self._state["messages"].append({"image": image_id, "message": text})

    def _finish(self, status: str, **extra: Any) -> None:
        self._update(status=status, current=None, finished=time.time(), **extra)

    def _save(self, state: Dict[str, Any]) -> None:
        try:
            self.stats_file.parent.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(prefix=f".{self.stats_file.name}.", dir=self.stats_file.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as sink:
                json.dump(state, sink, indent=2, default=str)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(staging, self.stats_file)
        except OSError as exc:
            logger.warning("cannot write %s: %s", self.stats_file, exc)

    def _load_state(self) -> Dict[str, Any]:
        try:
            state = json.loads(self.stats_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"status": "NOT_STARTED"}
        if isinstance(state, dict) and state.get("status") in ("RUNNING", "STARTING"):
            state["status"] = "INTERRUPTED"  # the server stopped while it ran; POST resumes
        return state if isinstance(state, dict) else {"status": "NOT_STARTED"}


class DraftJobRunning(BadRequestError):
    status_code = 409


def _draft_info(datastore: Any, image_id: str) -> Optional[Dict[str, Any]]:
    """The info of the image's ``afloc_draft`` label, or None when it has none."""
    objects = getattr(getattr(datastore, "_datastore", None), "objects", {})
    obj = objects.get(image_id)
    label = obj.labels.get(DRAFT_TAG) if obj is not None else None
    return dict(label.info) if label is not None else None


def install(fastapi_app: Any, job: Callable[[], DraftJob]) -> None:
    """Add ``POST/GET/DELETE /afloc/draft`` to MONAI Label's FastAPI app (annotator role)."""
    from fastapi import APIRouter, Depends
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User

    if any(getattr(route, "path", "") == "/afloc/draft" for route in fastapi_app.router.routes):
        return
    router = APIRouter(prefix="/afloc", tags=["AFLoc"])
    annotator = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
    reader = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))

    @router.post("/draft", summary="Draft every image with a report (background job)")
    def start_drafting(threshold: Optional[float] = None, limit: Optional[int] = None, overwrite: bool = False,
                       user: User = annotator) -> Dict[str, Any]:
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise BadRequestError(f"'threshold' must be in [-1, 1], got {threshold}")
        if limit is not None and limit < 1:
            raise BadRequestError(f"'limit' must be a positive number, got {limit}")
        return job().start(threshold=threshold, limit=limit, overwrite=overwrite)

    @router.get("/draft", summary="Progress of the drafting job")
    def drafting_status(user: User = reader) -> Dict[str, Any]:
        return job().status()

    @router.delete("/draft", summary="Stop the drafting job after the current image")
    def stop_drafting(user: User = annotator) -> Dict[str, Any]:
        return job().stop()

    fastapi_app.include_router(router)
