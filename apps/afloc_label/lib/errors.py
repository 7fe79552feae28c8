"""Request errors of the AFLoc Label app and the HTTP status each user-facing error maps to.

Everything a client can get wrong (an unknown model or image, a path in an image id, an empty
prompt, a threshold outside the heatmap's range, an unreadable file) is an
:class:`~afloc_models.errors.AFLocError`; :func:`http_status` picks its status code and
``lib.http_errors`` turns it into a JSON reply instead of MONAI Label's bare 500.
"""

from __future__ import annotations

from afloc_models.errors import (
    AFLocError,
    CheckpointError,
    ConfigError,
    EmptyReportError,
    ImageReadError,
    PromptError,
)

__all__ = [
    "BadRequestError",
    "ModelUnavailableError",
    "NotFoundError",
    "http_status",
]


class BadRequestError(AFLocError):
    """A request parameter is missing, malformed or out of range (HTTP 400)."""

    status_code = 400


class NotFoundError(BadRequestError):
    """The request names a model, image or label that does not exist (HTTP 404)."""

    status_code = 404


class ModelUnavailableError(AFLocError):
    """No usable checkpoint is being served right now (HTTP 503)."""

    status_code = 503


# Errors raised by afloc_models; the first matching class in this order wins.
_STATUS_BY_CLASS: tuple[tuple[type[AFLocError], int], ...] = (
    (ImageReadError, 422),  # the file is there but cannot be used as an image
    (CheckpointError, 503),  # the served model is missing or broken: not the client's fault
    (PromptError, 400),
    (EmptyReportError, 400),
    (ConfigError, 400),
)


def http_status(error: AFLocError) -> int:
    """The HTTP status code for a user-facing error (400 when nothing more specific fits)."""
    code = getattr(error, "status_code", None)
    if isinstance(code, int):
        return code
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    return 400
