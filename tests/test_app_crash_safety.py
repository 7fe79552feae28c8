"""A real server killed with SIGKILL in the middle of a datastore write restarts on old-or-new data.

The kill is aimed, not random: a watcher reads the server's open file descriptors in
``/proc/<pid>/fd`` and sends SIGKILL the moment the server holds a file inside the datastore open
for writing (a label being copied, the index ``datastore_v2.json`` being rewritten, an uploaded
image being stored). Before the fix those writes went straight onto the destination, so the kill
left a truncated label or an empty index, and the server no longer started on its folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import requests

from conftest import ServerHandle, start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs Linux /proc"),
]

IMAGE = "phantom_00000"
# Many small images make the index large enough (about 0.5 MB) that its rewrite takes a while.
N_FILLER_IMAGES = 800


def _nrrd(value: int, width: int = 6144, height: int = 4096) -> bytes:
    """A valid raw uint8 NRRD label of 24 MB filled with ``value``: long enough to catch mid-copy."""
    header = f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {width} {height}\nencoding: raw\n\n".encode()
    return header + bytes([value]) * (width * height)


def _png(side: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _nifti(value: int, side: int = 4096) -> bytes:
    """An uncompressed 16 MB NIfTI image (fast to decode, slow enough to copy)."""
    import nibabel as nib

    data = np.full((side, side), value, dtype=np.uint8)
    data[: side // 2] = 255 - value
    return nib.Nifti1Image(data, np.eye(4)).to_bytes()


# The watcher runs in its own process (no GIL shared with the uploading test) and polls
# /proc/<pid>/fd in a tight loop; it SIGKILLs the server's process group at the first open-for-write
# descriptor on a wanted path and prints that path.
_WATCHER = r"""
import os, re, signal, sys, time
pid, folder, pattern, budget = int(sys.argv[1]), sys.argv[2] + os.sep, re.compile(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + budget
base = f"/proc/{pid}/fd"
while time.monotonic() < deadline:
    try:
        fds = os.listdir(base)
    except OSError:
        break
    for fd in fds:
        try:
            target = os.readlink(f"{base}/{fd}")
            if not target.startswith(folder) or not pattern.search(target[len(folder):]):
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                flags = int(next(l for l in info if l.startswith("flags:")).split()[1], 8)
        except (OSError, ValueError, IndexError, StopIteration):
            continue
        if flags & (os.O_WRONLY | os.O_RDWR):
            os.killpg(pid, signal.SIGKILL)
            print(target, flush=True)
            sys.exit(0)
sys.exit(1)
"""


def _kill_mid_write(server: ServerHandle, action: Callable[[int], object], pattern: str,
                    attempts: int = 15, budget_s: float = 90.0) -> Optional[str]:
    """Repeat ``action(attempt)`` until the server is SIGKILLed while it writes a file matching ``pattern``.

    ``pattern``: a regular expression searched in the path relative to the datastore folder.
    Returns the path being written when the server was killed, or None if no such write was
    seen within ``attempts`` requests (the server is then killed anyway).
    """
    pid = server.process.pid
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, str(pid), str(server.studies.resolve()), pattern, str(budget_s)],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(0.2)
    for attempt in range(attempts):
        if watcher.poll() is not None:
            break
        try:
            action(attempt)
        except requests.RequestException:
            break  # the server died under the request
    try:
        out, _ = watcher.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        watcher.kill()
        out, _ = watcher.communicate()
    if server.alive():
        os.killpg(pid, signal.SIGKILL)
    server.process.wait(timeout=30)
    return out.strip() or None


def _restart(studies: Path, checkpoint: Path, model_dir: Path) -> ServerHandle:
    return start_server(studies, checkpoint, model_dir, conf={"preload": "false"})


def test_sigkill_mid_write_leaves_old_or_new_data(make_datastore, afloc_checkpoint, tmp_path):
    studies = make_datastore(tmp_path / "datastore", phantoms=2, dicom=False)
    tiny = _png(16)
    for i in range(N_FILLER_IMAGES):
        (studies / f"filler_{i:05d}.png").write_bytes(tiny)
    model_dir = tmp_path / "model"
    index = studies / "datastore_v2.json"
    old_label, new_label = _nrrd(1), _nrrd(2)
    servers: list[ServerHandle] = []
    try:
        server = _restart(studies, afloc_checkpoint, model_dir)
        servers.append(server)

        def put_label(content: bytes) -> requests.Response:
            return requests.put(
                f"{server.url}/datastore/label", params={"image": IMAGE, "tag": "final"},
                files={"label": (f"{IMAGE}.nrrd", content)}, timeout=120,
            )

        assert put_label(old_label).status_code == 200

        # 1. Killed while the new label is copied into labels/final/.
        where = _kill_mid_write(server, lambda i: put_label((new_label, old_label)[i % 2]), r"^labels/final/")
        assert where is not None, "the label write was never observed"
        label_file = studies / "labels" / "final" / f"{IMAGE}.nrrd"
        content = label_file.read_bytes()
        assert content in (old_label, new_label), f"label torn ({len(content)} bytes) by a kill while writing {where}"
        assert isinstance(json.loads(index.read_text()), dict)

        # 2. Killed while the index is rewritten for an image-info update.
        server = _restart(studies, afloc_checkpoint, model_dir)
        servers.append(server)
        served = requests.get(f"{server.url}/datastore/label", params={"label": IMAGE, "tag": "final"}, timeout=60)
        assert served.status_code == 200 and len(served.content) == len(old_label)
        assert served.content in (old_label, new_label)
        notes = ["restart check " * 2000, "second note " * 2000]
        where = _kill_mid_write(
            server,
            lambda i: requests.put(f"{server.url}/datastore/image/info", params={"image": IMAGE},
                                   data={"info": json.dumps({"note": notes[i % 2]})}, timeout=120),
            r"^[^/]*datastore_v2\.json",
        )
        assert where is not None, "the index write was never observed"
        listing = json.loads(index.read_text())  # never empty or cut short
        assert IMAGE in listing["objects"] and len(listing["objects"]) >= N_FILLER_IMAGES
        assert listing["objects"][IMAGE]["image"]["info"].get("note") in (None, *notes)

        # 3. Killed while an uploaded image is stored.
        server = _restart(studies, afloc_checkpoint, model_dir)
        servers.append(server)
        upload = _nifti(7)
        where = _kill_mid_write(
            server,
            lambda i: requests.put(f"{server.url}/datastore/image", params={"image": "uploaded"},
                                   files={"file": ("uploaded.nii", upload)}, timeout=120),
            r"^[^/]*uploaded\.nii",
        )
        assert where is not None, "the image write was never observed"
        stored = studies / "uploaded.nii"
        assert not stored.exists() or stored.read_bytes() == upload, "image torn by a kill mid-copy"

        # The server starts on what is left, serves old-or-new data and tidied the temporary files.
        server = _restart(studies, afloc_checkpoint, model_dir)
        servers.append(server)
        listing = requests.get(f"{server.url}/datastore/?output=all", timeout=60).json()
        assert IMAGE in listing["objects"]
        served = requests.get(f"{server.url}/datastore/label", params={"label": IMAGE, "tag": "final"}, timeout=60)
        assert served.status_code == 200 and served.content in (old_label, new_label)
        leftovers = [p.name for p in studies.rglob(".afloc-tmp-*")]
        assert leftovers == []
    finally:
        for handle in servers:
            handle.stop()
