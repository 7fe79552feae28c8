"""Crash-safe file writes: a reader (or a restart after ``kill -9``) sees the old or the new file, never neither.

Every writer here follows one pattern: write a hidden temporary file in the destination's own
folder (same file system, so the final step is a rename and never a copy), flush and ``fsync`` it,
``os.replace`` it onto the destination, then ``fsync`` the folder so the rename itself is durable.
A crash before the rename leaves the old file untouched plus a stray temporary file whose name
starts with :data:`TEMP_PREFIX` (:func:`remove_stale_temp_files` deletes those on the next start).

Folders (checkpoints) are swapped with :func:`replace_dir`, which uses Linux's
``renameat2(RENAME_EXCHANGE)`` where available so that the destination name always exists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Optional, Union

__all__ = [
    "TEMP_PREFIX",
    "atomic_copy",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "remove_stale_temp_files",
    "replace_dir",
]

#: Prefix of every temporary file these writers create (hidden; never matches an image pattern).
TEMP_PREFIX = ".afloc-tmp-"
_TEMP_SUFFIX = ".part"
_COPY_CHUNK = 1 << 20

PathLike = Union[str, os.PathLike]


def fsync_dir(folder: PathLike) -> None:
    """Make a rename or creation inside ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[BinaryIO], object], mode: Optional[int] = None) -> Path:
    """Create or replace ``path`` with what ``write(handle)`` writes to a binary file handle.

    If ``write`` raises, or the process dies, ``path`` keeps its previous content (or stays
    absent) and the temporary file is removed (or, after a kill, left for
    :func:`remove_stale_temp_files`). ``mode``: permission bits of the new file (default: those
    of the file replaced, else ``0o644`` less the umask).
    """
    path = Path(path)
    folder = path.parent
    fd, temp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.name[:64]}.", suffix=_TEMP_SUFFIX, dir=folder)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode if mode is not None else _default_mode(path))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Create or replace ``path`` with ``data`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Create or replace ``path`` with ``text`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_copy(source: PathLike, destination: PathLike) -> Path:
    """Copy ``source`` onto ``destination`` so that a crash leaves the old or the new file, never a mix."""

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle, _COPY_CHUNK)

    return atomic_write(destination, copy)


def replace_dir(staging: PathLike, target: PathLike) -> None:
    """Move the finished folder ``staging`` onto ``target`` (replacing an existing folder).

    Files in ``staging`` are synced first. Where the kernel offers ``RENAME_EXCHANGE`` the two
    folders swap names in one step and the old content is deleted afterwards, so ``target``
    exists at every instant; elsewhere the old folder is moved aside first (a crash in between
    leaves it as ``.<name>.old-*`` next to ``target``).
    """
    staging, target = Path(staging), Path(target)
    _fsync_tree(staging)
    if not target.exists():
        os.replace(staging, target)
        fsync_dir(target.parent)
        return
    if _exchange(staging, target):
        fsync_dir(target.parent)
        shutil.rmtree(staging, ignore_errors=True)  # now holds the old content
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(target, old)
    os.replace(staging, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temp_files(folders: Iterable[PathLike]) -> list[Path]:
    """Delete temporary files a killed writer left in ``folders`` (not recursive); returns them."""
    removed = []
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX) and entry.is_file():
                try:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
                except OSError:
                    pass
    return removed


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _default_mode(path: Path) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o644 & ~umask


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Optional[Callable[..., int]] = None
_renameat2_looked_up = False


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False where the system cannot."""
    global _renameat2, _renameat2_looked_up
    if not _renameat2_looked_up:
        _renameat2_looked_up = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            function = libc.renameat2
            function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            function.restype = ctypes.c_int
            _renameat2 = function
        except (OSError, AttributeError):
            _renameat2 = None
    if _renameat2 is None:
        return False
    result = _renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return result == 0
