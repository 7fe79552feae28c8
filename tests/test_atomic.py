"""afloc_models.atomic: old-or-new files, no stray temporaries, folder swaps that never leave a gap."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from afloc_models import atomic

REPO = Path(__file__).resolve().parents[1]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "datastore_v2.json"
    atomic.atomic_write_text(target, "old")

    def broken(handle):
        handle.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datastore_v2.json"]


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / f"{atomic.TEMP_PREFIX}label.nrrd.x1.part").write_bytes(b"partial")
    (tmp_path / "label.nrrd").write_bytes(b"label")
    (tmp_path / ".lock").write_bytes(b"")
    removed = atomic.remove_stale_temp_files([tmp_path, tmp_path / "missing"])
    assert [p.name for p in removed] == [f"{atomic.TEMP_PREFIX}label.nrrd.x1.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "label.nrrd"]


def test_copy_keeps_permissions_of_the_file_it_replaces(tmp_path):
    source, target = tmp_path / "new.bin", tmp_path / "label.bin"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    atomic.atomic_copy(source, target)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o640


@pytest.mark.skipif(sys.platform != "linux", reason="RENAME_EXCHANGE is Linux-only")
def test_folder_swaps_never_leave_the_name_missing_even_under_sigkill(tmp_path):
    """A writer swapping checkpoint-like folders is killed repeatedly; the folder is always whole."""
    target = tmp_path / "checkpoint"
    writer = textwrap.dedent(
        f"""
        import itertools, os, tempfile
        from pathlib import Path
        from afloc_models.atomic import replace_dir
        target = Path({str(target)!r})
        for version in itertools.count():
            staging = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=target.parent))
            for name in ("config.yaml", "model.safetensors", "meta.json"):
                (staging / name).write_text(str(version) * 1000)
            replace_dir(staging, target)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for attempt in range(6):
        process = subprocess.Popen([sys.executable, "-c", writer], env=env)
        missing = 0
        deadline = time.monotonic() + 1.0 + 0.15 * attempt
        while time.monotonic() < deadline:
            if target.exists() and not target.is_dir():
                missing += 1
            elif not target.exists() and attempt > 0:
                missing += 1  # after the first run the name must exist at every instant
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert missing == 0
        contents = {p.read_text() for p in target.iterdir()}
        assert len(contents) == 1 and sorted(p.name for p in target.iterdir()) == [
            "config.yaml", "meta.json", "model.safetensors"
        ]
