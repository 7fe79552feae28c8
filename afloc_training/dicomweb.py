"""Images and reports from a PACS over DICOMweb: report lookup, cached downloads, training pairs.

- :class:`StudyReports` finds a study's report in its SR series: QIDO-RS for the study's series
  with ``Modality=SR``, WADO-RS series metadata for their content (the whole instance through
  WADO-RS when the PACS sends text as bulk data), :mod:`afloc_training.sr_reports` to read them.
  SR instances are never written to disk: they are not images.
- :class:`SeriesCache` downloads an image series once into ``<cache>/<series uid>/<sop uid>.dcm``
  (into a temporary folder renamed into place, so an interrupted download is never taken for a
  cached one) and reuses it afterwards.
- :func:`dicomweb_pairs` lists the training pairs of a PACS: every CR/DX series (or the ones
  given) whose study has a report, with the same skip reasons and messages as the datastore
  folder source of :mod:`afloc_training.data`. :func:`load_dicomweb_pairs` is what
  ``afloc-train --data http://host/dicom-web`` runs.

``dicomweb-client`` and ``highdicom`` are imported when used (both come with the ``server`` extra).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from afloc_models.errors import AFLocError
from afloc_training.sr_reports import SRSkip, StudyReport, choose_report, read_sr

logger = logging.getLogger("afloc.training")

__all__ = [
    "DEFAULT_MODALITIES",
    "SeriesCache",
    "StudyReports",
    "default_cache_dir",
    "dicomweb_pairs",
    "is_dicomweb_url",
    "list_image_series",
    "load_dicomweb_pairs",
    "make_client",
    "qido_value",
]

#: Image modalities of projection radiographs.
DEFAULT_MODALITIES = ("CR", "DX")
#: Environment variable naming the download cache of ``afloc-train --data http://...``.
CACHE_ENV = "AFLOC_DICOMWEB_CACHE"
_STUDY = "0020000D"
_SERIES = "0020000E"
_SOP = "00080018"
_MODALITY = "00080060"


def is_dicomweb_url(source: object) -> bool:
    """Whether a training-data argument names a DICOMweb service (``http(s)://...``)."""
    return isinstance(source, str) and source.strip().lower().startswith(("http://", "https://"))


def make_client(url: str) -> Any:
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` (user/password from
    ``AFLOC_DICOMWEB_USER`` / ``AFLOC_DICOMWEB_PASSWORD`` when set)."""
    try:
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session_from_user_pass
    except ImportError:
        raise AFLocError(
            "reading from a DICOMweb server needs the 'dicomweb-client' and 'highdicom' packages: "
            "pip install 'afloc-label[server]'"
        ) from None
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # one INFO line per HTTP request otherwise
    user, password = os.environ.get("AFLOC_DICOMWEB_USER"), os.environ.get("AFLOC_DICOMWEB_PASSWORD")
    session = create_session_from_user_pass(user, password) if user and password else None
    return DICOMwebClient(url=url.rstrip("/"), session=session)


def default_cache_dir(url: str) -> Path:
    """``$AFLOC_DICOMWEB_CACHE`` (or ``~/.cache/afloc/dicomweb``) / a hash of the URL."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "afloc" / "dicomweb").expanduser()
    return root / hashlib.sha1(url.rstrip("/").encode("utf-8")).hexdigest()[:16]


def qido_value(item: dict, tag: str) -> str:
    """The first value of ``tag`` (e.g. ``0020000D``) in a DICOM JSON (QIDO-RS) result, or ""."""
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""


class StudyReports:
    """Report lookup per study through a DICOMweb client; results kept ``ttl_s`` seconds.

    Thread-safe. ``lookup(study)`` never raises for a PACS answer it does not like: the
    :class:`StudyReport` then has no text and its ``skipped`` / :meth:`StudyReport.reason` say why.
    """

    def __init__(self, client: Any, ttl_s: float = 60.0):
        self.client = client
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, StudyReport]] = {}
        self._study_of: dict[str, str] = {}
        self._lock = threading.Lock()

    def study_of_series(self, series_uid: str) -> Optional[str]:
        """The StudyInstanceUID of a series (QIDO-RS), or None when the PACS does not know it."""
        with self._lock:
            known = self._study_of.get(series_uid)
        if known:
            return known
        found = self.client.search_for_series(search_filters={"SeriesInstanceUID": series_uid})
        study = next((qido_value(s, _STUDY) for s in found if qido_value(s, _SERIES) == series_uid), "")
        if study:
            with self._lock:
                self._study_of[series_uid] = study
        return study or None

    def remember_study(self, series_uid: str, study_uid: str) -> None:
        """Record a series' study (known from a listing), saving a QIDO query later."""
        if series_uid and study_uid:
            with self._lock:
                self._study_of[series_uid] = study_uid

    def for_series(self, series_uid: str) -> StudyReport:
        """The report of the study a series belongs to."""
        try:
            study = self.study_of_series(series_uid)
        except Exception as exc:  # connection refused, HTTP error
            return StudyReport(None, {}, [{"sop_instance_uid": "", "reason": f"PACS query failed: {exc}"}], "")
        if not study:
            return StudyReport(None, {}, [{"sop_instance_uid": "", "reason": f"series {series_uid} is not in the PACS"}], "")
        return self.lookup(study)

    def lookup(self, study_uid: str, fresh: bool = False) -> StudyReport:
        """The report of a study (cached for ``ttl_s`` seconds unless ``fresh``)."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(study_uid)
        if hit and not fresh and now - hit[0] < self.ttl_s:
            return hit[1]
        try:
            report = self._fetch(study_uid)
        except Exception as exc:  # the PACS failed; not cached, so the next call retries
            logger.warning("report lookup for study %s failed: %s", study_uid, exc)
            return StudyReport(None, {}, [{"sop_instance_uid": "", "reason": f"PACS query failed: {exc}"}], study_uid)
        with self._lock:
            self._cache[study_uid] = (now, report)
        return report

    def invalidate(self, study_uid: Optional[str] = None) -> None:
        with self._lock:
            if study_uid is None:
                self._cache.clear()
            else:
                self._cache.pop(study_uid, None)

    # ------------------------------------------------------------------ internals
    def _fetch(self, study_uid: str) -> StudyReport:
        series = self.client.search_for_series(study_uid, search_filters={"Modality": "SR"})
        documents, skipped = [], []
        for entry in series:
            series_uid = qido_value(entry, _SERIES)
            if not series_uid or qido_value(entry, _MODALITY) not in ("", "SR"):
                continue
            for dataset in self._series_datasets(study_uid, series_uid, skipped):
                try:
                    documents.append(read_sr(dataset))
                except SRSkip as skip:
                    logger.info("study %s: %s", study_uid, skip)
                    skipped.append({"sop_instance_uid": skip.sop_instance_uid, "reason": skip.reason})
        return choose_report(documents, skipped, study_uid)

    def _series_datasets(self, study_uid: str, series_uid: str, skipped: list) -> list:
        from pydicom.dataset import Dataset

        datasets = []
        for meta in self.client.retrieve_series_metadata(study_uid, series_uid):
            sop = qido_value(meta, _SOP)
            bulk: list[str] = []

            def note_bulk(*args: Any) -> bytes:
                bulk.append(str(args[-1]))
                return b""

            try:
                dataset = Dataset.from_json(meta, bulk_data_uri_handler=note_bulk)
                if bulk:  # long text sent by reference: fetch the whole instance
                    dataset = self.client.retrieve_instance(study_uid, series_uid, sop)
            except Exception as exc:
                skipped.append({"sop_instance_uid": sop, "reason": f"unreadable SR metadata ({type(exc).__name__}: {exc})"})
                continue
            datasets.append(dataset)
        return datasets


class SeriesCache:
    """Image series downloaded once into ``root/<series uid>/`` (see the module docstring)."""

    def __init__(self, client: Any, root: Union[str, Path]):
        self.client = client
        self.root = Path(root)
        self.downloads = 0  #: series actually downloaded by this object (the rest came from the cache)

    def folder(self, study_uid: str, series_uid: str) -> Path:
        """The cached series folder, downloading it first if needed."""
        target = self.root / series_uid
        if target.is_dir() and any(target.glob("*.dcm")):
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{series_uid[:40]}.", dir=self.root))
        try:
            for dataset in self.client.retrieve_series(study_uid, series_uid):
                name = f"{dataset.SOPInstanceUID}.dcm"
                dataset.save_as(str(staging / name), write_like_original=False)
                with open(staging / name, "rb+") as handle:
                    os.fsync(handle.fileno())
            if not any(staging.glob("*.dcm")):
                raise AFLocError(f"series {series_uid} has no instance in the PACS")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self.downloads += 1
        return target


def dicomweb_pairs(
    series: Sequence[tuple[str, str]],
    report_of: Callable[[str, str], tuple[Optional[str], str]],
    fetch: Callable[[str, str], Union[str, Path]],
    source: str,
) -> "Any":
    """Training pairs of PACS image series.

    Args:
        series: ``(series uid, study uid)`` of every image series to consider.
        report_of: ``(series, study) -> (report text or None, why there is none)``.
        fetch: ``(series, study) -> folder (or file)`` of the downloaded series (cached).
        source: the DICOMweb URL, for messages.

    Returns a :class:`afloc_training.data.PairList` (kind ``dicomweb``); an image series without
    report counts as ``empty_report``, one that cannot be downloaded as ``missing_image``.
    """
    from afloc_training.data import PairList, _add

    result = PairList(pairs=[], source=source, kind="dicomweb")
    for series_uid, study_uid in series:
        where = f"series '{series_uid}' (study {study_uid or '?'})"
        text, why = report_of(series_uid, study_uid)
        if not text or not text.strip():
            result._skip("empty_report", f"skipped {where}: no report ({why or 'none found'}; no 'report' in its datastore info)")
            continue
        try:
            folder = Path(fetch(series_uid, study_uid))
        except Exception as exc:
            result._skip("missing_image", f"skipped {where}: the image could not be downloaded ({type(exc).__name__}: {exc})")
            continue
        files = [folder] if folder.is_file() else sorted(p for p in folder.glob("*.dcm") if p.is_file())
        if not files:
            result._skip("missing_image", f"skipped {where}: the downloaded series folder '{folder}' holds no DICOM file")
            continue
        for index, file in enumerate(files):
            pair_id = series_uid if len(files) == 1 else f"{series_uid}_{index}"
            _add(result, pair_id, file, text, group=study_uid or series_uid, origin=f"{where} ('{file.name}')")
    return result


def list_image_series(client: Any, modalities: Iterable[str] = DEFAULT_MODALITIES) -> list[tuple[str, str]]:
    """``(series uid, study uid)`` of every series of the given modalities, sorted."""
    found: dict[str, str] = {}
    for modality in modalities:
        for entry in client.search_for_series(search_filters={"Modality": modality}, get_remaining=True):
            uid = qido_value(entry, _SERIES)
            if uid:
                found[uid] = qido_value(entry, _STUDY)
    return sorted(found.items())


def load_dicomweb_pairs(
    url: str, cache_dir: Union[str, Path, None] = None, modalities: Iterable[str] = DEFAULT_MODALITIES
) -> "Any":
    """The training pairs of a DICOMweb server (``afloc-train --data URL``).

    Images are downloaded once into ``cache_dir`` (default :func:`default_cache_dir`).

    Raises:
        AFLocError: the server cannot be reached or answers with an error.
    """
    client = make_client(url)
    try:
        series = list_image_series(client, modalities)
    except Exception as exc:
        raise AFLocError(f"cannot list the image series of DICOMweb server '{url}': {type(exc).__name__}: {exc}") from None
    reports = StudyReports(client, ttl_s=0.0)
    cache = SeriesCache(client, Path(cache_dir) if cache_dir else default_cache_dir(url))

    def report_of(series_uid: str, study_uid: str) -> tuple[Optional[str], str]:
        report = reports.lookup(study_uid) if study_uid else reports.for_series(series_uid)
        return report.text, report.reason()

    pairs = dicomweb_pairs(series, report_of, lambda series_uid, study_uid: cache.folder(study_uid, series_uid), url)
    logger.info("%s (%d series downloaded, the rest from cache '%s')", pairs.summary(), cache.downloads, cache.root)
    return pairs
