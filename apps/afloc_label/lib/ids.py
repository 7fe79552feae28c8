"""Checks on the names clients choose: image ids and label tags.

MONAI Label joins image ids and tags straight into file paths (``<studies>/<id><ext>``,
``labels/<tag>/<id><ext>``), and its infer endpoint accepts any existing server path as an
"image id". Names are therefore refused when they could leave the datastore folder: a path
separator, ``.``/``..``, a NUL byte, or a leading ``~``. Everything else a file name may hold
(spaces, dots, dashes, DICOM UIDs) is allowed.
"""

from __future__ import annotations

import re

from lib.errors import BadRequestError

__all__ = ["MAX_ID_LENGTH", "check_image_id", "check_tag"]

#: Longest image id accepted (file systems limit a name to 255 bytes, extension included).
MAX_ID_LENGTH = 200
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_image_id(image_id: object, what: str = "image id") -> str:
    """Return ``image_id`` if it is a plain datastore name, else raise :class:`BadRequestError`."""
    if not isinstance(image_id, str) or not image_id.strip():
        raise BadRequestError(f"{what} is empty: give the id of an image in the datastore")
    if len(image_id) > MAX_ID_LENGTH:
        raise BadRequestError(f"{what} is {len(image_id)} characters long; the limit is {MAX_ID_LENGTH}")
    if "/" in image_id or "\\" in image_id or "\x00" in image_id:
        raise BadRequestError(
            f"{what} {image_id!r} contains a path separator: give a datastore image id, not a path"
        )
    if image_id in (".", "..") or image_id.startswith("~"):
        raise BadRequestError(f"{what} {image_id!r} is not a valid image name")
    return image_id


def check_tag(tag: object) -> str:
    """Return ``tag`` if it is a plain label tag (letters, digits, ``_.-``, at most 64 characters)."""
    if not isinstance(tag, str) or not _TAG.match(tag) or tag in (".", ".."):
        raise BadRequestError(
            f"label tag {tag!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return tag
