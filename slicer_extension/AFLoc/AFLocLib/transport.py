"""HTTP requests with timeouts and prompt cancellation, on the standard library only.

Slicer bundles ``requests``, but ``http.client`` gives what cancellation needs: the socket. A
request sends its body and reads its reply in chunks, checking the :class:`CancelToken` between
chunks; while it waits for the server (inference can take seconds) a cancel shuts the socket down,
which ends the blocked read at once.

Error mapping: no answer (refused, unknown host, timeout) -> :class:`ServerUnreachableError`;
an HTTP status >= 400 -> :class:`ServerError` with the server's ``detail`` text.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .cancel import CancelToken
from .errors import (
    AFLocClientError,
    AuthenticationRequiredError,
    OperationCancelledError,
    ResultFormatError,
    ServerError,
    ServerUnreachableError,
)

#: Bytes per send/receive step: small enough that a cancel is noticed quickly, large enough
#: that a 20 MB radiograph does not take thousands of Python-level iterations.
CHUNK_BYTES = 256 * 1024

# Runtime alias (not an annotation): spelled with Optional so that Slicer's Python 3.9 accepts it.
ProgressCallback = Callable[[int, Optional[int]], None]


@dataclass(frozen=True)
class Response:
    """A complete HTTP reply."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResultFormatError(f"server reply is not JSON ({exc}): {self.body[:200]!r}") from None


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port`` (scheme added, slash dropped)."""
    url = url.strip()
    if not url:
        raise AFLocClientError("the server URL is empty; enter one such as http://127.0.0.1:8000")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AFLocClientError(f"'{url}' is not an http(s) server URL; enter one such as http://127.0.0.1:8000")
    try:
        parts.port  # noqa: B018 - raises ValueError on a non-numeric port
    except ValueError:
        raise AFLocClientError(f"'{url}' has an invalid port number") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class Transport:
    """Sends requests to one server; every call opens its own connection (thread-safe).

    ``token``: a bearer access token (MONAI Label's auth), sent as ``Authorization: Bearer ...``
    with every request; None on a server without authentication.
    """

    def __init__(self, base_url: str, timeout: float = 30.0, token: str | None = None):
        self.base_url = normalize_url(base_url)
        self.timeout = float(timeout)
        self.token = token or None
        parts = urllib.parse.urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._prefix = parts.path

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        return self.base_url + self._target(path, query)

    def _target(self, path: str, query: dict[str, Any] | None) -> str:
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode({k: _query_value(v) for k, v in query.items() if v is not None})
        return target

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
        progress: ProgressCallback | None = None,
        ok_statuses: tuple[int, ...] = (),
    ) -> Response:
        """Send one request and read the whole reply.

        Args:
            timeout: seconds any single socket operation may wait (connect, a send, the wait for
                the reply, one read); defaults to the transport's timeout.
            progress: called with ``(bytes received, total or None)`` while the reply arrives.
            ok_statuses: error statuses to return instead of raising (e.g. 404 for "not there").
        """
        cancel = cancel or CancelToken()
        cancel.raise_if_cancelled()
        target = self._target(path, query)
        timeout = self.timeout if timeout is None else float(timeout)
        conn = self._connection(timeout)
        unregister = cancel.on_cancel(lambda: _shutdown(conn))
        try:
            response = self._exchange(conn, method, target, body, content_type, cancel, progress)
        except OperationCancelledError:
            raise
        except (TimeoutError, socket.timeout):
            cancel.raise_if_cancelled()
            raise ServerUnreachableError(self.base_url, f"no answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            cancel.raise_if_cancelled()
            raise ServerUnreachableError(self.base_url, _describe(exc)) from None
        finally:
            unregister()
            conn.close()
        if response.status == 401 and 401 not in ok_statuses:
            reason = "your login has expired or was refused" if self.token else "no login token was sent"
            raise AuthenticationRequiredError(self.base_url, f"HTTP 401 on {method} {path}: {reason}")
        if response.status >= 400 and response.status not in ok_statuses:
            raise ServerError(method, path, response.status, _detail(response))
        return response

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _exchange(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        body: bytes | None,
        content_type: str | None,
        cancel: CancelToken,
        progress: ProgressCallback | None,
    ) -> Response:
        conn.putrequest(method, target)
        conn.putheader("Accept", "application/json, multipart/form-data, */*")
        if self.token:
            conn.putheader("Authorization", f"Bearer {self.token}")
        if content_type:
            conn.putheader("Content-Type", content_type)
        if body is not None or method in ("POST", "PUT"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders()
        view = memoryview(body or b"")
        for start in range(0, len(view), CHUNK_BYTES):
            cancel.raise_if_cancelled()
            conn.send(view[start : start + CHUNK_BYTES])
        cancel.raise_if_cancelled()
        reply = conn.getresponse()
        cancel.raise_if_cancelled()
        headers = {k.lower(): v for k, v in reply.getheaders()}
        if method == "HEAD":
            # A HEAD reply announces the length of a body it never sends.
            reply.read()
            return Response(status=reply.status, headers=headers)
        total = int(headers["content-length"]) if headers.get("content-length", "").isdigit() else None
        chunks: list[bytes] = []
        received = 0
        while True:
            cancel.raise_if_cancelled()
            chunk = reply.read(CHUNK_BYTES)
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
            if progress:
                progress(received, total)
        cancel.raise_if_cancelled()
        if total is not None and received < total:
            raise http.client.IncompleteRead(b"".join(chunks), total - received)
        return Response(status=reply.status, headers=headers, body=b"".join(chunks))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _shutdown(conn: http.client.HTTPConnection) -> None:
    # Called from the cancelling thread: shutdown (not close) wakes a recv blocked in another thread.
    sock = conn.sock
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if isinstance(exc, socket.gaierror):
        return "unknown host name"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc}); is it an http:// server?"
    if isinstance(exc, http.client.BadStatusLine):
        return "the reply is not HTTP"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _detail(response: Response) -> str:
    """The server's error text: FastAPI's ``{"detail": ...}`` when present, else the raw body."""
    text = response.body.decode("utf-8", errors="replace").strip()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return text[:500] or http.client.responses.get(response.status, "error")
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    return text[:500]
