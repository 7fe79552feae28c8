"""Route-level checks in front of MONAI Label's stock endpoints (an ASGI middleware).

MONAI Label 0.8.5's endpoints trust their inputs: ``/train/<name>`` starts a process for any
name and appends a body field (``bundle_path``) to its ``PYTHONPATH``; ``/infer`` reads any
server path given as ``image``; ``session_id`` is joined into a folder that is deleted when it
looks stale; several routes answer a client's mistake with a 500. :class:`RouteGuard` answers
those requests itself, with a JSON ``{"detail", "error"}`` 4xx, before the endpoint runs:

- routes switched off by :class:`lib.route_policy.RoutePolicy` -> 403 (``PUT``/``DELETE /model``: 405);
- ``/infer``: ``image`` must be a datastore id, ``session_id`` a session id MONAI Label issued;
- ``/train/<name>``: unknown trainer -> 404; the body is checked by the trainer's own option
  parser (unknown keys such as ``bundle_path`` -> 400); ``run_sync`` and ``enqueue`` -> 400;
- ``/activelearning/<name>``: unknown strategy -> 404; ``/proxy/dicom`` without a DICOMweb
  datastore, ``/logs/gpu`` without ``nvidia-smi``, ``/datastore/dataset`` without final labels -> 404;
- ``PUT /datastore/{image,label}/info``: the body is at most :data:`MAX_INFO_BYTES` (413) and
  ``info`` a JSON object nested at most :data:`MAX_JSON_DEPTH` deep (400);
- ``POST``/``PUT``/``DELETE`` from a web page of another origin (``Origin`` header) -> 403: any
  page can send a form to ``127.0.0.1`` without CORS (cross-site request forgery);
- JSON replies never carry the server's absolute paths: its folders (datastore, model, sessions,
  app, temp, home) become ``<name>`` placeholders.

The facts the app's ``infer`` needs to tell a client-given path from MONAI Label's own upload
are kept per request in :func:`current_request`.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import parse_qs

from afloc_models.errors import AFLocError

from lib.errors import BadRequestError, http_status
from lib.ids import check_image_id
from lib.route_policy import RoutePolicy

__all__ = [
    "MAX_INFO_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TRAIN_BODY_BYTES",
    "RequestFacts",
    "RouteGuard",
    "check_session_id",
    "current_request",
    "install",
    "json_depth",
    "set_allowed_origins",
]

#: Largest body of ``PUT /datastore/{image,label}/info`` (a report is a few KB).
MAX_INFO_BYTES = 256 * 1024
#: Largest JSON body of ``POST /train/...``.
MAX_TRAIN_BODY_BYTES = 16 * 1024
#: Deepest nesting of objects/arrays accepted in ``info`` (and checked before parsing).
MAX_JSON_DEPTH = 32
# MONAI Label names sessions with uuid1 strings.
_SESSION_ID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_INFO_ROUTES = ("/datastore/image/info", "/datastore/label/info", "/datastore/updatelabelinfo")

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class RequestFacts:
    """What the client sent in the query string of the request being served."""

    image: Optional[str]
    session_id: Optional[str]
    started: float


_CURRENT: contextvars.ContextVar[Optional[RequestFacts]] = contextvars.ContextVar("afloc_request", default=None)


def current_request() -> Optional[RequestFacts]:
    """The query facts of the HTTP request being served in this context (None outside a request)."""
    return _CURRENT.get()


class _Refusal(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequest"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def check_session_id(value: str) -> str:
    """A session id as MONAI Label issues it (a uuid), else :class:`BadRequestError`."""
    if not _SESSION_ID.match(value or ""):
        raise BadRequestError(
            f"session_id {value[:80]!r} is not a session id issued by this server (PUT /session/ returns one)"
        )
    return value


def json_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text, strings skipped (cheap, never recursive)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _parse_json_object(text: str, what: str) -> dict:
    if json_depth(text) > MAX_JSON_DEPTH:
        raise _Refusal(400, f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        value = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as exc:
        raise _Refusal(400, f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        kind = "null" if value is None else {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")
        raise _Refusal(400, f"{what} must be a JSON object such as {{\"report\": \"...\"}}, got {kind}")
    return value


class RouteGuard:
    """ASGI middleware applying :class:`RoutePolicy` and the per-route checks of the module docstring."""

    def __init__(self, app: Callable[..., Awaitable[None]], policy: Optional[RoutePolicy] = None):
        self.app = app
        self.policy = policy

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path = _route_path(scope)
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        token = _CURRENT.set(RequestFacts(query.get("image"), query.get("session_id"), time.time()))
        try:
            try:
                receive = await self._check(method, path, query, scope, receive)
            except _Refusal as refusal:
                await _send_json(send, refusal.status, {"detail": refusal.message, "error": refusal.kind})
                return
            except AFLocError as exc:
                await _send_json(send, http_status(exc), {"detail": str(exc), "error": type(exc).__name__})
                return
            await self.app(scope, receive, _PathScrubber(send).send)
        finally:
            _CURRENT.reset(token)

    # ------------------------------------------------------------------ checks
    async def _check(self, method: str, path: str, query: dict, scope: dict, receive: Receive) -> Receive:
        if method not in ("GET", "HEAD", "OPTIONS"):
            _check_origin(scope)
        policy = self.policy or _policy()
        refusal = policy.refusal(method, path)
        if refusal is not None:
            status, message = refusal
            raise _Refusal(status, message, "RouteDisabled")
        if _auth_enabled() and not _has_bearer(scope):
            return receive  # the endpoint's authentication refuses it (401) before reading anything
        if path.startswith("/infer/") and method == "POST":
            if query.get("image"):
                check_image_id(query["image"])
            if query.get("session_id"):
                check_session_id(query["session_id"])
        elif path.startswith("/session/") and method in ("GET", "DELETE") and path.rstrip("/") != "/session":
            check_session_id(path[len("/session/"):])
        elif path.startswith("/train/") and method == "POST":
            return await self._check_train(path, query, scope, receive)
        elif path.startswith("/activelearning/") and method == "POST":
            _check_strategy(path[len("/activelearning/"):])
        elif path.startswith("/proxy/dicom"):
            _check_dicomweb()
        elif path.rstrip("/") == "/logs/gpu" and shutil.which("nvidia-smi") is None:
            raise _Refusal(404, "nvidia-smi is not installed on this server: there is no GPU information to show", "NotFound")
        elif path.rstrip("/") == "/datastore/dataset":
            _check_dataset()
        elif method == "PUT" and path.rstrip("/") in _INFO_ROUTES:
            return await self._check_info(scope, receive)
        return receive

    async def _check_train(self, path: str, query: dict, scope: dict, receive: Receive) -> Receive:
        from lib.params import parse_bool

        if parse_bool(query.get("run_sync"), "run_sync", False):
            raise _Refusal(
                400,
                "run_sync is not supported: training runs in the background; watch it with GET /train/ "
                "and stop it with DELETE /train/",
            )
        if parse_bool(query.get("enqueue"), "enqueue", False):
            raise _Refusal(400, "enqueue is not supported: one training runs at a time (429 while one runs)")
        name = path[len("/train/"):].strip("/")
        trainers = _trainers()
        if name and name not in trainers:
            offered = ", ".join(sorted(trainers)) or "none"
            raise _Refusal(404, f"unknown trainer {name!r}: this server offers {offered}", "NotFound")
        messages = await _read_body(receive, MAX_TRAIN_BODY_BYTES, "the training request body")
        text = b"".join(m.get("body", b"") for m in messages).decode("utf-8", "replace")
        body = _parse_json_object(text, "the training request body") if text.strip() else {}
        per_trainer = {name: body} if name else body  # POST /train/ takes {trainer: options}
        for trainer, options in per_trainer.items():
            if trainer not in trainers:
                raise _Refusal(404, f"unknown trainer {trainer!r}: this server offers {', '.join(sorted(trainers))}", "NotFound")
            check = getattr(trainers[trainer], "check_request", None)
            if check is None:
                raise _Refusal(400, f"trainer {trainer!r} accepts no options over HTTP")
            check(options)
        return _replay(messages, receive)

    async def _check_info(self, scope: dict, receive: Receive) -> Receive:
        from starlette.requests import Request

        messages = await _read_body(receive, MAX_INFO_BYTES, "an info update")
        request = Request(scope, _replay(messages, None))
        try:
            form = await request.form()
        except Exception as exc:
            raise _Refusal(400, f"the info update is not a readable form: {exc}") from None
        try:
            value = form.get("info")
            if isinstance(value, str):
                _parse_json_object(value, "'info'")
            elif value is not None:
                raise _Refusal(400, "'info' must be a form field holding a JSON object, not a file")
        finally:
            await form.close()
        return _replay(messages, receive)


# ---------------------------------------------------------------------- cross-site requests
_ALLOWED_ORIGINS: set[str] = set()


def set_allowed_origins(origins: Any) -> None:
    """Web origins besides the server's own whose pages may send changing requests (``--conf cors_origins``)."""
    _ALLOWED_ORIGINS.clear()
    _ALLOWED_ORIGINS.update(str(o).rstrip("/").lower() for o in origins)


def _check_origin(scope: dict) -> None:
    """Refuse a browser's cross-site POST/PUT/DELETE (a form any web page can send without CORS).

    Browsers send ``Origin`` with every such request; non-browser clients (Slicer, curl) send
    none. The server's own pages (``/ohif/``) have its own origin.
    """
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin", b"").decode("latin-1").strip().rstrip("/").lower()
    if not origin:
        return
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    own = origin.split("://", 1)[-1] == host
    if not own and origin not in _ALLOWED_ORIGINS:
        raise _Refusal(
            403,
            f"cross-site request from {origin[:100]!r} refused: only this server's own pages (and origins "
            "listed in --conf cors_origins or MONAI_LABEL_CORS_ORIGINS) may change data",
            "Forbidden",
        )


# ---------------------------------------------------------------------- app lookups
def _instance() -> Any:
    from monailabel.interfaces.utils.app import app_instance

    return app_instance()


def _policy() -> RoutePolicy:
    policy = getattr(_instance(), "route_policy", None)
    return policy if hasattr(policy, "refusal") else RoutePolicy.from_conf({})


def _auth_enabled() -> bool:
    from monailabel.config import settings

    return bool(settings.MONAI_LABEL_AUTH_ENABLE)


def _has_bearer(scope: dict) -> bool:
    value = dict(scope.get("headers") or []).get(b"authorization", b"")
    return value[:7].lower() == b"bearer " and len(value) > 7


def _trainers() -> dict:
    return dict(getattr(_instance(), "_trainers", {}) or {})


def _check_strategy(name: str) -> None:
    strategies = dict(getattr(_instance(), "_strategies", {}) or {})
    name = name.strip("/")
    if name not in strategies:
        offered = ", ".join(sorted(strategies)) or "none"
        raise _Refusal(404, f"unknown active learning strategy {name!r}: this server offers {offered}", "NotFound")


def _check_dicomweb() -> None:
    from monailabel.config import settings

    if not str(settings.MONAI_LABEL_STUDIES).startswith(("http://", "https://")):
        raise _Refusal(
            404,
            "this server reads a local datastore folder: there is no DICOMweb server behind /proxy/dicom "
            "(start it with --studies http://<pacs>/dicom-web for the OHIF DICOMweb mode)",
            "NotFound",
        )


def _check_dataset() -> None:
    datastore = _instance().datastore()
    if not datastore.datalist():
        raise _Refusal(404, "the datastore has no image with a 'final' label yet: there is nothing to export", "NotFound")


# ---------------------------------------------------------------------- ASGI helpers
def _route_path(scope: dict) -> str:
    path = scope.get("path", "") or "/"
    root = scope.get("root_path", "") or ""
    return path[len(root):] if root and path.startswith(root) else path


async def _read_body(receive: Receive, limit: int, what: str) -> list[Message]:
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if size > limit:
            raise _Refusal(413, f"{what} is larger than {limit // 1024} KiB", "PayloadTooLarge")
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], then: Optional[Receive]) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


async def _send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
    })
    await send({"type": "http.response.body", "body": payload})


# ---------------------------------------------------------------------- path scrubbing
def _server_folders() -> list[tuple[str, str]]:
    """``(absolute folder, replacement)`` pairs, longest folder first."""
    from monailabel.config import settings

    folders: list[tuple[str, str]] = []
    studies = str(settings.MONAI_LABEL_STUDIES or "")
    if studies and not studies.startswith(("http://", "https://")):
        # A placeholder, not a relative path: the stock Slicer module loads ``path`` from its own
        # disk when such a file exists there, which a bare file name could match by accident.
        folders.append((os.path.realpath(studies), "<datastore>"))
    try:
        instance = _instance()
    except Exception:
        instance = None
    model_dir = getattr(instance, "model_dir", None)
    if model_dir:
        folders.append((os.path.realpath(str(model_dir)), "<model_dir>"))
    sessions = getattr(instance.sessions(), "store_path", None) if instance is not None and instance.sessions() else None
    if sessions:
        folders.append((os.path.realpath(sessions), "<sessions>"))
    if settings.MONAI_LABEL_APP_DIR:
        folders.append((os.path.realpath(settings.MONAI_LABEL_APP_DIR), "<app>"))
    folders.append((os.path.realpath(tempfile.gettempdir()), "<tmp>"))
    folders.append((str(Path.home()), "<home>"))
    return sorted({f: r for f, r in folders if f and f != "/"}.items(), key=lambda fr: -len(fr[0]))


def scrub_paths(value: Any, folders: list[tuple[str, str]]) -> Any:
    """``value`` (parsed JSON) with every absolute server folder replaced (see the module docstring)."""
    if isinstance(value, str):
        for folder, replacement in folders:
            if folder in value:
                value = re.sub(
                    re.escape(folder) + r"(/|(?![\w.-]))",
                    lambda m: (f"{replacement}/" if replacement else "") if m.group(1) else (replacement or "."),
                    value,
                )
        return value
    if isinstance(value, list):
        return [scrub_paths(v, folders) for v in value]
    if isinstance(value, dict):
        return {k: scrub_paths(v, folders) for k, v in value.items()}
    return value


class _PathScrubber:
    """Wraps ``send``: buffers a JSON reply and removes server paths from it."""

    def __init__(self, send: Send):
        self._send = send
        self._start: Optional[Message] = None
        self._chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json":
                self._start = message
                return
            await self._send(message)
            return
        if message["type"] != "http.response.body" or self._start is None:
            await self._send(message)
            return
        self._chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self._chunks)
        try:
            body = json.dumps(scrub_paths(json.loads(body), _server_folders())).encode("utf-8")
        except (ValueError, RecursionError):
            pass
        headers = [(k, v) for k, v in self._start.get("headers") or [] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})


def install(app: Any) -> None:
    """Put :class:`RouteGuard` in front of ``app``'s routes (outermost of the app's middleware)."""
    from starlette.middleware import Middleware

    # MONAI Label's POST /reload re-imports the app's ``lib`` modules: the newest RouteGuard (and
    # with it this module's request facts) replaces the one installed before.
    app.user_middleware[:] = [m for m in app.user_middleware if getattr(m.cls, "__name__", "") != "RouteGuard"]
    app.user_middleware.insert(0, Middleware(RouteGuard))
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = app.build_middleware_stack()
