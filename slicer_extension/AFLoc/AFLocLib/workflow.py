"""The steps behind the module's buttons, as plain functions the widget runs in the background.

- :func:`localize` (Run): make sure the server has the image (upload only with consent),
  infer the prompts, download each prompt's float heatmap and build the draft ``.seg.nrrd``
  with one named, coded segment per prompt on the image's own grid.
- :func:`redraft` (threshold slider): the same draft at another threshold, from the heatmaps
  already here; no server call.
- :func:`save_review` (Accept / Keep draft): store the reviewed segmentation as ``final`` or
  under ``afloc_draft`` with a description of its segments.
- :func:`train` (Training): start training and follow its status until it ends.

Masks in the draft are the full per-prompt masks ``heatmap >= threshold``: where two findings
overlap both keep the pixel (Slicer stores them in separate layers). The server's own label file
gives each overlapping pixel to one prompt only; without heatmaps (a server that stores none) the
draft falls back to that label.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .cancel import CancelToken
from .client import AFLocClient, InferResult, TrainingStatus, image_id_for
from .errors import ConsentRequiredError, ResultFormatError
from .prompts import split_prompts
from .segmentation import (
    STATUS_ACCEPTED,
    Segmentation,
    as_volume,
    build_draft,
    masks_from_labels,
    read_segmentation,
    write_segmentation,
)
from .tasks import TaskContext
from .threshold import DEFAULT_THRESHOLD, check_threshold, threshold_heatmap
from .volume import read_volume

#: Name of the draft file written next to the heatmaps.
DRAFT_FILENAME = "afloc_draft.seg.nrrd"


@dataclass(frozen=True)
class PreparedImage:
    """The image to localize on, as the Slicer side exported it.

    Attributes:
        path: the file sent to the server if it does not have the image yet (the module exports
            a grayscale volume as NIfTI, a colour (vector) volume as an RGB PNG, or passes on the
            original DICOM file of a radiograph loaded from DICOM).
        image_id: datastore id (see :func:`volume_image_id`).
        ijk_to_lps: ``[4, 4]`` geometry of the volume in Slicer.
        shape: ``(I, J, K)`` voxel grid of the volume (``K = 1`` for a radiograph).
    """

    path: Path
    image_id: str
    ijk_to_lps: np.ndarray
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class Localization:
    """A finished run: what came back and the draft built from it.

    Attributes:
        heatmaps: one float32 ``[I, J, K]`` map in ``[-1, 1]`` per prompt (empty if the server
            stored none).
        threshold: the threshold of the current draft.
        draft: the draft segmentation on the image grid; ``draft_path`` its ``.seg.nrrd``.
        uploaded: whether the image was sent to the server by this run.
    """

    image: PreparedImage
    result: InferResult
    heatmaps: list[np.ndarray]
    threshold: float
    draft: Segmentation
    draft_path: Path
    uploaded: bool

    @property
    def prompts(self) -> list[str]:
        return self.result.prompts

    @property
    def segment_names(self) -> list[str]:
        return self.draft.names


def volume_image_id(name: str, voxels: np.ndarray, ijk_to_lps: np.ndarray) -> str:
    """Datastore id of a volume: its name plus a digest of its voxels and geometry.

    The same image opened again maps to the same id (no second upload); a different image
    that happens to share the name does not.
    """
    digest = hashlib.sha256()
    array = np.ascontiguousarray(voxels)
    digest.update(str((array.shape, array.dtype.str)).encode("ascii"))
    digest.update(array.tobytes())
    digest.update(np.asarray(ijk_to_lps, dtype=np.float64).round(6).tobytes())
    return image_id_for(name, digest.digest())


def conflicting_names(prompt_text: str, existing: Sequence[str]) -> list[str]:
    """Existing segment names a run of ``prompt_text`` would reuse (compared case-insensitively)."""
    taken = {name.lower(): name for name in existing}
    return [taken[p.lower()] for p in split_prompts(prompt_text) if p.lower() in taken]


def localize(
    client: AFLocClient,
    image: PreparedImage,
    prompt_text: str,
    consent: bool,
    work_dir: str | Path,
    threshold: float | None = None,
    existing_names: Sequence[str] = (),
    context: TaskContext | None = None,
) -> Localization:
    """Run the prompts on the image and build the draft (see the module docstring).

    Raises:
        ConsentRequiredError: ``consent`` is False; nothing at all was sent (not even the image id).
        PromptInputError, ServerError, ServerUnreachableError, OperationCancelledError, ...
    """
    context = context or TaskContext(CancelToken())
    prompts = split_prompts(prompt_text)
    if not consent:
        # Checked before any request: even "does the server have <name>-<digest>?" names the image.
        raise ConsentRequiredError(
            f"sending image '{image.image_id}' to the server {client.url} needs your consent "
            "(its name and, if the server lacks it, its pixels leave this computer)"
        )
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    # One folder per run: files of an earlier run (which a Localization still names) stay intact.
    work_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work_dir))

    context.report("Checking that the server has the image...", 0.05)
    uploaded = not client.has_image(image.image_id, cancel=context.cancel)
    if uploaded:
        context.report("Uploading the image...", 0.1)
        image_id = client.upload_image(image.path, image.image_id, consent=True, cancel=context.cancel)
        if image_id != image.image_id:
            image = replace(image, image_id=image_id)
    image_id = image.image_id

    context.report(f"Localizing {len(prompts)} finding(s) on the server...", 0.15)
    result = client.infer(image_id, prompts, threshold=threshold, dest_dir=work_dir, cancel=context.cancel)

    heatmaps: list[np.ndarray] = []
    if result.has_heatmaps:
        context.report("Downloading heatmaps...", 0.75)
        for path in client.fetch_heatmaps(result, work_dir, cancel=context.cancel):
            heatmaps.append(_on_grid(read_volume(path).data.astype(np.float32), image.shape, path.name))

    context.report("Building the draft segmentation...", 0.9)
    used = result.threshold if result.threshold is not None else threshold
    if heatmaps:
        used = check_threshold(used if used is not None else DEFAULT_THRESHOLD)
        masks = [threshold_heatmap(h, used) for h in heatmaps]
    else:
        masks = _masks_from_label_file(result, image.shape)
    draft = build_draft(prompts, masks, image.ijk_to_lps, existing_names=existing_names, tags=_score_tags(result))
    draft_path = write_segmentation(work_dir / DRAFT_FILENAME, draft)
    context.report("Done.", 1.0)
    return Localization(
        image=image,
        result=result,
        heatmaps=heatmaps,
        threshold=float(used) if used is not None else float("nan"),
        draft=draft,
        draft_path=draft_path,
        uploaded=uploaded,
    )


def redraft(localization: Localization, threshold: float, existing_names: Sequence[str] = ()) -> Localization:
    """The draft at another ``threshold``, computed here from the heatmaps (no server call)."""
    if not localization.heatmaps:
        raise ResultFormatError("this result has no heatmaps, so the threshold cannot be changed locally")
    threshold = check_threshold(threshold)
    masks = [threshold_heatmap(h, threshold) for h in localization.heatmaps]
    draft = build_draft(
        localization.prompts,
        masks,
        localization.image.ijk_to_lps,
        existing_names=existing_names,
        tags=_score_tags(localization.result),
    )
    # A file per threshold: an earlier Localization keeps pointing at its own draft.
    path = localization.draft_path.with_name(f"afloc_draft_t{threshold:+.3f}.seg.nrrd")
    draft_path = write_segmentation(path, draft)
    return replace(localization, threshold=threshold, draft=draft, draft_path=draft_path)


def segment_summary(segmentation: Segmentation) -> list[dict[str, Any]]:
    """What a saved label holds, for its info on the server: name, terminology, value, layer, pixels."""
    layers = segmentation.voxels if segmentation.voxels.ndim == 4 else segmentation.voxels[np.newaxis]
    return [
        {
            "name": s.name,
            "terminology": s.terminology,
            "label_value": s.label_value,
            "layer": s.layer,
            "pixels": int(np.count_nonzero(layers[s.layer] == s.label_value)),
        }
        for s in segmentation.segments
    ]


def save_review(
    client: AFLocClient,
    image_id: str,
    segmentation_path: str | Path,
    final: bool,
    localization: Localization | None = None,
    context: TaskContext | None = None,
) -> dict[str, Any]:
    """Store the reviewed ``.seg.nrrd`` as the image's ``final`` label, or as a draft.

    The label's info on the server lists its segments and, when it came from a run, the prompts
    and threshold, so that a reviewer can tell how it was made.
    """
    context = context or TaskContext(CancelToken())
    segmentation = read_segmentation(segmentation_path)
    if final and not segmentation.segments:
        raise ResultFormatError("the segmentation has no segments; there is nothing to accept")
    info: dict[str, Any] = {
        "source": "3D Slicer AFLoc module",
        "status": STATUS_ACCEPTED if final else "draft",
        "segments": segment_summary(segmentation),
    }
    if localization is not None:
        info.update({"prompts": localization.prompts, "threshold": localization.threshold, "model": "afloc"})
    context.report("Saving the segmentation on the server...", 0.3)
    save = client.save_final if final else client.save_draft
    reply = save(image_id, segmentation_path, info, cancel=context.cancel)
    context.report("Saved.", 1.0)
    return reply


def train(
    client: AFLocClient,
    params: dict[str, Any] | None = None,
    context: TaskContext | None = None,
    poll_seconds: float = 2.0,
    on_status: Callable[[TrainingStatus], None] | None = None,
) -> TrainingStatus:
    """Start training and wait for it to end, reporting its status; returns the final status.

    Cancelling stops following the task, not the training itself (use ``client.stop_training``).
    """
    context = context or TaskContext(CancelToken())
    context.report("Starting training on the server...", None)
    started = client.start_training(params, cancel=context.cancel)
    started_at = time.monotonic()

    def report(status: TrainingStatus) -> None:
        if on_status:
            on_status(status)
        last = status.details[-1] if status.details else ""
        elapsed = time.monotonic() - started_at
        context.report(f"Training {status.status.lower()} ({elapsed:.0f} s). {last}".strip(), None)

    report(started)
    return client.wait_for_training(poll_seconds=poll_seconds, cancel=context.cancel, on_status=report)


def format_findings(localization: Localization) -> str:
    """One line per finding for the module panel: name, probability, score and draft size."""
    lines = []
    layers = localization.draft.voxels if localization.draft.voxels.ndim == 4 else localization.draft.voxels[np.newaxis]
    for finding, segment in zip(localization.result.findings, localization.draft.segments):
        parts = [segment.name]
        if finding.probability is not None:
            parts.append(f"p={finding.probability:.2f}")
        if finding.score is not None:
            parts.append(f"score={finding.score:.2f}")
        pixels = int(np.count_nonzero(layers[segment.layer] == segment.label_value))
        parts.append(f"{pixels} px" if pixels else "empty at this threshold")
        lines.append(" | ".join(parts))
    return "\n".join(lines)


# ---------------------------------------------------------------------- helpers
def _on_grid(array: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    """``array`` as ``[I, J, K]`` on the volume grid, or ResultFormatError naming the mismatch."""
    if array.ndim > 3 and all(s == 1 for s in array.shape[3:]):
        array = array.reshape(array.shape[:3])  # NIfTI may carry trailing singleton axes
    volume = as_volume(array)
    if volume.shape != tuple(shape):
        raise ResultFormatError(
            f"{what} has grid {volume.shape}, the image in Slicer has {tuple(shape)}: "
            "the server's copy of the image differs from the one shown"
        )
    return volume


def _masks_from_label_file(result: InferResult, shape: tuple[int, int, int]) -> list[np.ndarray]:
    if result.label_path is None:
        raise ResultFormatError("the server returned neither a label file nor heatmaps")
    labels = _on_grid(read_volume(result.label_path).data, shape, result.label_path.name)
    return masks_from_labels(labels, [f.label_value for f in result.findings])


def _score_tags(result: InferResult) -> list[dict[str, str]]:
    tags = []
    for finding in result.findings:
        entry = {}
        if finding.probability is not None:
            entry["AFLoc.Probability"] = f"{finding.probability:.4f}"
        if finding.score is not None:
            entry["AFLoc.Score"] = f"{finding.score:.4f}"
        tags.append(entry)
    return tags
