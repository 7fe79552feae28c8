"""``multipart/form-data`` bodies: building requests and splitting MONAI Label's replies.

MONAI Label takes uploads and the infer ``params`` as form fields, and answers
``POST /infer/...?output=all`` with a multipart body holding a ``params`` JSON part and an
``image`` file part. The body is split on its boundary by hand: the bytes of a file part must come
back exactly as sent, and the standard library's mail parser may rewrite line endings inside
binary payloads. ``email.message`` is still used for what it does well, reading header parameters
(``name``, ``filename``, ``boundary``).
"""

from __future__ import annotations

import email.message
import uuid
from dataclasses import dataclass
from pathlib import Path

from .errors import ResultFormatError


@dataclass(frozen=True)
class FilePart:
    """A file to send: form field ``name``, the ``filename`` the server sees, and its bytes."""

    name: str
    filename: str
    data: bytes
    content_type: str = "application/octet-stream"

    @classmethod
    def from_path(cls, name: str, path: str | Path, filename: str | None = None) -> "FilePart":
        path = Path(path)
        return cls(name=name, filename=filename or path.name, data=path.read_bytes())


@dataclass(frozen=True)
class Part:
    """One part of a received multipart body."""

    name: str
    filename: str | None
    content_type: str
    data: bytes

    def text(self) -> str:
        return self.data.decode("utf-8")


def encode(fields: dict[str, str], files: list[FilePart] | None = None) -> tuple[bytes, str]:
    """Build a ``multipart/form-data`` body; returns ``(body, content_type header value)``."""
    boundary = f"afloc-{uuid.uuid4().hex}"
    chunks: list[bytes] = []
    for name, value in fields.items():
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n".encode("utf-8")
        )
        chunks.append(value.encode("utf-8"))
        chunks.append(b"\r\n")
    for part in files or []:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{_quote(part.name)}"; '
            f'filename="{_quote(part.filename)}"\r\nContent-Type: {part.content_type}\r\n\r\n'.encode("utf-8")
        )
        chunks.append(part.data)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _quote(value: str) -> str:
    # Form field names and file names are quoted strings: a stray quote or newline would end them.
    if any(c in value for c in '"\r\n'):
        raise ValueError(f"form field or file name may not contain quotes or line breaks: {value!r}")
    return value


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a ``multipart/*`` Content-Type, or None for other types."""
    message = email.message.Message()
    message["Content-Type"] = content_type
    if message.get_content_maintype() != "multipart":
        return None
    boundary = message.get_param("boundary")
    return str(boundary) if boundary else None


def decode(body: bytes, content_type: str) -> dict[str, Part]:
    """Split a multipart body into its parts, keyed by form field name."""
    boundary = boundary_of(content_type)
    if not boundary:
        raise ResultFormatError(f"expected a multipart reply, got Content-Type {content_type!r}")
    delimiter = b"--" + boundary.encode("latin-1")
    pieces = body.split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise ResultFormatError("multipart reply is truncated (no closing boundary)")
    parts: dict[str, Part] = {}
    # pieces[0] is the preamble, pieces[-1] the epilogue after the closing "--".
    for piece in pieces[1:-1]:
        part = _decode_part(piece)
        parts[part.name] = part
    return parts


def _decode_part(piece: bytes) -> Part:
    # Each piece is "\r\n<headers>\r\n\r\n<data>\r\n"; the CRLFs around data belong to the delimiters.
    if piece.startswith(b"\r\n"):
        piece = piece[2:]
    head, sep, data = piece.partition(b"\r\n\r\n")
    if not sep:
        raise ResultFormatError("multipart part has no header/body separator")
    if data.endswith(b"\r\n"):
        data = data[:-2]
    headers = email.message.Message()
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        key, colon, value = line.partition(":")
        if colon:
            headers[key.strip()] = value.strip()
    name = headers.get_param("name", header="content-disposition")
    if not name:
        raise ResultFormatError("multipart part has no form field name")
    filename = headers.get_param("filename", header="content-disposition")
    return Part(
        name=str(name),
        filename=str(filename) if filename else None,
        content_type=headers.get_content_type(),
        data=data,
    )
