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
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict

from filelock import FileLock
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel

from lib.datastore import DeferredLabelWrites
from lib.ids import check_image_id, check_tag

logger = logging.getLogger(__name__)

__all__ = ["AFLocDICOMWebDatastore", "adopt"]


class AFLocDICOMWebDatastore(DeferredLabelWrites, DICOMWebDatastore):
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
