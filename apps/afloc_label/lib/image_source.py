"""Turn the image MONAI Label hands a task into one readable 2D image file.

A task receives a file path for local datastores and uploads, but a folder for a DICOMweb
datastore that downloaded a series without converting it. A projection radiograph series holds
one image; a folder with several images is refused rather than guessed at.
"""

from __future__ import annotations

from pathlib import Path

from afloc_models.errors import ImageReadError

from lib.geometry import is_dicom_file

__all__ = ["resolve_image_file"]


def resolve_image_file(image: object) -> Path:
    """The single image file for ``image`` (a file, or a folder holding one DICOM image).

    Raises:
        ImageReadError: nothing exists there, or the folder holds no DICOM image or several.
    """
    if not isinstance(image, (str, Path)) or not str(image):
        raise ImageReadError(image, "no image path was given")
    path = Path(image)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if not path.is_dir():
        return path
    candidates = sorted(p for p in path.rglob("*") if p.is_file() and is_dicom_file(p))
    if not candidates:
        raise ImageReadError(path, "folder holds no DICOM file")
    if len(candidates) > 1:
        raise ImageReadError(
            path,
            f"series folder holds {len(candidates)} DICOM files; AFLoc localizes in single 2D "
            "radiographs, so give the series of one image (or one file)",
        )
    return candidates[0]
