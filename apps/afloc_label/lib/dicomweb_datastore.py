"""The app's DICOMweb datastore: MONAI Label's ``DICOMWebDatastore`` that keeps track of what it downloads.

MONAI Label's DICOMweb datastore caches each series it downloads in a local folder, but with
NIfTI conversion off (``MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI=false``, right for radiographs)
it never enters that series in its local index. Everything stored per image then fails with
"image not found": saving a ``final`` label (after its DICOM-SEG has already reached the PACS),
drafts, and heatmaps. This class enters a series in the index when it is first downloaded (the
cached series folder is the image), so:

- ``PUT /datastore/label`` with tag ``final`` uploads a DICOM-SEG and keeps the label locally;
- drafts (``afloc_draft``) and heatmaps (``afloc_heatmap_*``) are kept in the local cache, as
  with a local datastore, and served by ``GET /datastore/label``.

Reports: an image's report is the ``report`` of its image info when one was set with
``PUT /datastore/image/info`` (a correction wins), else the report of its study's DICOM SR
instances (:class:`afloc_training.dicomweb.StudyReports`: QIDO-RS for the study's ``Modality=SR``
series, WADO-RS metadata, highdicom; looked up again after :data:`REPORT_TTL_S` seconds).
MONAI Label's own listing only sees the image modalities, and SRs are never downloaded into the
image cache. ``GET /datastore/image/info`` shows ``report`` and ``report_source``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel

from lib.datastore import REPORT_KEY, REPORT_SOURCE_KEY, AtomicLocalDatastore, DeferredLabelWrites, _check_report
from lib.ids import check_image_id, check_tag

logger = logging.getLogger(__name__)

__all__ = ["AFLocDICOMWebDatastore", "REPORT_TTL_S", "adopt"]

#: Seconds a study's SR lookup is reused before the PACS is asked again.
REPORT_TTL_S = 60.0


class AFLocDICOMWebDatastore(DeferredLabelWrites, DICOMWebDatastore, AtomicLocalDatastore):
    """A ``DICOMWebDatastore`` whose downloaded series are images of its local index."""

    def get_image_uri(self, image_id: str) -> str:
        check_image_id(image_id)
        uri = super().get_image_uri(image_id)
        if uri and os.path.isdir(uri) and image_id not in self._datastore.objects:
            self._index_series(image_id)
        return uri

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any], label_id: str = ""
    ) -> str:
        check_image_id(image_id)
        check_tag(label_tag)
        return super().save_label(image_id, label_filename, label_tag, label_info, label_id)

    # ----------------------------------------------------------------- reports
    def report(self, image_id: str) -> Optional[str]:
        """The image's report (image info ``report``, else its study's SR), or None."""
        return self.report_with_source(image_id)[0]

    def report_with_source(self, image_id: str, fresh: bool = False) -> Tuple[Optional[str], Dict[str, Any]]:
        """The image's report and where it came from: ``{"type": "info"}``, or ``{"type": "sr",
        "sop_instance_uid": ..., ...}`` with the SR instances not used under ``skipped``;
        ``{"type": None, "reason": ...}`` without a report."""
        check_image_id(image_id)
        obj = self._datastore.objects.get(image_id)
        text = obj.image.info.get(REPORT_KEY) if obj is not None else None
        if isinstance(text, str) and text.strip():
            return text, {"type": "info"}
        study = obj.image.info.get("StudyInstanceUID") if obj is not None else None
        reports = self.study_reports()
        found = reports.lookup(study, fresh=fresh) if study and study != "UNK" else reports.for_series(image_id)
        if found.text:
            return found.text, {**found.source, "skipped": found.skipped}
        return None, {"type": None, "reason": found.reason(), "skipped": found.skipped}

    def study_reports(self) -> Any:
        """The SR report lookup of this PACS (created on first use)."""
        from afloc_training.dicomweb import StudyReports

        if getattr(self, "_study_reports", None) is None:
            self._study_reports = StudyReports(self._client, ttl_s=REPORT_TTL_S)
        return self._study_reports

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        """MONAI Label's info (empty until the series is downloaded) plus ``report`` and ``report_source``."""
        info = super().get_image_info(image_id)
        info[REPORT_KEY], info[REPORT_SOURCE_KEY] = self.report_with_source(image_id)
        return info

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        """Store image info (e.g. a corrected ``report``); the series is downloaded first if needed,
        since only downloaded series have a local index entry."""
        check_image_id(image_id)
        _check_report(info)
        if image_id not in self._datastore.objects:
            self.get_image_uri(image_id)
        super().update_image_info(image_id, {k: v for k, v in info.items() if k != REPORT_SOURCE_KEY})

    def image_series(self) -> list[Tuple[str, str]]:
        """``(series uid, study uid)`` of every image series MONAI Label lists (its search filter)."""
        from afloc_training.dicomweb import qido_value

        found = {}
        for entry in self._client.search_for_series(search_filters=self._search_filter, get_remaining=True):
            series = qido_value(entry, "0020000E")
            if series:
                found[series] = qido_value(entry, "0020000D")
                self.study_reports().remember_study(series, found[series])
        return sorted(found.items())

    def training_pairs(self) -> Any:
        """The training pairs of the PACS (:func:`afloc_training.dicomweb.dicomweb_pairs`): every
        listed series whose report is known, its image downloaded once into the cache."""
        from afloc_training.dicomweb import dicomweb_pairs

        def report_of(series: str, study: str) -> Tuple[Optional[str], str]:
            text, source = self.report_with_source(series, fresh=True)
            return text, source.get("reason", "")

        def fetch(series: str, study: str) -> Path:
            from lib.image_source import resolve_image_file

            return resolve_image_file(self.get_image_uri(series))

        return dicomweb_pairs(self.image_series(), report_of, fetch, self._client.base_url)

    def _index_series(self, image_id: str) -> None:
        # The series folder itself is the image: an empty extension makes the index point at it.
        info = {"ts": int(time.time()), "name": image_id, **self._dicom_info(image_id)}
        with FileLock(self._lock_file):
            if image_id not in self._datastore.objects:
                self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=""))
                self._update_datastore_file(lock=False)
        logger.info("indexed DICOMweb series %s (cached in %s)", image_id, self._datastore.image_path())


def adopt(datastore: DICOMWebDatastore) -> AFLocDICOMWebDatastore:
    """Turn the datastore MONAI Label built (client, credentials, cache path from its settings)
    into an :class:`AFLocDICOMWebDatastore`.

    Re-classing the instance keeps MONAI Label's own construction, which depends on many
    settings, instead of repeating it here; the subclass adds no state of its own that
    ``__init__`` would have to set (the mixin creates its helpers on first use).
    """
    if not isinstance(datastore, DICOMWebDatastore):
        raise TypeError(f"expected a DICOMWebDatastore, got {type(datastore).__name__}")
    datastore.__class__ = AFLocDICOMWebDatastore
    return datastore  # type: ignore[return-value]
