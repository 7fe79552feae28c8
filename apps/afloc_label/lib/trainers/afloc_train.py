"""Train task ``afloc_train``: train or fine-tune AFLoc on every datastore image with a report.

MONAI Label runs it in a subprocess (``POST /train/afloc_train``, status on ``GET /train/``,
stop with ``DELETE /train/``, which kills the process). The run writes a new checkpoint folder
under ``<model_dir>/runs/`` through :func:`afloc_training.trainer.train` and, only when it finished
(all steps, or its time budget), publishes it by swapping the ``current`` symlink; the infer
tasks then serve it from their next request. A failed, stopped or killed run leaves the served
model untouched.

Request fields (JSON body of ``POST /train/afloc_train``; defaults in :data:`DEFAULT_CONFIG`):
``init`` (``current``: fine-tune the served checkpoint; ``scratch``: new model), ``config``
(preset ``small`` or ``publication`` for a scratch run; empty = ``small``, or the checkpoint's own when fine-tuning),
``max_steps``, ``max_minutes``, ``epochs`` (empty = the config's), ``seed``.

Data: a local datastore trains on its folder (reports from image info or ``<id>.txt``). A
DICOMweb datastore trains on every listed image series whose study has a report (its DICOM SR
instances, or image info ``report``); each image is downloaded once into the datastore's cache
and reused by later epochs and runs. Images left out are counted by reason in the result's
``skipped`` (``empty_report``, ``missing_image``), with the first messages in the stats.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from afloc_models.atomic import atomic_write_text
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from lib.checkpoints import ModelStore, checkpoint_problem
from lib.datastore import AFLocDatastore
from lib.errors import BadRequestError
from lib.params import first_choice

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONFIG", "AFLocTrainTask", "check_options"]

DEFAULT_CONFIG: Dict[str, Any] = {
    "init": ["current", "scratch"],
    "config": "",
    "max_steps": 200,
    "max_minutes": 10,
    "epochs": "",
    "seed": 0,
}
# Config presets a training request may name (a YAML path on the server may not be chosen over HTTP).
_HTTP_PRESETS = ("small", "publication")
# Stop reasons of afloc_training.trainer.train after which the checkpoint is published.
_PUBLISHABLE = ("completed", "max_minutes")
# Seconds between progress updates of train_stats.json while a run is going.
_STATS_EVERY_S = 5.0
# Skip messages (no report, image not downloadable) kept in train_stats.json.
_SKIP_MESSAGES = 20


class AFLocTrainTask(TrainTask):
    """Report-supervised AFLoc training on the datastore (see the module docstring)."""

    def __init__(self, store: ModelStore, description: str = ""):
        super().__init__(
            description
            or "Train or fine-tune AFLoc on every datastore image that has a report (info 'report' or <id>.txt)"
        )
        self.store = store

    def config(self) -> Dict[str, Any]:
        return dict(DEFAULT_CONFIG)

    def check_request(self, body: Any) -> Dict[str, Any]:
        """Validate a client's request body (``lib.route_guard`` calls it before a process starts)."""
        return check_options(body)

    def stats(self) -> Dict[str, Any]:
        try:
            stats = json.loads(self.store.stats_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return stats if isinstance(stats, dict) else {}

    def __call__(self, request: Dict[str, Any], datastore: Datastore) -> Dict[str, Any]:
        from afloc_training.trainer import train

        options = _parse_options(request)
        data, count = _training_data(datastore)
        if count < 2:
            raise BadRequestError(
                f"only {count} datastore image(s) have a report; contrastive training needs at least 2 "
                + (
                    "(add reports as image info 'report' or as <id>.txt next to the image)"
                    if isinstance(datastore, AFLocDatastore)
                    else "(reports come from the studies' DICOM SR instances or image info 'report')"
                    + (f"; {data.summary()}: {'; '.join(data.warnings[:3])}" if data is not None else "")
                )
            )
        served = self.store.served()
        init_from = served.path if options["init"] == "current" and served is not None else None
        run_dir = self.store.new_run_dir()
        progress = _Progress(self.store.stats_file, run_dir, options, count, init_from)
        if data is not None:
            progress.base["source"] = data.summary()
            progress.base["skip_messages"] = data.warnings[:_SKIP_MESSAGES]
        progress.write("RUNNING")
        try:
            result = train(
                data if data is not None else datastore.root(),
                run_dir,
                config=options["config"],
                epochs=options["epochs"],
                max_steps=options["max_steps"],
                max_minutes=options["max_minutes"],
                seed=options["seed"],
                init_from=init_from,
                progress=False,
                stop_check=progress,
                log_dir=self.store.model_dir / "logs" / run_dir.name,
            )
        except BaseException as exc:
            progress.write("ERROR", error=f"{type(exc).__name__}: {exc}")
            raise
        summary = {
            "run": run_dir.name,
            "steps": result.steps,
            "epochs": result.epochs,
            "stopped": result.stopped,
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "train_pairs": result.train_pairs,
            "val_pairs": result.val_pairs,
            "skipped": result.skipped,
            "seconds": round(result.seconds, 1),
            "warnings": result.warnings,
        }
        problem = checkpoint_problem(run_dir)
        if result.stopped not in _PUBLISHABLE or problem is not None:
            reason = problem or f"training stopped early ({result.stopped})"
            progress.write("STOPPED", error=f"not published: {reason}", result=summary)
            logger.warning("run %s not published: %s", run_dir.name, reason)
            return {**summary, "published": False}
        published = self.store.publish(run_dir)
        self.store.prune()
        summary.update({"published": True, "model_version": published.version})
        progress.write("DONE", result=summary, version=published.version)
        logger.info("published %s (version %s)", run_dir.name, published.version)
        return summary


def _training_data(datastore: Datastore) -> Tuple[Optional[Any], int]:
    """What to train on: ``(None, n)`` for a local folder (the trainer lists it itself), or the
    pairs of a DICOMweb datastore (images downloaded once into its cache) and their count."""
    if isinstance(datastore, AFLocDatastore):
        return None, len(datastore.images_with_reports())
    pairs_of = getattr(datastore, "training_pairs", None)
    if pairs_of is None:
        raise BadRequestError(
            f"afloc_train cannot read reports from a {type(datastore).__name__}; use a local folder or a DICOMweb PACS"
        )
    pairs = pairs_of()
    return pairs, len(pairs)


def check_options(body: Any) -> Dict[str, Any]:
    """Validate a client's ``POST /train/afloc_train`` body before a training process starts.

    Only the options of :data:`DEFAULT_CONFIG` are accepted: anything else (MONAI Label's
    ``bundle_path``, which it appends to the training process's ``PYTHONPATH``, ``gpus``, ...) is
    refused with :class:`BadRequestError`, as are invalid values. Returns the parsed options.
    """
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise BadRequestError(f"the training options must be a JSON object, got {type(body).__name__}")
    unknown = sorted(str(key) for key in body if key not in DEFAULT_CONFIG)
    if unknown:
        raise BadRequestError(
            f"unknown training option(s) {', '.join(map(repr, unknown))}; afloc_train accepts "
            f"{', '.join(DEFAULT_CONFIG)}"
        )
    return _parse_options(body)


def _parse_options(request: Dict[str, Any]) -> Dict[str, Any]:
    values = {key: first_choice(request.get(key, default)) for key, default in DEFAULT_CONFIG.items()}
    init = str(values["init"] or "current").strip().lower()
    if init not in ("current", "scratch"):
        raise BadRequestError(f"'init' must be 'current' or 'scratch', got {values['init']!r}")
    config = values["config"]
    if config is not None and not isinstance(config, str):
        raise BadRequestError(f"'config' must be a preset name, got {config!r}")
    if isinstance(config, str) and config.strip() and config.strip() not in _HTTP_PRESETS:
        # A YAML file may name a text model folder to load: a client must not pick server files.
        raise BadRequestError(
            f"'config' must be one of {', '.join(_HTTP_PRESETS)} (or empty), got {config!r}; "
            "train from a YAML file with the afloc-train command line instead"
        )
    return {
        "init": init,
        "config": config.strip() if isinstance(config, str) and config.strip() else None,
        "max_steps": _positive(values["max_steps"], "max_steps", int),
        "max_minutes": _positive(values["max_minutes"], "max_minutes", float),
        "epochs": _positive(values["epochs"], "epochs", int),
        "seed": _positive(values["seed"], "seed", int, allow_zero=True) or 0,
    }


def _positive(value: Any, name: str, kind: Callable[[Any], Any], allow_zero: bool = False) -> Optional[Any]:
    """An optional positive number; empty means "not set"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise BadRequestError(f"'{name}' must be a number, got {value!r}") from None
    if kind is int and float(value) != number:
        raise BadRequestError(f"'{name}' must be a whole number, got {value!r}")
    if number < 0 or (number == 0 and not allow_zero):
        raise BadRequestError(f"'{name}' must be {'>= 0' if allow_zero else 'positive'}, got {value!r}")
    return number


class _Progress:
    """``stop_check`` for the trainer that also keeps ``train_stats.json`` current.

    Called after every training step. Asks the trainer to stop (which saves, but a stopped run
    is not published) when the server that started this process is gone or on SIGTERM.
    """

    def __init__(self, path: Path, run_dir: Path, options: Dict[str, Any], pairs: int, init_from: Optional[Path]):
        self.path = path
        self.base = {
            "run": run_dir.name,
            "init_from": str(init_from) if init_from else None,
            "pairs_with_reports": pairs,
            "options": options,
            "total_steps": options["max_steps"],
        }
        self.started = time.time()
        self.steps = 0
        self.last_write = 0.0
        self.parent = os.getppid()
        self.terminated = False
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread (e.g. a synchronous run inside the server)
            pass

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self.terminated = True

    def __call__(self) -> bool:
        self.steps += 1
        now = time.time()
        if now - self.last_write >= _STATS_EVERY_S:
            self.write("RUNNING")
        return self.terminated or os.getppid() != self.parent

    def write(self, status: str, **extra: Any) -> None:
        """Atomically replace the stats file (Slicer's module reads ``epoch``/``total_epochs``)."""
        self.last_write = time.time()
        total = self.base["total_steps"] or 0
        stats = {
            **self.base,
            "status": status,
            "steps": self.steps,
            # Slicer's MONAILabel module draws its progress bar from epoch / total_epochs.
            "epoch": self.steps,
            "total_epochs": total or max(self.steps, 1),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)),
            "elapsed_s": round(self.last_write - self.started, 1),
            **extra,
        }
        if status != "RUNNING":
            stats["total_time"] = f"{stats['elapsed_s']:.0f}s"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(stats, indent=2, default=str))
