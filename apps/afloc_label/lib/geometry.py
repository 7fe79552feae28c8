"""Where an image's pixels lie in patient space, so labels written for it overlay it exactly.

Conventions (those of ITK, hence of MONAI Label, 3D Slicer and OHIF):

- pixel index ``i`` runs along a row (the image column, x) and ``j`` down the rows (y); the
  arrays in this app are ``[H, W] = [j, i]``;
- physical space is LPS in mm; ``ijk_to_lps`` maps ``(i, j, k, 1)`` to the centre of that pixel;
- a 2D image is one slice (``k = 0``) with a slice thickness of 1 mm.

Sources: DICOM (Image Position/Orientation (Patient) when present, else origin 0 and identity, as
ITK reads a projection radiograph), NIfTI (its own affine, reused verbatim for NIfTI labels), and
everything else (PNG, JPEG: origin 0, identity, spacing 1 mm unless known).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["Geometry", "geometry_for", "is_dicom_file"]

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """Pixel grid of a 2D image in LPS patient space.

    Attributes:
        shape: ``(H, W)`` of the pixel grid.
        spacing: ``(row, column)`` pixel size in mm; 1.0 where the source does not state it.
        spacing_known: whether ``spacing`` came from the file.
        origin: LPS position (mm) of the centre of pixel ``(i, j) = (0, 0)``.
        direction: ``[3, 3]`` unit vectors as columns: along ``i`` (columns), ``j`` (rows), normal.
        nifti_affine: the source NIfTI's ``[4, 4]`` RAS affine, reused for NIfTI labels.
        nifti_shape: the source NIfTI's data shape (``(W, H)`` or ``(W, H, 1)``).
    """

    shape: tuple[int, int]
    spacing: tuple[float, float] = (1.0, 1.0)
    spacing_known: bool = False
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    nifti_affine: Optional[np.ndarray] = None
    nifti_shape: Optional[tuple[int, ...]] = None

    def ijk_to_lps(self) -> np.ndarray:
        """``[4, 4]`` matrix from ``(i, j, k, 1)`` to LPS mm."""
        row_mm, col_mm = self.spacing
        matrix = np.eye(4)
        matrix[:3, 0] = self.direction[:, 0] * col_mm
        matrix[:3, 1] = self.direction[:, 1] * row_mm
        matrix[:3, 2] = self.direction[:, 2] * 1.0
        matrix[:3, 3] = self.origin
        return matrix

    def ras_affine(self) -> np.ndarray:
        """``[4, 4]`` NIfTI affine (RAS): the source's own for NIfTI sources."""
        if self.nifti_affine is not None:
            return self.nifti_affine
        return _RAS_FROM_LPS @ self.ijk_to_lps()


def geometry_for(path: Path, shape: tuple[int, int], spacing: Optional[tuple[float, float]]) -> Geometry:
    """The geometry of the image file ``path`` whose decoded grid is ``shape`` with ``spacing``.

    ``shape``/``spacing`` are what :func:`afloc_models.imaging.read_image` reported; this adds
    the position and orientation, which it does not read.
    """
    shape = (int(shape[0]), int(shape[1]))
    known = spacing is not None
    spacing = (float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_geometry(path, shape, spacing, known)
    if is_dicom_file(path):
        return _dicom_geometry(path, shape, spacing, known)
    return Geometry(shape=shape, spacing=spacing, spacing_known=known)


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (by extension or the ``DICM`` magic at byte 128)."""
    if path.suffix.lower() in (".dcm", ".dicom", ".dic"):
        return True
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _dicom_geometry(path: Path, shape: tuple[int, int], spacing: tuple[float, float], known: bool) -> Geometry:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        position = [float(v) for v in ds.get("ImagePositionPatient", [])]
        orientation = [float(v) for v in ds.get("ImageOrientationPatient", [])]
    except Exception:  # the pixels already decoded; a header quirk only loses the position
        position, orientation = [], []
    origin = tuple(position) if len(position) == 3 and np.all(np.isfinite(position)) else (0.0, 0.0, 0.0)
    direction = np.eye(3)
    if len(orientation) == 6 and np.all(np.isfinite(orientation)):
        along_i, along_j = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        normal = np.cross(along_i, along_j)
        if np.linalg.norm(normal) > 1e-6:
            direction = np.stack([along_i, along_j, normal / np.linalg.norm(normal)], axis=1)
    return Geometry(shape=shape, spacing=spacing, spacing_known=known, origin=origin, direction=direction)


def _nifti_geometry(path: Path, shape: tuple[int, int], spacing: tuple[float, float], known: bool) -> Geometry:
    import nibabel as nib

    image = nib.load(str(path))
    affine = np.asarray(image.affine, dtype=np.float64)
    lps = _RAS_FROM_LPS @ affine
    scales = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(scales[:2] < 1e-9):
        warnings.warn(f"{path}: degenerate NIfTI affine; labels use an identity orientation", stacklevel=2)
        return Geometry(shape=shape, spacing=spacing, spacing_known=known)
    direction = lps[:3, :3] / np.maximum(scales, 1e-9)
    if scales[2] < 1e-9:  # a 2D NIfTI may carry a zero third column
        normal = np.cross(direction[:, 0], direction[:, 1])
        direction[:, 2] = normal / max(np.linalg.norm(normal), 1e-9)
    return Geometry(
        shape=shape,
        spacing=(float(scales[1]), float(scales[0])),
        spacing_known=known,
        origin=tuple(float(v) for v in lps[:3, 3]),
        direction=direction,
        nifti_affine=affine,
        nifti_shape=tuple(int(s) for s in image.shape),
    )
