"""The app's local datastore: MONAI Label's ``LocalDatastore`` plus DICOM files, reports and name checks.

Differences from the stock datastore:

- DICOM files (``.dcm``, ``.dicom``) and ``.jpeg`` are listed as images (the stock list lacks them).
- Every image may carry a free-text report: the ``report`` entry of its image info (set with
  ``PUT /datastore/image`` + ``params`` or ``PUT /datastore/image/info``) or, failing that, a
  sidecar ``<id>.txt`` next to the image. The training task uses every image that has one.
  ``GET /datastore/image/info`` shows it as ``report`` with ``report_source`` (where it came from).
- Uploaded images are decoded once before they are accepted, so a corrupt or unsupported file
  is refused with a message instead of breaking inference later.
- Image ids and label tags that could leave the datastore folder are refused (``lib.ids``).
- Large labels (heatmaps) can be stored after the reply has gone (:meth:`save_label_soon`);
  readers of such a label wait until it is there.
- Every write is crash-safe (:mod:`afloc_models.atomic`): the index ``datastore_v2.json``,
  images and labels are written to a temporary file in the same folder, synced and renamed into
  place, so a server killed at any moment restarts on the old or the new content, never on an
  empty index or a half-copied label. Temporary files a killed server left are removed at start.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from afloc_models.atomic import atomic_copy, atomic_write_text, remove_stale_temp_files
from afloc_models.imaging import read_image
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException

from lib.errors import BadRequestError
from lib.ids import check_image_id, check_tag

logger = logging.getLogger(__name__)

__all__ = [
    "AFLocDatastore",
    "AtomicIndexWrites",
    "AtomicLocalDatastore",
    "DeferredLabelWrites",
    "REPORT_KEY",
    "REPORT_SOURCE_KEY",
    "datastore_extensions",
]

#: Image-info key holding an image's report.
REPORT_KEY = "report"
#: Key of ``GET /datastore/image/info`` saying where the report came from (info, sidecar, SR).
REPORT_SOURCE_KEY = "report_source"
#: Longest report accepted through the API (a radiology report is a few thousand characters).
MAX_REPORT_CHARS = 20_000
#: Image file patterns added to MONAI Label's defaults.
EXTRA_EXTENSIONS = ("*.dcm", "*.dicom", "*.jpeg")
#: What an uploaded image may be; MONAI Label's default list also has label/annotation formats.
UPLOAD_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".nii", ".nii.gz", ".tif")


def datastore_extensions(base: Sequence[str]) -> list[str]:
    """MONAI Label's configured file patterns plus the DICOM/JPEG ones, without duplicates."""
    merged = list(base)
    for pattern in EXTRA_EXTENSIONS:
        if pattern not in merged:
            merged.append(pattern)
    return merged


class DeferredLabelWrites:
    """Datastore mixin: labels stored after the reply, and readers that wait for them.

    Used before a MONAI Label datastore class in the bases (``class X(DeferredLabelWrites,
    LocalDatastore)``); it relies on that class's ``save_label``, ``get_label_uri`` and
    ``get_label_info``.
    """

    def save_label_soon(
        self,
        image_id: str,
        tag: str,
        suffix: str,
        write: Callable[[Path], object],
        info: Dict[str, Any],
    ) -> str:
        """Store a label in the background; returns its label id at once.

        ``write(path)`` creates the file (e.g. a 14 MB float heatmap, whose writing would
        otherwise delay the reply). Until it is stored, :meth:`get_label_uri` and
        :meth:`get_label_info` for ``(image_id, tag)`` wait for it, so a client that follows
        the URL in the reply gets this label, not an older one. Writes run one at a time, in
        the order they were asked for.
        """
        check_image_id(image_id)
        check_tag(tag)
        key = (image_id, tag)
        self._pending_writes().begin(key)

        def job() -> None:
            try:
                with tempfile.TemporaryDirectory(prefix="afloc-label-") as folder:
                    path = Path(folder) / f"label{suffix}"
                    write(path)
                    self.save_label(image_id, str(path), tag, info)
            except Exception:
                logger.exception("could not store label %s/%s", tag, image_id)
            finally:
                self._pending_writes().end(key)

        self._label_writer().submit(job)
        return image_id

    def get_label_uri(self, label_id: str, label_tag: str, *args: Any, **kwargs: Any) -> str:
        self._pending_writes().wait((label_id, label_tag))
        return super().get_label_uri(label_id, label_tag, *args, **kwargs)

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        self._pending_writes().wait((label_id, label_tag))
        return super().get_label_info(label_id, label_tag)

    def _pending_writes(self) -> "_PendingWrites":
        # Created on first use: LocalDatastore.__init__ (which calls our overrides) runs first.
        with _INIT_LOCK:
            if getattr(self, "_pending", None) is None:
                self._pending = _PendingWrites()
            return self._pending

    def _label_writer(self) -> ThreadPoolExecutor:
        with _INIT_LOCK:
            if getattr(self, "_writer", None) is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="afloc-label-writer")
            return self._writer


class AtomicIndexWrites:
    """Datastore mixin: MONAI Label's index file ``datastore_v2.json`` replaced atomically.

    ``LocalDatastore`` (and the DICOMweb datastore's local cache) rewrites the index in place
    (``open("w")`` then write): a kill in between leaves it empty or cut short, and the server no
    longer starts on that folder. Here the whole text goes to a temporary file next to it, which
    is synced and renamed over the index.
    """

    def _update_datastore_file(self, lock: bool = True) -> None:
        text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)

        def write() -> None:
            atomic_write_text(self._datastore_config_path, text)
            # The reload check compares this stamp with the file's: our own write is not a change.
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()


class AtomicLocalDatastore(AtomicIndexWrites, LocalDatastore):
    """``LocalDatastore`` whose label copies are atomic too (temporary file, fsync, rename).

    MONAI Label copies a saved label straight over the old one (``shutil.copy``): a kill in the
    middle destroys both. Also placed under ``DICOMWebDatastore`` (whose ``save_label`` ends in
    ``LocalDatastore.save_label`` for its local cache), see ``lib.dicomweb_datastore``.
    """

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        """Store ``label_filename`` as ``labels/<tag>/<image id><ext>``; the old label stays whole until the swap."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            raise ImageNotFoundException(f"Image {image_id} not found")
        _, ext = self._to_id(os.path.basename(label_filename))
        folder = self._datastore.label_path(label_tag)
        name = self._filename(image_id, ext)
        info = dict(label_info or {})
        with FileLock(self._lock_file):
            os.makedirs(folder, exist_ok=True)
            atomic_copy(label_filename, os.path.join(folder, name))
            info.update({"ts": int(time.time()), "name": name})
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info("saved label %s/%s", label_tag, image_id)
        return image_id


class AFLocDatastore(DeferredLabelWrites, AtomicLocalDatastore):
    """A ``LocalDatastore`` whose images may have reports; see the module docstring."""

    def __init__(self, datastore_path: str, *args: Any, **kwargs: Any):
        labels = Path(datastore_path) / "labels"
        tag_folders = [p for p in labels.iterdir() if p.is_dir()] if labels.is_dir() else []
        for stale in remove_stale_temp_files([datastore_path, *tag_folders]):
            logger.warning("removed %s, left by a write that was interrupted", stale)
        super().__init__(datastore_path, *args, **kwargs)

    # ----------------------------------------------------------------- reports
    def report(self, image_id: str) -> Optional[str]:
        """The image's report: its info's ``report`` entry, else the sidecar ``<id>.txt``; None if neither."""
        return self.report_with_source(image_id)[0]

    def report_with_source(self, image_id: str) -> Tuple[Optional[str], Dict[str, Any]]:
        """The image's report and where it came from (``{"type": "info"}`` or ``{"type": "sidecar",
        "file": "<id>.txt"}``; ``{"type": None, "reason": ...}`` without a report)."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return None, {"type": None, "reason": f"image {image_id!r} is not in the datastore"}
        text = obj.image.info.get(REPORT_KEY)
        if isinstance(text, str) and text.strip():
            return text, {"type": "info"}
        sidecar = Path(self._datastore.image_path()) / f"{image_id}.txt"
        if sidecar.is_file():
            text = sidecar.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                return text, {"type": "sidecar", "file": sidecar.name}
        return None, {"type": None, "reason": f"no 'report' in the image info and no sidecar '{sidecar.name}'"}

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        """MONAI Label's image info plus ``report`` and ``report_source`` (see :meth:`report_with_source`)."""
        info = super().get_image_info(image_id)
        if info:
            info[REPORT_KEY], info[REPORT_SOURCE_KEY] = self.report_with_source(image_id)
        return info

    def images_with_reports(self) -> list[str]:
        """Ids of the images that have a non-empty report, sorted."""
        return sorted(i for i in self.list_images() if self.report(i))

    def root(self) -> Path:
        """The datastore folder."""
        return Path(self._datastore_path)

    # ----------------------------------------------------------------- checked overrides
    def get_image_uri(self, image_id: str) -> str:
        check_image_id(image_id)
        return super().get_image_uri(image_id)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        derived_id, ext = self._to_id(os.path.basename(image_filename))
        if ext.lower() not in UPLOAD_EXTENSIONS:
            raise BadRequestError(
                f"cannot add '{os.path.basename(image_filename)}': images must be one of "
                f"{', '.join(UPLOAD_EXTENSIONS)}"
            )
        image_id = check_image_id(image_id or derived_id)
        info = dict(image_info or {})
        _check_report(info)
        # Decode once: a broken upload is refused now (ImageReadError -> 422), not at inference.
        read_image(image_filename)
        name = self._filename(image_id, ext)
        with FileLock(self._lock_file):
            atomic_copy(image_filename, os.path.join(self._datastore.image_path(), name))
            info.update({"ts": int(time.time()), "name": name})
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        check_image_id(image_id)
        _check_report(info)
        # report_source is computed on every read, never stored.
        super().update_image_info(image_id, {k: v for k, v in info.items() if k != REPORT_SOURCE_KEY})

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_image_id(image_id)
        check_tag(label_tag)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_image_id(label_id, "label id")
        check_tag(label_tag)
        super().remove_label(label_id, label_tag)


_INIT_LOCK = threading.Lock()
#: Longest wait of a reader for a label still being written (a 14 MB heatmap takes well under 1 s).
PENDING_WAIT_S = 60.0


class _PendingWrites:
    """Counts labels queued but not yet stored, per ``(image id, tag)``; readers wait for zero."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count: Counter = Counter()

    def begin(self, key: tuple[str, str]) -> None:
        with self._cond:
            self._count[key] += 1

    def end(self, key: tuple[str, str]) -> None:
        with self._cond:
            self._count[key] -= 1
            if self._count[key] <= 0:
                del self._count[key]
                self._cond.notify_all()

    def wait(self, key: tuple[str, str], timeout: float = PENDING_WAIT_S) -> None:
        with self._cond:
            self._cond.wait_for(lambda: key not in self._count, timeout=timeout)


def _check_report(info: Dict[str, Any]) -> None:
    if REPORT_KEY not in info:
        return
    report = info[REPORT_KEY]
    if not isinstance(report, str):
        raise BadRequestError(f"'{REPORT_KEY}' in the image info must be a string, got {type(report).__name__}")
    if len(report) > MAX_REPORT_CHARS:
        raise BadRequestError(f"report is {len(report)} characters long; the limit is {MAX_REPORT_CHARS}")
