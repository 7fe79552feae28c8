"""Infer task ``afloc``: text prompts in, one named label (and float heatmaps) out.

Request fields (multipart/url-encoded ``params`` JSON; defaults in :data:`DEFAULT_CONFIG`):

- ``prompt``: finding(s) to localize; ``;`` separates several (at most 8). Prompt ``i`` becomes
  segment ``i + 1`` of the label; where masks overlap the prompt with the higher heat wins.
- ``threshold``: mask threshold on the ``[-1, 1]`` heatmap (default 0.3; empty: the model's).
- ``result_extension``: ``.nrrd`` (default; carries Slicer segment names, so it is also a valid
  ``.seg.nrrd``), ``.seg.nrrd``, ``.nii.gz``, ``.nii`` or ``.dcm`` (DICOM-SEG, DICOM sources only).
- ``result_dtype`` (``uint8``), ``result_compress`` (true): as MONAI Label's own tasks take them.
- ``save_heatmap`` (true): store each prompt's float32 heatmap in the datastore under
  ``afloc_heatmap`` (prompt 1), ``afloc_heatmap_2``, ... and return its download URL.
- ``save_draft`` (false): also store the label under ``afloc_draft`` (or ``label_tag``; never
  ``final``) as a Slicer-style NRRD.

The reply's params JSON names, per prompt, its label value, score, zero-shot probability, boxes
(pixel coordinates, ``x1``/``y1`` exclusive) and heatmap URL, plus ``label_names`` (what the stock
Slicer module names segments by), the threshold used and the model version.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import numpy as np
from afloc_models.inference.heatmap import DEFAULT_THRESHOLD
from afloc_training.draft import combine_masks  # one overlap rule for prompts and report drafts
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.datastore import DeferredLabelWrites
from lib.errors import BadRequestError
from lib.geometry import Geometry, geometry_for, is_dicom_file
from lib.ids import check_tag
from lib.image_source import resolve_image_file
from lib.label_io import SEGMENT_COLORS, Segment, write_heatmap, write_label
from lib.params import (
    LABEL_EXTENSIONS,
    first_choice,
    parse_bool,
    parse_dtype,
    parse_extension,
    parse_prompts,
    parse_threshold,
)
from lib.served_model import ServedModel, describe_trained_on

__all__ = ["DEFAULT_CONFIG", "DRAFT_TAG", "HEATMAP_TAG", "AFLocLocalizeTask", "combine_masks", "heatmap_tag"]

HEATMAP_TAG = "afloc_heatmap"
DRAFT_TAG = "afloc_draft"
FINAL_TAG = "final"

#: Options shown in the clients' options tables (a string is a text box, a list a choice).
DEFAULT_CONFIG: Dict[str, Any] = {
    "prompt": "",
    "threshold": DEFAULT_THRESHOLD,
    "result_extension": list(LABEL_EXTENSIONS),
    "result_dtype": "uint8",
    "save_heatmap": True,
    "save_draft": False,
}


def heatmap_tag(index: int) -> str:
    """Datastore tag of prompt ``index``'s heatmap: ``afloc_heatmap``, ``afloc_heatmap_2``, ..."""
    return HEATMAP_TAG if index == 0 else f"{HEATMAP_TAG}_{index + 1}"


class AFLocLocalizeTask(InferTask):
    """Text-prompted localization with the served AFLoc checkpoint (see the module docstring)."""

    def __init__(self, served: ServedModel, datastore: Callable[[], Datastore], description: str = ""):
        super().__init__(
            type=InferType.SEGMENTATION,
            labels=[],
            dimension=2,
            description=description
            or "AFLoc: localize findings named in free text (e.g. 'left pleural effusion') on a chest X-ray",
            config=dict(DEFAULT_CONFIG),
        )
        self.served = served
        self._datastore = datastore

    def is_valid(self) -> bool:
        # Listed even before a checkpoint exists: requests then get a 503 that says how to get one.
        return True

    def info(self) -> Dict[str, Any]:
        info = super().info()
        ref = self.served.store.served()
        info["model_version"] = ref.version if ref else None
        info["trained_on"] = describe_trained_on(ref)
        return info

    def get_path(self, validate: bool = True) -> Optional[str]:
        ref = self.served.store.served()
        return str(ref.path / "model.safetensors") if ref else None

    def __call__(self, request: Dict[str, Any]) -> Tuple[Union[str, None], Dict[str, Any]]:
        started = time.perf_counter()
        data = {**{k: first_choice(v) for k, v in DEFAULT_CONFIG.items()}, **request}
        prompts = parse_prompts(data.get("prompt"))
        threshold = parse_threshold(data.get("threshold"))
        extension = parse_extension(data.get("result_extension"))
        dtype = parse_dtype(data.get("result_dtype"))
        compress = parse_bool(data.get("result_compress"), "result_compress", True)
        save_heatmap = parse_bool(data.get("save_heatmap"), "save_heatmap", True)
        save_draft = parse_bool(data.get("save_draft"), "save_draft", False)
        image_id = request.get("image_id")
        datastore = self._local_datastore()
        draft_tag = DRAFT_TAG
        if save_draft:
            draft_tag = check_tag(request.get("label_tag") or DRAFT_TAG)
            if draft_tag == FINAL_TAG:
                raise BadRequestError("inference results are drafts: they are never saved under the 'final' tag")
            if image_id is None or datastore is None:
                raise BadRequestError("save_draft needs an image stored in the (local) datastore, not an uploaded file")
        image_path = resolve_image_file(request.get("image"))

        predictor, ref = self.served.get()
        localization = predictor.localize(image_path, prompts, threshold=threshold)
        inferred = time.perf_counter()

        results = localization.results
        geometry = geometry_for(image_path, localization.image_shape, localization.spacing)
        label = combine_masks([r.heatmap for r in results], [r.mask for r in results])
        segments = [
            Segment(name=r.prompt, value=i + 1, color=SEGMENT_COLORS[i % len(SEGMENT_COLORS)])
            for i, r in enumerate(results)
        ]
        # The reply's file lives outside workdir: MONAI Label sends it, then deletes it.
        handle, name = tempfile.mkstemp(prefix="afloc-", suffix=extension)
        os.close(handle)
        result_file = Path(name)
        workdir = Path(tempfile.mkdtemp(prefix="afloc-infer-"))
        try:
            write_label(
                result_file,
                label,
                segments,
                geometry,
                dtype=dtype,
                compress=compress,
                source_dicom=image_path if is_dicom_file(image_path) else None,
                model_version=localization.model_version,
            )
            stored = save_heatmap and image_id is not None and datastore is not None
            heatmaps = (
                self._store_heatmaps(datastore, image_id, results, geometry, ref.version)
                if stored
                else [None] * len(results)
            )
            draft = (
                self._store_draft(datastore, draft_tag, image_id, label, segments, geometry, workdir, ref.version, results)
                if save_draft
                else None
            )
        except BaseException:
            result_file.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        finished = time.perf_counter()

        counts = np.bincount(label.ravel(), minlength=len(results) + 1)
        entries = []
        for i, (result, heatmap) in enumerate(zip(results, heatmaps)):
            entry = result.to_dict()
            entry.update({"label_value": i + 1, "label_pixels": int(counts[i + 1]), "heatmap": heatmap})
            entries.append(entry)
        params: Dict[str, Any] = {
            "model": "afloc",
            "model_version": localization.model_version,
            "checkpoint": ref.path.name,
            "prompts": entries,
            "label_names": {r.prompt: i + 1 for i, r in enumerate(results)},
            "threshold": results[0].threshold,
            "heatmap": heatmaps[0],
            "draft": draft,
            "reading": reading_of(predictor),
            "result_extension": extension,
            "result_dtype": dtype if extension != ".dcm" else "uint8",
            "image": {
                "id": image_id,
                "shape": list(geometry.shape),
                "spacing": list(geometry.spacing),
                "spacing_known": geometry.spacing_known,
            },
            "latencies": {
                "infer": round(inferred - started, 4),
                "write": round(finished - inferred, 4),
                "total": round(finished - started, 4),
            },
        }
        return str(result_file), params

    # ----------------------------------------------------------------- datastore side effects
    def _local_datastore(self) -> Optional[DeferredLabelWrites]:
        # Heatmaps and drafts are files in labels/<tag>/ (of the DICOMweb cache, too).
        datastore = self._datastore()
        return datastore if isinstance(datastore, DeferredLabelWrites) else None

    def _store_heatmaps(
        self,
        datastore: DeferredLabelWrites,
        image_id: str,
        results: Sequence[Any],
        geometry: Geometry,
        version: str,
    ) -> list[Dict[str, Any]]:
        """Queue each prompt's heatmap for the datastore (written after the reply; readers wait)."""
        stored = []
        for i, result in enumerate(results):
            tag = heatmap_tag(i)
            info = {"model": "afloc", "prompt": result.prompt, "model_version": version, "range": [-1.0, 1.0]}
            write = partial(write_heatmap, heatmap=result.heatmap, geometry=geometry)
            label_id = datastore.save_label_soon(image_id, tag, ".nii", write, info)
            stored.append(
                {
                    "label": label_id,
                    "tag": tag,
                    "url": f"/datastore/label?label={quote(label_id, safe='')}&tag={tag}",
                    "prompt": result.prompt,
                    "dtype": "float32",
                    "range": [-1.0, 1.0],
                }
            )
        return stored

    def _store_draft(
        self,
        datastore: DeferredLabelWrites,
        tag: str,
        image_id: str,
        label: np.ndarray,
        segments: Sequence[Segment],
        geometry: Geometry,
        workdir: Path,
        version: str,
        results: Sequence[Any],
    ) -> Dict[str, Any]:
        # Drafts are always Slicer-style NRRD so any client can reopen and edit them.
        path = write_label(workdir / "draft.seg.nrrd", label, segments, geometry)
        info = {
            "model": "afloc",
            "model_version": version,
            "prompts": [r.prompt for r in results],
            "threshold": results[0].threshold,
            "label_names": {s.name: s.value for s in segments},
        }
        label_id = datastore.save_label(image_id, str(path), tag, info)
        return {"label": label_id, "tag": tag, "url": f"/datastore/label?label={quote(label_id, safe='')}&tag={tag}"}


def reading_of(predictor: Any) -> Dict[str, Any]:
    """How the served model's maps were read, for the reply: the feature level, the similarity,
    which maps are the mean of the image's and its mirror's (``mirror``: ``on`` every map,
    ``sides`` those of prompts that name a side, ``off`` none), whether the image guided them
    onto its edges (``refine``: ``guided`` or ``off``), the letterbox side the encoder saw and the
    definitions used (``recipe``: ``project`` or ``published``)."""
    settings = predictor.settings
    return {
        "level": settings.level,
        "similarity": settings.similarity,
        "mirror": settings.mirror,
        "refine": settings.refine,
        "input_size": predictor.input_size,
        "recipe": settings.recipe,
    }
