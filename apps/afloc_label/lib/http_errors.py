"""JSON error replies for the MONAI Label server, installed from the app without patching it.

MONAI Label 0.8.5 answers several client mistakes with a bare ``500 Internal Server Error``: an
unknown model (``MONAILabelException``), ``params`` that are not JSON (``JSONDecodeError``), an
infer call without an image, every exception an infer task raises, deeply nested JSON
(``RecursionError``), over-long upload file names (``ENAMETOOLONG``) and a refused login. :func:`install` registers
exception handlers on the server's FastAPI app so that these become 4xx replies with a JSON body
``{"detail": <message>, "error": <kind>}``; genuine server faults stay 500, but with a JSON body
too.

FastAPI builds its middleware stack (which captures the handler table) on the first ASGI event,
which is the lifespan start-up during which MONAI Label creates the app instance. The stack is
therefore rebuilt after the handlers are added; routes are looked up per request and need nothing.
"""

from __future__ import annotations

import errno
import json
import logging
from typing import Any

from afloc_models.errors import AFLocError

from lib.errors import http_status

logger = logging.getLogger(__name__)

__all__ = ["install"]

_INSTALLED_FLAG = "_afloc_error_handlers"

# 500s that stock MONAI Label endpoints raise for what are client mistakes: detail -> (status, message).
_STOCK_CLIENT_ERRORS: dict[str, tuple[int, str]] = {
    "Neither Image nor File not Session ID input is provided": (
        400,
        "no image given: pass ?image=<datastore image id>, upload a 'file', or give a session_id",
    ),
    "DICOM SEG format is not supported in a non-DICOM datastore": (
        400,
        "output=dicom_seg needs a DICOMweb datastore; with a local datastore ask for "
        "result_extension '.dcm' in params instead",
    ),
}


def _reply(status: int, message: str, kind: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"detail": message, "error": kind})


async def _afloc_error(request: Any, exc: AFLocError) -> Any:
    status = http_status(exc)
    logger.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
    return _reply(status, str(exc), type(exc).__name__)


async def _monailabel_error(request: Any, exc: Exception) -> Any:
    from monailabel.interfaces.exception import (
        ImageNotFoundException,
        LabelNotFoundException,
        MONAILabelError,
    )

    message = str(getattr(exc, "msg", "") or exc)
    error = getattr(exc, "error", None)
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        status = 404
    elif error == MONAILabelError.INVALID_INPUT:
        # MONAI Label raises INVALID_INPUT for unknown models/trainers/methods and missing names.
        status = 404 if "no model" in message.lower() or "no such" in message.lower() else 400
    else:
        status = 500
    logger.info("%s %s -> %d: %s", request.method, request.url.path, status, message)
    kind = error.value if error is not None and hasattr(error, "value") else type(exc).__name__
    return _reply(status, message, kind)


#: Appended to every "not valid JSON" reply: the usual cause on the command line.
CURL_HINT = (
    "If you used curl -F, note that curl cuts a -F value at ';' (it reads what follows as a field "
    "option): send JSON with --form-string 'params={...}' or -F 'params=<file.json' instead."
)


async def _json_error(request: Any, exc: json.JSONDecodeError) -> Any:
    return _reply(
        400, f"a JSON field of the request (e.g. 'params') is not valid JSON: {exc}. {CURL_HINT}", "JSONDecodeError"
    )


def _client_fault(exc: BaseException) -> tuple[int, str, str] | None:
    """Exceptions that only a client's input raises: (status, message, kind)."""
    if isinstance(exc, RecursionError):
        return 400, "a JSON value of the request is nested too deeply", "BadRequest"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return 400, "an uploaded file's name is too long for this server's file system: rename the file", "BadRequest"
    return None


async def _client_fault_error(request: Any, exc: Exception) -> Any:
    fault = _client_fault(exc)
    if fault is None:  # handled here, so ServerErrorMiddleware will not log it: do it now
        logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return await _unexpected_error(request, exc)
    logger.info("%s %s -> %d: %s", request.method, request.url.path, fault[0], fault[1])
    return _reply(*fault)


async def _upstream_http_error(request: Any, exc: Exception) -> Any:
    if request.url.path.rstrip("/").endswith("/auth/token"):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (400, 401, 403):
            return _reply(401, "the identity provider refused the user name or password", "Unauthorized")
        return _reply(502, f"the identity provider did not answer the login ({exc})", "BadGateway")
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return await _unexpected_error(request, exc)


async def _http_error(request: Any, exc: Any) -> Any:
    from fastapi.exception_handlers import http_exception_handler

    remapped = _STOCK_CLIENT_ERRORS.get(str(exc.detail)) if exc.status_code == 500 else None
    if remapped is not None:
        status, message = remapped
        return _reply(status, message, "BadRequest")
    return await http_exception_handler(request, exc)


async def _unexpected_error(request: Any, exc: Exception) -> Any:
    # Runs inside ServerErrorMiddleware, which logs the traceback after this reply is sent.
    fault = _client_fault(exc)  # raised in a middleware, outside the per-class handlers
    if fault is not None:
        return _reply(*fault)
    return _reply(500, f"internal server error ({type(exc).__name__}: {exc}); see the server log", "InternalError")


def install(app: Any) -> None:
    """Register the JSON error handlers on a FastAPI app (idempotent)."""
    import requests
    from monailabel.interfaces.exception import MONAILabelException
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if getattr(app, _INSTALLED_FLAG, False):
        return
    app.add_exception_handler(AFLocError, _afloc_error)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.add_exception_handler(json.JSONDecodeError, _json_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RecursionError, _client_fault_error)
    app.add_exception_handler(OSError, _client_fault_error)
    app.add_exception_handler(requests.HTTPError, _upstream_http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = app.build_middleware_stack()
    setattr(app, _INSTALLED_FLAG, True)
