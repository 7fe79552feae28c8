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

``app-config.js`` is sent with ``ohif_afloc_mode.js``, ``ohif/afloc_study_list.js``,
``ohif/afloc_panel.js`` and ``ohif/afloc_sign_in.js`` (next to this module) appended (the last
one: sign-in when authentication is on): they add the "AFLoc (X-ray)" viewer mode
at ``/ohif/afloc?StudyInstanceUIDs=...`` for CR/DX studies (a stack viewport with the AFLoc panel
and the stock MONAI Label panel; see those files for why the stock mode cannot show a
radiograph and what the panel does), and open such a study in that mode on a double-click in
the study list. ``/ohif/_afloc/<file>`` serves the panel's own files
(``ohif/*.css``).

No request leaves the machine: the bundle's ``index.html`` and ``app.bundle.css`` ask Google
Fonts for the Inter font. They are sent with those references replaced by
``/ohif/_afloc/fonts.css``, which declares the Inter files of the system (Debian's
``fonts-inter``, or the folder in ``$AFLOC_OHIF_FONT_DIR``) served at ``/ohif/_afloc/fonts/``;
without them the viewer's CSS falls back to a local sans-serif font.

Unlike the stock route, this one has no access check: the viewer's files hold no data, and with
authentication on (``MONAI_LABEL_AUTH_ENABLE``) the page must load before anyone can sign in
(``ohif/afloc_sign_in.js``); every route that reads or writes data keeps its own check.
"""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Optional

logger = logging.getLogger(__name__)

__all__ = [
    "ASSET_PREFIX",
    "FONT_WEIGHTS",
    "MODE_SCRIPT",
    "OHIF_PREFIX",
    "PANEL_DIR",
    "PANEL_SCRIPT",
    "app_config_script",
    "font_files",
    "fonts_css",
    "local_fonts_css",
    "local_fonts_index",
    "install",
    "manifest",
    "media_type",
    "ohif_dir",
    "resolve_ohif_file",
]

OHIF_PREFIX = "/ohif"
#: The viewer mode added to the bundle's configuration (see ``app_config_script``).
MODE_SCRIPT = Path(__file__).resolve().parent / "ohif_afloc_mode.js"
#: The AFLoc panel's own files: its script (appended after the mode) and stylesheet.
PANEL_DIR = Path(__file__).resolve().parent / "ohif"
PANEL_SCRIPT = PANEL_DIR / "afloc_panel.js"
#: Double-click on a 2D study in the study list opens it in the AFLoc mode.
STUDY_LIST_SCRIPT = PANEL_DIR / "afloc_study_list.js"
#: With authentication on: the viewer's DICOMweb requests carry the sign-in token; a 401 asks to sign in.
SIGN_IN_SCRIPT = PANEL_DIR / "afloc_sign_in.js"
#: ``/ohif/<ASSET_PREFIX>...``: the panel's files and the local fonts (not part of the bundle).
ASSET_PREFIX = "_afloc/"
#: Inter's file name suffix -> CSS font weight (Debian's fonts-inter names).
FONT_WEIGHTS: Dict[str, int] = {
    "Thin": 100,
    "ExtraLight": 200,
    "Light": 300,
    "Regular": 400,
    "Medium": 500,
    "SemiBold": 600,
    "Bold": 700,
    "ExtraBold": 800,
    "Black": 900,
}
_FONT_DIRS = ("/usr/share/fonts/opentype/inter", "/usr/share/fonts/truetype/inter")
_FONTS_CSS = "fonts.css"
_APP_CONFIG = "app-config.js"
_MANIFEST = "manifest.json"
_INDEX = "index.html"
# Google Fonts references in the bundle: <link> tags in index.html, @import rules in the CSS.
_GOOGLE_LINK = re.compile(rb"<link[^>]*(?:fonts\.googleapis\.com|fonts\.gstatic\.com)[^>]*>")
_GOOGLE_IMPORT = re.compile(rb"@import\s+url\(\s*[\"']?https?://fonts\.googleapis\.com[^)]*\)\s*;?")
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
    ".otf": "font/otf",
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
    """The bundle's ``app-config.js`` followed by the AFLoc mode, study-list and panel scripts."""
    stock = (root / _APP_CONFIG).read_bytes()
    parts = [stock.rstrip()]
    scripts = (
        (MODE_SCRIPT, "ohif_afloc_mode.js"),
        (STUDY_LIST_SCRIPT, "ohif/afloc_study_list.js"),
        (PANEL_SCRIPT, "ohif/afloc_panel.js"),
        (SIGN_IN_SCRIPT, "ohif/afloc_sign_in.js"),
    )
    for script, name in scripts:
        if script.is_file():
            parts.append(f"// Added by AFLoc Label (apps/afloc_label/lib/{name})".encode() + b"\n" + script.read_bytes())
    return b"\n\n".join(parts)


def font_files(font_dir: Optional[Path] = None) -> Dict[int, Path]:
    """The local Inter files by CSS weight (upright styles), from ``font_dir`` or the system's."""
    folders = [font_dir] if font_dir else [Path(p) for p in (os.environ.get("AFLOC_OHIF_FONT_DIR") or "").split(os.pathsep) if p]
    folders += [Path(p) for p in _FONT_DIRS]
    for folder in folders:
        found = {}
        for suffix, weight in FONT_WEIGHTS.items():
            for ext in (".woff2", ".woff", ".otf", ".ttf"):
                candidate = folder / f"Inter-{suffix}{ext}"
                if candidate.is_file():
                    found[weight] = candidate
                    break
        if found:
            return found
    return {}


def fonts_css(files: Dict[int, Path]) -> bytes:
    """``@font-face`` rules for ``files`` served under ``/ohif/_afloc/fonts/``."""
    formats = {".woff2": "woff2", ".woff": "woff", ".otf": "opentype", ".ttf": "truetype"}
    rules = ["/* Inter served by the AFLoc Label server (no request leaves the machine). */"]
    if not files:
        rules.append("/* No local Inter font (install fonts-inter): the viewer uses a local sans-serif. */")
    for weight, path in sorted(files.items()):
        rules.append(
            "@font-face { font-family: 'Inter'; font-style: normal; font-display: swap; "
            f"font-weight: {weight}; src: url('{OHIF_PREFIX}/{ASSET_PREFIX}fonts/{path.name}') "
            f"format('{formats[path.suffix.lower()]}'); }}"
        )
    return ("\n".join(rules) + "\n").encode("utf-8")


def local_fonts_index(root: Path) -> bytes:
    """The bundle's ``index.html`` with its Google Fonts links replaced by the local ``fonts.css``."""
    html = (root / _INDEX).read_bytes()
    local = f'<link href="{OHIF_PREFIX}/{ASSET_PREFIX}{_FONTS_CSS}" rel="stylesheet"/>'.encode()
    replaced = [False]

    def swap(match: "re.Match[bytes]") -> bytes:
        if replaced[0]:
            return b""
        replaced[0] = True
        return local

    return _GOOGLE_LINK.sub(swap, html)


def local_fonts_css(path: Path) -> bytes:
    """A bundle stylesheet without its ``@import`` of Google Fonts (``fonts.css`` declares Inter)."""
    return _GOOGLE_IMPORT.sub(b"", path.read_bytes())


def _asset_file(relative: str) -> Optional[Path]:
    """A panel file (``afloc_panel.css``) or a local font file for ``/ohif/_afloc/<relative>``."""
    parts = PurePosixPath(relative).parts
    if not parts or any(part in ("..", ".", "/") for part in parts) or "\\" in relative or "\x00" in relative:
        return None
    if len(parts) == 2 and parts[0] == "fonts":
        return next((p for p in font_files().values() if p.name == parts[1]), None)
    if len(parts) == 1 and parts[0].endswith(".css"):
        candidate = PANEL_DIR / parts[0]
        return candidate if candidate.is_file() else None
    return None


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
    from fastapi import HTTPException
    from fastapi.responses import FileResponse, Response
    from fastapi.routing import APIRoute

    root = ohif_dir().resolve()
    if not (root / "index.html").is_file():
        logger.warning("no OHIF bundle in %s; /ohif/ stays as MONAI Label serves it", root)
        return

    # No access check: these are the viewer's own files (code, styles, fonts), the same for
    # everyone and free of data. With authentication on, the page must load before the user can
    # sign in; every request that reads or writes data (/proxy/dicom, /infer, /datastore,
    # /afloc, /info) keeps its own check.
    async def get_ohif_file(path: str) -> Any:
        if path == _APP_CONFIG and MODE_SCRIPT.is_file():
            # Read per request (small files): edits to the mode or panel need no server restart.
            return Response(app_config_script(root), media_type=_MEDIA_TYPES[".js"], headers=_NO_STORE)
        if path == _MANIFEST and (root / _MANIFEST).is_file():
            return Response(manifest(root), media_type=_MEDIA_TYPES[".webmanifest"])
        if path.startswith(ASSET_PREFIX):
            relative = path[len(ASSET_PREFIX) :]
            if relative == _FONTS_CSS:
                return Response(fonts_css(font_files()), media_type=_MEDIA_TYPES[".css"], headers=_NO_STORE)
            asset = _asset_file(relative)
            if asset is None:
                raise HTTPException(status_code=404, detail=f"'{OHIF_PREFIX}/{path}' is not a file of the AFLoc panel")
            return FileResponse(asset, media_type=media_type(asset), headers=_NO_STORE)
        file = resolve_ohif_file(root, path)
        if file is None:
            raise HTTPException(status_code=404, detail=f"'{OHIF_PREFIX}/{path}' is not part of the OHIF viewer")
        if file.name == _INDEX and file.parent == root:
            return Response(local_fonts_index(root), media_type=_MEDIA_TYPES[".html"], headers=_NO_STORE)
        if file.suffix.lower() == ".css":
            return Response(local_fonts_css(file), media_type=_MEDIA_TYPES[".css"])
        return FileResponse(file, media_type=media_type(file))

    route = APIRoute(f"{OHIF_PREFIX}/{{path:path}}", get_ohif_file, methods=["GET"], include_in_schema=False)
    # Routes are matched in list order: the first match wins, so ours goes before the stock one.
    fastapi_app.router.routes.insert(0, route)
    setattr(fastapi_app.state, _INSTALLED_FLAG, True)
    logger.info("OHIF viewer served from %s at %s/", root, OHIF_PREFIX)
