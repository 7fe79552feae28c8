"""A voxel array with its geometry, read from NRRD or NIfTI without Slicer.

Arrays are indexed fastest axis first, ``[I, J, K]`` (optionally ``[L, I, J, K]`` with a
non-spatial list axis first), like NRRD files and ITK. Slicer's ``arrayFromVolume`` returns the
reverse, ``[K, J, I]``: :func:`to_slicer_order` and :func:`from_slicer_order` convert.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ResultFormatError

#: RAS <-> LPS: both flip the first two axes (the matrix is its own inverse).
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A voxel array and where it lies.

    Attributes:
        data: ``[I, J, K]`` (or ``[L, I, J, K]``) voxels.
        ijk_to_lps: ``[4, 4]`` voxel index -> LPS millimetres of the spatial axes.
        fields: format header fields (NRRD ``kinds``, ``encoding``, ...), as written.
        key_values: NRRD ``key:=value`` pairs (Slicer's ``Segment0_Name`` etc.).
    """

    data: np.ndarray
    ijk_to_lps: np.ndarray = field(default_factory=lambda: np.eye(4))
    fields: dict[str, str] = field(default_factory=dict)
    key_values: dict[str, str] = field(default_factory=dict)


def read_volume(path: str | Path) -> Volume:
    """Read ``.nrrd`` / ``.seg.nrrd`` / ``.nii`` / ``.nii.gz`` by file name."""
    from .nifti_io import read_nifti
    from .nrrd_io import read_nrrd

    name = Path(path).name.lower()
    if name.endswith(".nrrd"):
        return read_nrrd(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    raise ResultFormatError(f"'{path}' is neither NRRD nor NIfTI (by its file name)")


def to_slicer_order(array: np.ndarray) -> np.ndarray:
    """``[I, J, K]`` -> ``[K, J, I]`` (what ``slicer.util.updateVolumeFromArray`` takes)."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def from_slicer_order(array: np.ndarray) -> np.ndarray:
    """``[K, J, I]`` (``slicer.util.arrayFromVolume``) -> ``[I, J, K]``."""
    return np.transpose(array, (2, 1, 0))


def ras_to_lps(ijk_to_ras: np.ndarray) -> np.ndarray:
    """Slicer's IJK-to-RAS matrix -> the IJK-to-LPS matrix files use."""
    return RAS_LPS @ np.asarray(ijk_to_ras, dtype=float)


def lps_to_ras(ijk_to_lps: np.ndarray) -> np.ndarray:
    return RAS_LPS @ np.asarray(ijk_to_lps, dtype=float)
