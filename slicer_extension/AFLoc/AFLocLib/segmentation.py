"""Draft segmentations: named, coded segments in Slicer's ``.seg.nrrd`` layout, and back.

One segment per prompt, named after the prompt, with its SNOMED CT terminology entry, a colour
and the status ``inprogress`` (a draft until the user accepts it). Masks may overlap (an
effusion inside an atelectasis region): a segment goes to the first layer where it overlaps
nothing, else to a new layer, the way Slicer stores overlapping segments (``[L, I, J, K]`` voxels
with a ``list`` axis first).

Arrays are ``[I, J, K]`` in voxel index order (as NRRD stores them and Slicer's IJK). A 2D
radiograph is ``[I, J, 1]``: ``I`` runs along image columns, ``J`` along rows.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ResultFormatError
from .nrrd_io import read_nrrd, write_nrrd
from .terminology import segment_color, terminology_entry

#: Slicer's segment status for an unreviewed draft and for an accepted segment.
STATUS_DRAFT = "inprogress"
STATUS_ACCEPTED = "completed"

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(.+)$")


@dataclass
class Segment:
    """One segment's metadata; ``label_value`` and ``layer`` locate it in the voxels."""

    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    terminology: str = ""
    status: str = STATUS_DRAFT
    id: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Segmentation:
    """Voxels ``[I, J, K]`` (one layer) or ``[L, I, J, K]`` plus segment metadata and geometry."""

    voxels: np.ndarray
    ijk_to_lps: np.ndarray
    segments: list[Segment] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(I, J, K)``."""
        return tuple(self.voxels.shape[-3:])  # type: ignore[return-value]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.segments]

    def _layers(self) -> np.ndarray:
        return self.voxels if self.voxels.ndim == 4 else self.voxels[np.newaxis]

    def segment(self, name: str) -> Segment:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise KeyError(f"no segment named '{name}' (segments: {', '.join(self.names) or 'none'})")

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask ``[I, J, K]`` of the segment called ``name``."""
        segment = self.segment(name)
        return self._layers()[segment.layer] == segment.label_value

    def add(self, mask: np.ndarray, segment: Segment) -> Segment:
        """Store ``mask`` ``[I, J, K]`` for ``segment`` in the first layer where it overlaps nothing."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape:
            raise ValueError(f"mask of shape {mask.shape} does not fit the segmentation grid {self.shape}")
        if any(s.name == segment.name for s in self.segments):
            raise ValueError(f"a segment named '{segment.name}' already exists")
        layers = self._layers()
        for layer in range(layers.shape[0]):
            used = [s.label_value for s in self.segments if s.layer == layer]
            value = max(used, default=0) + 1
            if value <= 255 and not np.any(layers[layer][mask]):
                break
        else:
            layers = np.concatenate([layers, np.zeros((1, *self.shape), dtype=layers.dtype)])
            layer, value = layers.shape[0] - 1, 1
        layers[layer][mask] = value
        self.voxels = layers if layers.shape[0] > 1 else layers[0]
        segment.layer, segment.label_value = layer, value
        if not segment.id:
            segment.id = _unique_id(segment.name, {s.id for s in self.segments})
        self.segments.append(segment)
        return segment


def as_volume(array: np.ndarray) -> np.ndarray:
    """``[I, J]`` -> ``[I, J, 1]``; 3D arrays pass through (a 2D image is one slice)."""
    array = np.asarray(array)
    if array.ndim == 2:
        return array[:, :, np.newaxis]
    if array.ndim == 3:
        return array
    raise ResultFormatError(f"expected a 2D or 3D array, got shape {array.shape}")


def unique_name(name: str, existing: Sequence[str]) -> str:
    """``name``, or ``name (2)``, ``name (3)``... so that user segments are never overwritten.

    Names are compared case-insensitively, as a reader would: "Cardiomegaly" takes "cardiomegaly".
    """
    taken = {n.lower() for n in existing}
    if name.lower() not in taken:
        return name
    n = 2
    while f"{name} ({n})".lower() in taken:
        n += 1
    return f"{name} ({n})"


def _unique_id(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "segment"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


def build_draft(
    prompts: Sequence[str],
    masks: Sequence[np.ndarray],
    ijk_to_lps: np.ndarray,
    existing_names: Sequence[str] = (),
    tags: Sequence[dict[str, str]] | None = None,
) -> Segmentation:
    """Draft segmentation with one named, coded segment per prompt.

    Args:
        prompts: the findings, in order; each names its segment (made unique against
            ``existing_names`` and each other).
        masks: one boolean mask per prompt, ``[I, J]`` or ``[I, J, K]``, all the same shape.
        ijk_to_lps: ``[4, 4]`` geometry of the image the masks belong to.
        tags: optional extra segment tags per prompt (e.g. the server's score).
    """
    if len(prompts) != len(masks):
        raise ValueError(f"{len(prompts)} prompts but {len(masks)} masks")
    if not masks:
        raise ValueError("a draft needs at least one prompt")
    volumes = [as_volume(m).astype(bool) for m in masks]
    shape = volumes[0].shape
    if any(v.shape != shape for v in volumes):
        raise ValueError(f"masks differ in shape: {[v.shape for v in volumes]}")
    draft = Segmentation(voxels=np.zeros(shape, dtype=np.uint8), ijk_to_lps=np.asarray(ijk_to_lps, dtype=float))
    taken = list(existing_names)
    for index, (prompt, volume) in enumerate(zip(prompts, volumes)):
        name = unique_name(prompt, taken)
        taken.append(name)
        segment = Segment(
            name=name,
            label_value=0,
            color=segment_color(prompt, index),
            terminology=terminology_entry(prompt),
            tags={"AFLoc.Prompt": _tag_value(prompt), **(tags[index] if tags else {})},
        )
        draft.add(volume, segment)
    return draft


def _tag_value(text: str) -> str:
    # Tags are stored as "key:value|key:value|": a '|' would end the value early.
    return text.replace("|", "/")


def write_segmentation(path: str | Path, segmentation: Segmentation) -> Path:
    """Write a ``.seg.nrrd`` that Slicer loads as a segmentation with these segment names."""
    voxels = segmentation.voxels
    key_values: dict[str, str] = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    for index, segment in enumerate(segmentation.segments):
        prefix = f"Segment{index}_"
        tags = [f"Segmentation.Status:{segment.status}"]
        if segment.terminology:
            tags.append(f"TerminologyEntry:{segment.terminology}")
        tags += [f"{k}:{_tag_value(str(v))}" for k, v in segment.tags.items()]
        key_values.update(
            {
                prefix + "ID": segment.id or _unique_id(segment.name, set()),
                prefix + "Name": segment.name,
                prefix + "NameAutoGenerated": "0",
                prefix + "Color": " ".join(repr(float(c)) for c in segment.color),
                prefix + "ColorAutoGenerated": "0",
                prefix + "LabelValue": str(segment.label_value),
                prefix + "Layer": str(segment.layer),
                prefix + "Extent": _extent(layers[segment.layer] == segment.label_value),
                prefix + "Tags": "|".join(tags) + "|",
            }
        )
    return write_nrrd(path, voxels, segmentation.ijk_to_lps, key_values, list_axis=voxels.ndim == 4)


def _extent(mask: np.ndarray) -> str:
    if not mask.any():
        return "0 -1 0 -1 0 -1"  # Slicer's notation for an empty segment
    bounds = []
    for axis_indices in np.nonzero(mask):
        bounds += [int(axis_indices.min()), int(axis_indices.max())]
    return " ".join(str(b) for b in bounds)


def read_segmentation(path: str | Path) -> Segmentation:
    """Read a ``.seg.nrrd`` (segments from its ``SegmentN_*`` fields) into a :class:`Segmentation`."""
    image = read_nrrd(path)
    if image.data.ndim not in (3, 4):
        raise ResultFormatError(f"'{path}' holds a {image.data.ndim}D array, not a 3D segmentation")
    by_index: dict[int, dict[str, str]] = {}
    for key, value in image.key_values.items():
        match = _SEGMENT_KEY.match(key)
        if match:
            by_index.setdefault(int(match.group(1)), {})[match.group(2)] = value
    segments = []
    for index in sorted(by_index):
        fields = by_index[index]
        tags = {}
        for item in fields.get("Tags", "").split("|"):
            key, sep, value = item.partition(":")
            if sep:
                tags[key] = value
        color = tuple(float(c) for c in fields.get("Color", "1 0 0").split())
        segments.append(
            Segment(
                # The AFLoc server percent-encodes non-ASCII names (NRRD headers are ASCII).
                name=urllib.parse.unquote(fields["Name"]) if "Name" in fields else f"Segment_{index + 1}",
                label_value=int(fields.get("LabelValue", index + 1)),
                layer=int(fields.get("Layer", 0)),
                color=color,  # type: ignore[arg-type]
                terminology=tags.pop("TerminologyEntry", ""),
                status=tags.pop("Segmentation.Status", ""),
                id=fields.get("ID", ""),
                tags=tags,
            )
        )
    return Segmentation(voxels=image.data, ijk_to_lps=image.ijk_to_lps, segments=segments)


def masks_from_labels(labels: np.ndarray, values: Sequence[int]) -> list[np.ndarray]:
    """Boolean masks ``labels == v`` for each value; ``labels`` is ``[I, J]`` or ``[I, J, K]``."""
    volume = as_volume(labels)
    return [volume == int(v) for v in values]
