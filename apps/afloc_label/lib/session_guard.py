"""Safe ``PUT /session/`` (off by default: ``--conf enable_routes sessions``).

MONAI Label 0.8.5 writes each uploaded file to ``<temp folder>/<its client-given basename>``
(``..`` becomes the folder's parent) and, with ``uncompress=true``, unpacks the upload with
``shutil.unpack_archive``, which writes tar members named ``../x`` or ``/x`` (and links pointing
anywhere) outside the session folder. This module replaces the route with one that checks the
file names and, before anything is unpacked, every archive member (Python's ``tarfile`` "data"
filter rules; zip names that are absolute or contain ``..``), then hands over to MONAI Label's
own ``create_session``.
"""


import shutil
import tarfile
import zipfile
from typing import Any, List

from lib.errors import BadRequestError

__all__ = ["MAX_MEMBERS", "check_archive", "check_upload_name", "install"]

#: Most members an uploaded archive may hold.
MAX_MEMBERS = 10_000
_MAX_NAME = 200


def check_upload_name(name: str | None) -> None:
    """A client file name MONAI Label may use as a file name in a folder of its own."""
    if not name:
        return  # MONAI Label picks a name itself
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if base in ("", ".", "..") or "\x00" in name:
        raise BadRequestError(f"uploaded file name {name[:80]!r} is not a file name")
    if len(base.encode("utf-8")) > _MAX_NAME:
        raise BadRequestError(f"uploaded file name is {len(base)} characters long; the limit is {_MAX_NAME}")


def _safe_member_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    return bool(name) and not name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def _archive_format(name: str) -> str:
    lower = name.lower()
    for fmt, extensions, _ in shutil.get_unpack_formats():
        if any(lower.endswith(ext) for ext in extensions):
            return fmt
    known = ", ".join(ext for _, exts, _ in shutil.get_unpack_formats() for ext in exts)
    raise BadRequestError(f"uncompress=true needs an archive named with one of {known}; got {name[:80]!r}")


def check_archive(fileobj: Any, name: str) -> None:
    """Raise :class:`BadRequestError` if unpacking ``fileobj`` could write outside its folder."""
    fmt = _archive_format(name)
    fileobj.seek(0)
    try:
        if fmt == "zip":
            if not zipfile.is_zipfile(fileobj):
                raise BadRequestError(f"{name!r} is named like a zip archive but is not one")
            fileobj.seek(0)
            with zipfile.ZipFile(fileobj) as archive:
                members = archive.namelist()
                if len(members) > MAX_MEMBERS:
                    raise BadRequestError(f"archive {name!r} holds {len(members)} files; the limit is {MAX_MEMBERS}")
                bad = [m for m in members if not _safe_member_name(m)]
                if bad:
                    raise BadRequestError(f"archive {name!r} has members outside its folder: {bad[:3]}")
            return
        fileobj.seek(0)
        try:
            archive = tarfile.open(fileobj=fileobj, mode="r:*")
        except tarfile.TarError:
            raise BadRequestError(f"uncompress=true but {name!r} is not a tar or zip archive") from None
        with archive:
            try:
                _check_tar_members(archive, name)
            except tarfile.TarError as exc:
                raise BadRequestError(f"archive {name!r} is damaged: {exc}") from None
    finally:
        fileobj.seek(0)


def _check_tar_members(archive: tarfile.TarFile, name: str) -> None:
    for count, member in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise BadRequestError(f"archive {name!r} holds more than {MAX_MEMBERS} files")
        try:
            tarfile.data_filter(member, "/session-folder")
        except tarfile.FilterError as exc:
            raise BadRequestError(f"archive {name!r} is refused: {exc}") from None
        if not _safe_member_name(member.name):
            raise BadRequestError(f"archive {name!r} has a member outside its folder: {member.name!r}")


def install(app: Any) -> None:
    """Replace MONAI Label's ``PUT /session/`` with the checked version (same parameters)."""
    from fastapi import BackgroundTasks, Depends, File, UploadFile
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints import session as stock
    from monailabel.endpoints.user.auth import RBAC, User

    async def api_create_session(
        background_tasks: BackgroundTasks,
        uncompress: bool = False,
        expiry: int = 0,
        files: List[UploadFile] = File(...),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
    ) -> Any:
        for upload in files:
            check_upload_name(upload.filename)
        if uncompress:
            if len(files) != 1:
                raise BadRequestError("uncompress=true takes exactly one archive")
            check_archive(files[0].file, files[0].filename or "archive")
        return stock.create_session(background_tasks, uncompress, expiry, files)

    from lib.route_override import replace_route

    api_create_session.__afloc__ = True  # type: ignore[attr-defined]
    replace_route(app, "/session/", "PUT", APIRoute(
        "/session/", api_create_session, methods=["PUT"], tags=["Session"],
        summary="Create new session with Image (file names and archive members checked)",
        dependency_overrides_provider=app,  # so that lib.security's token check applies here too
    ))
