"""``POST /afloc/segments``: the AFLoc panel's **Accept** and **Keep draft** buttons.

The OHIF panel (``lib/ohif/afloc_panel.js``) thresholds the heatmaps in the browser, so the
segments the user accepts are the ones on screen, at the threshold on the slider, with only
the segments ticked. It sends them here as one label and this module stores them:

- ``kind=final``: a DICOM-SEG (highdicom, on the source radiograph's grid) is stored in the PACS
  through the DICOMweb datastore's client (STOW-RS). Segment labels are the prompts; the series
  description names the model version (``AFLoc <version>``).
- ``kind=draft``: the same DICOM-SEG with the description ``AFLoc draft <version>`` (so the
  draft shows in the viewer's study list too), and the label as a Slicer-style NRRD under the
  datastore tag ``afloc_draft`` (what ``GET /datastore/label?tag=afloc_draft`` returns).

Request (multipart): query ``image`` (the series id, as for ``/infer``) and ``kind``; form
field ``label``: the label as raw bytes, ``H x W`` unsigned 8-bit values in row order (0
background, segment ``n`` has value ``n``); form field ``params``: a JSON object
``{"segments": [{"value": 1, "name": "right pleural effusion", "color": [242, 77, 64]}],
"model_version": "...", "threshold": 0.3}``.

Reply: ``{"kind", "series_instance_uid", "sop_instance_uid", "series_description",
"segments": [names], "label_pixels": {name: count}, "draft": {...} | null}``.

Every mistake is a 400 naming it (wrong size, a value without a segment, an empty label, more
segments than 8, a name that is empty or too long, a datastore that is not a PACS); an unknown
image is a 404.
"""

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import quote

import numpy as np
from afloc_models.imaging import MAX_IMAGE_PIXELS

from lib.errors import BadRequestError, NotFoundError
from lib.geometry import Geometry, geometry_for, is_dicom_file
from lib.ids import check_image_id
from lib.image_source import resolve_image_file
from lib.label_io import SEGMENT_COLORS, Segment, write_label

logger = logging.getLogger(__name__)

__all__ = [
    "DRAFT_TAG",
    "KINDS",
    "MAX_SEGMENTS",
    "ROUTE",
    "SaveRequest",
    "decode_label",
    "install",
    "parse_save_params",
    "save_segments",
    "series_description",
    "write_segmentation",
]

ROUTE = "/afloc/segments"
KINDS = ("final", "draft")
DRAFT_TAG = "afloc_draft"
MAX_SEGMENTS = 8
#: SegmentLabel and SeriesDescription are LO elements (64 characters).
_LO_MAX = 64
_INSTALLED_FLAG = "_afloc_ohif_segments"
_VERSION_CHARS = re.compile(r"[^A-Za-z0-9._:+-]")


@dataclass(frozen=True)
class SaveRequest:
    """What the panel asks to store (see the module docstring)."""

    segments: tuple[Segment, ...]
    model_version: str
    threshold: Optional[float]


def parse_save_params(raw: Any) -> SaveRequest:
    """Parse and check the ``params`` form field (a JSON object)."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8", errors="replace")
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequestError("'params' is missing: send a JSON object with 'segments' and 'model_version'")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"'params' is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(data, dict):
        raise BadRequestError("'params' must be a JSON object")
    entries = data.get("segments")
    if not isinstance(entries, list) or not entries:
        raise BadRequestError("'segments' must be a non-empty list of {value, name, color}")
    if len(entries) > MAX_SEGMENTS:
        raise BadRequestError(f"at most {MAX_SEGMENTS} segments can be stored at once, got {len(entries)}")
    segments: List[Segment] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadRequestError(f"segments[{index}] must be an object with 'value' and 'name'")
        value = entry.get("value")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
            raise BadRequestError(f"segments[{index}].value must be an integer 1..255, got {value!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequestError(f"segments[{index}].name must be the prompt text, got {name!r}")
        name = " ".join(name.split())
        if len(name) > _LO_MAX:
            raise BadRequestError(f"segments[{index}].name is {len(name)} characters; DICOM allows {_LO_MAX}")
        segments.append(Segment(name=name, value=value, color=_color(entry.get("color"), index)))
    values = [s.value for s in segments]
    if len(set(values)) != len(values):
        raise BadRequestError(f"segment values must be distinct, got {values}")
    version = data.get("model_version")
    if not isinstance(version, str) or not version.strip():
        raise BadRequestError("'model_version' (from the infer reply) is required: it goes into the series description")
    version = _VERSION_CHARS.sub("_", version.strip())[:40]
    threshold = data.get("threshold")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise BadRequestError(f"'threshold' must be a number, got {threshold!r}")
    return SaveRequest(segments=tuple(segments), model_version=version, threshold=threshold)


def _color(value: Any, index: int) -> tuple[float, float, float]:
    """An RGB colour in ``[0, 1]`` from ``[r, g, b]`` in 0..255 (the panel's), else the default."""
    if isinstance(value, list) and len(value) == 3 and all(isinstance(c, (int, float)) for c in value):
        return tuple(min(max(float(c), 0.0), 255.0) / 255.0 for c in value)  # type: ignore[return-value]
    return SEGMENT_COLORS[index % len(SEGMENT_COLORS)]


def decode_label(data: bytes, shape: tuple[int, int], segments: Sequence[Segment]) -> np.ndarray:
    """The raw label bytes as ``uint8 [H, W]``, checked against the image grid and the segments."""
    height, width = shape
    if len(data) != height * width:
        raise BadRequestError(
            f"the label has {len(data)} bytes but the image is {width} x {height} pixels "
            f"({height * width} bytes, one per pixel, row by row)"
        )
    label = np.frombuffer(data, dtype=np.uint8).reshape(height, width)
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
    known = {s.value for s in segments}
    unknown = [int(v) for v in present if v and v not in known]
    if unknown:
        raise BadRequestError(f"label values {unknown} have no segment in 'segments'")
    if not np.any(label):
        raise BadRequestError("the label is empty: no pixel belongs to a segment (lower the threshold?)")
    return label


def series_description(kind: str, model_version: str) -> str:
    """``AFLoc <version>`` for accepted segments, ``AFLoc draft <version>`` for drafts (64 chars at most)."""
    prefix = "AFLoc" if kind == "final" else "AFLoc draft"
    return f"{prefix} {model_version}"[:_LO_MAX]


def write_segmentation(
    path: Path, label: np.ndarray, request: SaveRequest, geometry: Geometry, source: Path, kind: str
) -> Path:
    """Write the DICOM-SEG of ``label`` over the ``source`` DICOM to ``path``."""
    # Segments absent from the label (an unticked or empty one) are not described; the others
    # are renumbered 1..N in their order (DICOM-SEG segment numbers have no gaps).
    present = set(np.unique(label).tolist())
    kept = sorted((s for s in request.segments if s.value in present), key=lambda s: s.value)
    lut = np.zeros(256, dtype=np.uint8)
    segments = []
    for number, segment in enumerate(kept, start=1):
        lut[segment.value] = number
        segments.append(Segment(name=segment.name, value=number, color=segment.color))
    return write_label(
        path,
        lut[label],
        segments,
        geometry,
        source_dicom=source,
        model_version=request.model_version,
        series_description=series_description(kind, request.model_version),
    )


def save_segments(datastore: Any, image_id: str, kind: str, label_bytes: bytes, params: Any) -> Dict[str, Any]:
    """Store the panel's segments (see the module docstring); the reply's JSON."""
    import pydicom
    from monailabel.datastore.dicom import DICOMWebDatastore

    from afloc_models.imaging import read_image

    check_image_id(image_id)
    if kind not in KINDS:
        raise BadRequestError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    request = parse_save_params(params)
    if not isinstance(datastore, DICOMWebDatastore):
        raise BadRequestError(
            "accepting segments into the PACS needs the server started with a DICOMweb datastore "
            "(--studies http://.../dicom-web); with a local datastore use PUT /datastore/label"
        )
    try:
        image_uri = datastore.get_image_uri(image_id)
    except Exception as exc:  # the PACS does not know the series (or cannot be reached)
        raise NotFoundError(f"image '{image_id}' cannot be fetched from the PACS ({exc})") from None
    source = resolve_image_file(image_uri)
    if not is_dicom_file(source):
        raise BadRequestError(f"image '{image_id}' is not a DICOM image: a DICOM-SEG needs one")
    image = read_image(source)
    geometry = geometry_for(source, image.shape, image.spacing)
    label = decode_label(label_bytes, geometry.shape, request.segments)

    workdir = Path(tempfile.mkdtemp(prefix="afloc-segments-"))
    try:
        seg_path = write_segmentation(workdir / "seg.dcm", label, request, geometry, source, kind)
        seg = pydicom.dcmread(str(seg_path))
        datastore._client.store_instances(datasets=[seg])
        logger.info("stored %s DICOM-SEG %s for %s", kind, seg.SeriesInstanceUID, image_id)
        draft = None
        if kind == "draft":
            nrrd = write_label(workdir / "draft.seg.nrrd", label, request.segments, geometry)
            info = {
                "model": "afloc",
                "model_version": request.model_version,
                "prompts": [s.name for s in request.segments],
                "threshold": request.threshold,
                "label_names": {s.name: s.value for s in request.segments},
                "SeriesInstanceUID": str(seg.SeriesInstanceUID),
            }
            label_id = datastore.save_label(image_id, str(nrrd), DRAFT_TAG, info)
            draft = {
                "label": label_id,
                "tag": DRAFT_TAG,
                "url": f"/datastore/label?label={quote(label_id, safe='')}&tag={DRAFT_TAG}",
            }
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    counts = np.bincount(label.ravel(), minlength=256)
    return {
        "kind": kind,
        "image": image_id,
        "series_instance_uid": str(seg.SeriesInstanceUID),
        "sop_instance_uid": str(seg.SOPInstanceUID),
        "series_description": str(seg.SeriesDescription),
        "segments": [s.name for s in request.segments if counts[s.value]],
        "label_pixels": {s.name: int(counts[s.value]) for s in request.segments},
        "model_version": request.model_version,
        "draft": draft,
    }


def install(fastapi_app: Any) -> None:
    """Register ``POST /afloc/segments`` on the server's FastAPI app (idempotent)."""
    if getattr(fastapi_app.state, _INSTALLED_FLAG, False):
        return
    from fastapi import Depends, File, Form, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance

    async def store_segments(
        image: str,
        kind: str = "final",
        label: UploadFile = File(...),
        params: str = Form(""),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),
    ) -> Dict[str, Any]:
        # One byte per pixel: never more than the largest image the reader accepts.
        data = await label.read(MAX_IMAGE_PIXELS + 1)
        if len(data) > MAX_IMAGE_PIXELS:
            raise BadRequestError(f"the label is larger than the largest image ({MAX_IMAGE_PIXELS} pixels)")
        datastore = app_instance().datastore()
        return await run_in_threadpool(save_segments, datastore, image, kind, data, params)

    fastapi_app.add_api_route(
        ROUTE,
        store_segments,
        methods=["POST"],
        summary="Store segments accepted in the AFLoc OHIF panel as DICOM-SEG in the PACS",
        tags=["AFLoc"],
    )
    setattr(fastapi_app.state, _INSTALLED_FLAG, True)
