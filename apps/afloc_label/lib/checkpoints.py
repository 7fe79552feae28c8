"""Which AFLoc checkpoint the server serves, and atomic publication of newly trained ones.

Layout of the model folder (``--conf model_dir``, default ``<app>/model``)::

    model/
      current -> runs/20250101-120000-4242     # symlink to the served trained checkpoint
      runs/
        20250101-120000-4242/                  # one AFLoc checkpoint folder per training run
      train_stats.json                         # summary of the latest training run

The base checkpoint may also be the published AFLoc ``.ckpt`` file (with ``--conf text_model``):
it is converted once into ``model/imported/<name>-<key>`` and that folder is served.

The served checkpoint is ``model/current`` when it points at a complete checkpoint, else the
base checkpoint given at start (``--conf checkpoint``), else none. A training run writes into a
fresh ``runs/<id>`` folder and only a finished, complete run is published, by replacing the
``current`` symlink in one ``rename``; a failed, stopped or killed run therefore never changes
what is served. Readers notice a publication through :attr:`CheckpointRef.fingerprint`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from afloc_models.atomic import fsync_dir

logger = logging.getLogger(__name__)

__all__ = ["CheckpointRef", "ModelStore", "checkpoint_problem"]

CURRENT_LINK = "current"
RUNS_DIR = "runs"
STATS_FILE = "train_stats.json"
#: Finished runs kept on disk besides the served one.
KEEP_RUNS = 2
# Files that make a folder an AFLoc checkpoint (see afloc_models.model; not imported: it pulls torch).
_REQUIRED = ("config.yaml", "model.safetensors", "text_encoder")
_WEIGHTS = "model.safetensors"
_META = "meta.json"


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint folder as seen at one moment.

    Attributes:
        path: the resolved checkpoint folder.
        fingerprint: changes whenever the folder's weights are replaced (path, inode, mtime, size).
        version: the ``version`` in its ``meta.json`` (the folder name if absent).
        source: ``trained`` (published by a training run) or ``base`` (given at server start).
        trained_on: the ``trained_on`` text of its ``meta.json`` (what the model was trained on,
            e.g. "synthetic phantoms ...: not for clinical images"), or None if it does not say.
    """

    path: Path
    fingerprint: tuple
    version: str
    source: str
    trained_on: Optional[str] = None


def checkpoint_problem(folder: Path) -> Optional[str]:
    """Why ``folder`` is not a complete AFLoc checkpoint, or None if it is."""
    if not folder.is_dir():
        return f"'{folder}' is not a folder"
    missing = [name for name in _REQUIRED if not (folder / name).exists()]
    if missing:
        return f"'{folder}' is not an AFLoc checkpoint: {', '.join(missing)} missing"
    return None


class ModelStore:
    """The served checkpoint (trained or base) and the publication of new ones."""

    def __init__(self, model_dir: Path, base_checkpoint: Optional[Path] = None, text_model: Optional[Path] = None):
        self.model_dir = Path(model_dir)
        self.base_checkpoint = Path(base_checkpoint) if base_checkpoint else None
        if self.base_checkpoint is not None and self.base_checkpoint.is_file():
            from afloc_models.published import convert_once  # torch: only for a .ckpt base

            self.base_checkpoint = convert_once(self.base_checkpoint, text_model, self.model_dir / "imported")
        self._versions: dict[tuple, tuple[str, Optional[str]]] = {}

    @property
    def current_link(self) -> Path:
        return self.model_dir / CURRENT_LINK

    @property
    def runs_dir(self) -> Path:
        return self.model_dir / RUNS_DIR

    @property
    def stats_file(self) -> Path:
        return self.model_dir / STATS_FILE

    def served(self) -> Optional[CheckpointRef]:
        """The checkpoint to serve now: the published trained one, else the base one, else None."""
        link = self.current_link
        if link.is_symlink() or link.exists():
            target = link.resolve()
            problem = checkpoint_problem(target)
            if problem is None:
                return self._ref(target, "trained")
            logger.warning("ignoring %s: %s", link, problem)
        if self.base_checkpoint is not None and checkpoint_problem(self.base_checkpoint) is None:
            return self._ref(self.base_checkpoint.resolve(), "base")
        return None

    def describe_missing(self) -> str:
        """A message saying why nothing is served and how to fix it."""
        if self.base_checkpoint is None:
            base = "no base checkpoint was given (start the server with --conf checkpoint <folder>)"
        else:
            base = checkpoint_problem(self.base_checkpoint) or f"'{self.base_checkpoint}' is unusable"
        return (
            f"no AFLoc checkpoint is being served: {base}, and no training run has been published in "
            f"'{self.model_dir}'. Build one with `python scripts/build_demo.py` or run the 'afloc_train' trainer."
        )

    def new_run_dir(self) -> Path:
        """A fresh, not yet existing folder under ``runs/`` for one training run."""
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        run = self.runs_dir / f"{stamp}-{os.getpid()}"
        suffix = 1
        while run.exists():
            suffix += 1
            run = self.runs_dir / f"{stamp}-{os.getpid()}-{suffix}"
        return run

    def publish(self, run_dir: Path) -> CheckpointRef:
        """Serve ``run_dir`` from now on: swap the ``current`` symlink in one atomic rename."""
        run_dir = Path(run_dir).resolve()
        problem = checkpoint_problem(run_dir)
        if problem is not None:
            raise RuntimeError(f"refusing to publish an incomplete checkpoint: {problem}")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        staging = self.model_dir / f".{CURRENT_LINK}.{os.getpid()}.{time.monotonic_ns()}"
        os.symlink(os.path.relpath(run_dir, self.model_dir), staging)
        try:
            os.replace(staging, self.current_link)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        fsync_dir(self.model_dir)
        logger.info("published checkpoint %s", run_dir)
        return self._ref(run_dir, "trained")

    def prune(self, keep: int = KEEP_RUNS) -> list[Path]:
        """Delete old runs (never the served one); returns what was removed.

        Keeps the ``keep`` newest finished runs besides the served one. Unfinished folders
        (killed runs, staging folders) older than an hour go too; younger ones may belong to a
        run still in progress.
        """
        if not self.runs_dir.is_dir():
            return []
        served = self.current_link.resolve() if self.current_link.is_symlink() else None
        now = time.time()
        finished, removed = [], []
        for entry in sorted(self.runs_dir.iterdir(), key=lambda p: p.name, reverse=True):
            if served is not None and entry.resolve() == served:
                continue
            if checkpoint_problem(entry) is None and not entry.name.startswith("."):
                finished.append(entry)
            elif now - entry.stat().st_mtime > 3600:
                removed.append(entry)
        removed.extend(finished[keep:])
        for entry in removed:
            shutil.rmtree(entry, ignore_errors=True)
        return removed

    # ----------------------------------------------------------------- helpers
    def _ref(self, folder: Path, source: str) -> CheckpointRef:
        try:
            stat = (folder / _WEIGHTS).stat()
            fingerprint: tuple = (str(folder), stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            fingerprint = (str(folder), 0, 0, 0)
        described = self._versions.get(fingerprint)
        if described is None:
            described = _read_meta(folder)
            self._versions = {fingerprint: described}  # only the latest matters
        version, trained_on = described
        return CheckpointRef(path=folder, fingerprint=fingerprint, version=version, source=source,
                             trained_on=trained_on)


def _read_meta(folder: Path) -> tuple[str, Optional[str]]:
    """``(version, trained_on)`` from the folder's ``meta.json`` (folder name and None if absent)."""
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return folder.name, None
    if not isinstance(meta, dict):
        return folder.name, None
    version, trained_on = meta.get("version"), meta.get("trained_on")
    return (str(version) if version else folder.name), (str(trained_on) if trained_on else None)
