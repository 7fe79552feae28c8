"""Reject a ``params`` form field that is JSON but not an object, before MONAI Label reads it.

MONAI Label's infer and datastore endpoints do ``dict.update(json.loads(params))``; a ``params``
of ``[1, 2]``, ``"text"`` or ``3`` then fails inside the endpoint with a ``TypeError`` or
``ValueError`` that no handler can tell apart from a genuine server fault. This ASGI middleware
reads multipart / url-encoded request bodies on those routes, checks the field, answers 400 with a
JSON message when it is not an object, and otherwise replays the body unchanged to the server.
Malformed JSON is left to the endpoint, whose ``JSONDecodeError`` :mod:`lib.http_errors` already
turns into a 400.

The body is never held in memory whole: it is spooled to a temporary file (the first
:data:`SPOOL_IN_MEMORY_BYTES` in memory), read back in chunks for the check and for the endpoint,
and refused with ``413`` past :data:`MAX_UPLOAD_BYTES` (at once when ``Content-Length`` says so).
"""

from __future__ import annotations

import json
import tempfile
from typing import IO, Any, Awaitable, Callable

__all__ = ["MAX_UPLOAD_BYTES", "ParamsGuard", "install"]

#: Largest request body accepted on the guarded routes (an uncompressed 8192 x 8192 16-bit DICOM
#: is 128 MiB; see docs/limits.md).
MAX_UPLOAD_BYTES = 256 * 1024 * 1024
#: Bytes of a body kept in memory before the spool moves to a temporary file.
SPOOL_IN_MEMORY_BYTES = 1024 * 1024
_CHUNK = 64 * 1024

# Routes whose stock handlers merge the ``params`` form field into a dict.
_GUARDED_PREFIXES = ("/infer/", "/datastore/image", "/datastore/label")
_FORM_TYPES = (b"multipart/form-data", b"application/x-www-form-urlencoded")

Message = dict[str, Any]


def params_problem(value: str) -> str | None:
    """Why a ``params`` field cannot be used, or None when it is a JSON object (or not JSON at all)."""
    try:
        parsed = json.loads(value) if value.strip() else {}
    except ValueError:
        return None  # the endpoint's own JSONDecodeError handler explains this case
    if isinstance(parsed, dict):
        return None
    kind = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(parsed), "null"
    )
    return f"'params' must be a JSON object such as {{\"prompt\": \"left pleural effusion\"}}, got {kind}"


class ParamsGuard:
    """ASGI middleware: 400 for a non-object ``params`` on the guarded routes."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > MAX_UPLOAD_BYTES:
            await _send_json(send, 413, _too_large(declared))
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES, prefix="afloc-body-") as spool:
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    await _send_json(send, 413, _too_large(size))
                    return
                spool.write(chunk)
                if not message.get("more_body", False):
                    break
            problem = await self._check(scope, spool)
            if problem is not None:
                await _send_json(send, 400, {"detail": problem, "error": "BadRequest"})
                return
            await self.app(scope, _replay(spool, receive), send)

    @staticmethod
    def _applies(scope: dict) -> bool:
        if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT"):
            return False
        if not str(scope.get("path", "")).startswith(_GUARDED_PREFIXES):
            return False
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"")
        return content_type.split(b";")[0].strip().lower() in _FORM_TYPES

    @staticmethod
    async def _check(scope: dict, spool: IO[bytes]) -> str | None:
        from starlette.requests import Request

        request = Request(scope, _replay(spool, None))
        try:
            form = await request.form()
        except Exception:  # a malformed body: let the endpoint report it the usual way
            return None
        try:
            value = form.get("params")
            return params_problem(value) if isinstance(value, str) else None
        finally:
            await form.close()


def _replay(spool: IO[bytes], then: Callable[[], Awaitable[Message]] | None) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that streams the spooled body from its start, then defers to ``then`` (disconnects)."""
    spool.seek(0)
    done = False

    async def receive() -> Message:
        nonlocal done
        if not done:
            chunk = spool.read(_CHUNK)
            if len(chunk) < _CHUNK or not spool.read(1):
                done = True
            else:
                spool.seek(-1, 1)  # put back the byte that showed more is coming
            return {"type": "http.request", "body": chunk, "more_body": not done}
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def _content_length(scope: dict) -> int | None:
    value = dict(scope.get("headers") or []).get(b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _too_large(size: int) -> dict:
    return {
        "detail": f"the request body is {size} bytes or more; the limit is {MAX_UPLOAD_BYTES} bytes "
        "(see docs/limits.md)",
        "error": "PayloadTooLarge",
    }


async def _send_json(send: Callable, status: int, body: dict) -> None:
    payload = json.dumps(body).encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
    })
    await send({"type": "http.response.body", "body": payload})


def install(app: Any) -> None:
    """Put :class:`ParamsGuard` in front of ``app``'s routes (rebuilds its middleware stack)."""
    from starlette.middleware import Middleware

    if any(getattr(m, "cls", None) is ParamsGuard for m in app.user_middleware):
        return
    app.user_middleware.insert(0, Middleware(ParamsGuard))
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = app.build_middleware_stack()
