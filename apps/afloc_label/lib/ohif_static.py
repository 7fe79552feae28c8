"""Serve the OHIF viewer bundled in ``monailabel`` correctly, without patching the installed package.

MONAI Label 0.8.5 serves its OHIF v3 bundle at ``/ohif/``, but its route turns the ``/`` of a
request path into ``os.pathsep`` (``:`` on Linux) before looking the file up, so every file in a
sub-folder (the icons in ``assets/``, the microscopy viewer's code in
``dicom-microscopy-viewer/``) is answered with ``index.html``.

:func:`install` puts a correct route for ``GET /ohif/{path}`` in front of the stock one on the
server's FastAPI app:

- an existing file inside the bundle folder is sent with its media type (``.wasm`` as
  ``application/wasm``, which browsers require for streaming compilation);
- a path that leaves the bundle folder (``..``, absolute, NUL) is a 404;
- a missing path that names a file (its last segment has an extension) is a 404, so a missing
  asset shows as an error instead of as HTML that the browser fails to parse;
- anything else (``/ohif/``, ``/ohif/viewer``, ``/ohif/monai-label``) is a client-side route of
  the single-page app and gets ``index.html``.

``manifest.json`` is sent with its icon paths under ``/ohif/`` (the bundle names them
``/assets/...``, a folder the server does not have).

``app-config.js`` is sent with ``ohif_afloc_mode.js`` (next to this module) appended: that adds
the "AFLoc (X-ray)" viewer mode at ``/ohif/afloc?StudyInstanceUIDs=...`` for CR/DX studies (a
stack viewport with the stock MONAI Label panel; see that file for why the stock mode cannot
show a radiograph).

The route keeps the stock one's access check (MONAI Label's ``RBAC`` dependency, a no-op unless
authentication is switched on).
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
from pathlib import Path, PurePosixPath
from typing import Any, Optional

logger = logging.getLogger(__name__)

__all__ = [
    "MODE_SCRIPT",
    "OHIF_PREFIX",
    "app_config_script",
    "install",
    "manifest",
    "media_type",
    "ohif_dir",
    "resolve_ohif_file",
]

OHIF_PREFIX = "/ohif"
#: The viewer mode added to the bundle's configuration (see ``app_config_script``).
MODE_SCRIPT = Path(__file__).resolve().parent / "ohif_afloc_mode.js"
_APP_CONFIG = "app-config.js"
_MANIFEST = "manifest.json"
_INSTALLED_FLAG = "_afloc_ohif_static"
# The configuration changes with this app; browsers must not keep a stale copy.
_NO_STORE = {"Cache-Control": "no-store"}
# Types mimetypes may not know on a minimal system; wrong ones break the viewer in the browser.
_MEDIA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".map": "application/json",
    ".txt": "text/plain",
    ".webmanifest": "application/manifest+json",
}


def ohif_dir() -> Path:
    """The OHIF bundle folder inside the installed ``monailabel`` package."""
    import monailabel.endpoints

    return Path(os.path.realpath(os.path.dirname(monailabel.endpoints.__file__))) / "static" / "ohif"


def resolve_ohif_file(root: Path, path: str) -> Optional[Path]:
    """The file to send for the request path ``path`` (relative to ``/ohif/``), or None for a 404.

    See the module docstring for the rules. ``root`` must be a resolved folder.
    """
    index = root / "index.html"
    if not path.strip("/"):
        return index
    if "\x00" in path or "\\" in path:
        return None
    parts = PurePosixPath(path).parts
    if not parts or parts[0] == "/" or any(part in ("..", ".") for part in parts):
        return None
    candidate = (root.joinpath(*parts)).resolve()
    if root not in candidate.parents:
        return None
    if candidate.is_file():
        return candidate
    if PurePosixPath(parts[-1]).suffix:
        return None
    return index


def media_type(path: Path) -> str:
    """The ``Content-Type`` for a bundle file."""
    known = _MEDIA_TYPES.get(path.suffix.lower())
    if known:
        return known
    guessed, _ = mimetypes.guess_type(path.name, strict=False)
    return guessed or "application/octet-stream"


def app_config_script(root: Path) -> bytes:
    """The bundle's ``app-config.js`` followed by the AFLoc mode script."""
    stock = (root / _APP_CONFIG).read_bytes()
    mode = MODE_SCRIPT.read_bytes()
    return stock.rstrip() + b"\n\n// Added by AFLoc Label (apps/afloc_label/lib/ohif_afloc_mode.js)\n" + mode


def manifest(root: Path) -> bytes:
    """The bundle's web-app manifest with root-relative icon paths moved under ``/ohif/``."""
    data = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    for icon in data.get("icons", []):
        src = icon.get("src")
        if isinstance(src, str) and src.startswith("/") and not src.startswith(f"{OHIF_PREFIX}/"):
            icon["src"] = OHIF_PREFIX + src
    return json.dumps(data, indent=2).encode("utf-8")


def install(fastapi_app: Any) -> None:
    """Register the fixed ``/ohif/{path}`` route ahead of MONAI Label's own (idempotent)."""
    if getattr(fastapi_app.state, _INSTALLED_FLAG, False):
        return
    from fastapi import Depends, HTTPException
    from fastapi.responses import FileResponse, Response
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC, User

    root = ohif_dir().resolve()
    if not (root / "index.html").is_file():
        logger.warning("no OHIF bundle in %s; /ohif/ stays as MONAI Label serves it", root)
        return

    async def get_ohif_file(path: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))) -> Any:
        if path == _APP_CONFIG and MODE_SCRIPT.is_file():
            # Read per request (two small files): edits to the mode need no server restart.
            return Response(app_config_script(root), media_type=_MEDIA_TYPES[".js"], headers=_NO_STORE)
        if path == _MANIFEST and (root / _MANIFEST).is_file():
            return Response(manifest(root), media_type=_MEDIA_TYPES[".webmanifest"])
        file = resolve_ohif_file(root, path)
        if file is None:
            raise HTTPException(status_code=404, detail=f"'{OHIF_PREFIX}/{path}' is not part of the OHIF viewer")
        return FileResponse(file, media_type=media_type(file))

    route = APIRoute(f"{OHIF_PREFIX}/{{path:path}}", get_ohif_file, methods=["GET"], include_in_schema=False)
    # Routes are matched in list order: the first match wins, so ours goes before the stock one.
    fastapi_app.router.routes.insert(0, route)
    setattr(fastapi_app.state, _INSTALLED_FLAG, True)
    logger.info("OHIF viewer served from %s at %s/", root, OHIF_PREFIX)
