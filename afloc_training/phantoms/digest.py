"""A content digest of a written phantom datastore: the same studies give the same digest.

The digest covers what training reads, each study's decoded pixels and its report text, in file
name order; PNG encoder settings and file times do not enter it. A recipe records the digest of
its training set so that a rerun can show it drew the same studies (``scripts/make_demo_model.py``
and ``tests/test_demo_model.py``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from afloc_models.errors import AFLocError

#: Study file names the writer uses (``phantom_00000.png`` + ``phantom_00000.txt``).
IMAGE_GLOB = "phantom_*.png"


def content_digest(folder: str | os.PathLike) -> str:
    """SHA-256 over every study's pixels (shape, dtype, values) and report bytes, by file name.

    Raises:
        AFLocError: the folder holds no phantom studies, or an image has no report beside it.
    """
    root = Path(folder)
    images = sorted(root.glob(IMAGE_GLOB))
    if not images:
        raise AFLocError(f"'{root}' holds no phantom studies ({IMAGE_GLOB})")
    digest = hashlib.sha256()
    for image in images:
        report = image.with_suffix(".txt")
        if not report.is_file():
            raise AFLocError(f"phantom '{image.name}' in '{root}' has no report '{report.name}'")
        with Image.open(image) as opened:
            pixels = np.ascontiguousarray(np.asarray(opened))
        digest.update(f"{image.name}|{pixels.dtype}|{pixels.shape}|".encode())
        digest.update(pixels.tobytes())
        digest.update(report.read_bytes())
    return digest.hexdigest()
