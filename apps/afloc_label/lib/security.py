"""Server-wide security settings the app applies to MONAI Label's FastAPI app at start.

- **CORS**: MONAI Label allows every origin *with credentials* unless
  ``MONAI_LABEL_CORS_ORIGINS`` is set. Here browsers may call the server only from its own origin
  unless origins are listed in ``MONAI_LABEL_CORS_ORIGINS`` or ``--conf cors_origins`` (comma-separated).
- **Authentication** (``MONAI_LABEL_AUTH_ENABLE=true``): MONAI Label 0.8.5 decodes tokens without
  naming the allowed algorithms, which PyJWT 2 refuses for every token, so its own check lets
  nobody in. :func:`install_auth` replaces that dependency (FastAPI ``dependency_overrides``) with
  one that verifies the signature against the realm's public key with the algorithms of
  ``--conf auth_algorithms`` (default ``RS256``; symmetric ``HS*`` are refused), requires ``exp``
  and maps the token's roles as MONAI Label does. ``POST /reload`` gets the admin role check it lacks.
- **Binding**: ``monailabel start_server`` binds 0.0.0.0 unless told otherwise. :func:`check_bind_address`
  refuses any address but loopback unless ``--conf allow_remote true`` is given, and warns when
  that is done without authentication.
- **Logs**: report text (clinical, possibly identifying) that MONAI Label's endpoints log at INFO
  is replaced by its length (:class:`ReportRedactor`).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import sys
from typing import Any, Iterable, Mapping, Optional, Sequence

from afloc_models.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "ReportRedactor",
    "bind_address",
    "check_bind_address",
    "configure_cors",
    "install",
    "install_auth",
    "install_log_redaction",
    "verify_token",
]

_ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def _conf_list(value: Optional[str]) -> list[str]:
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def _conf_bool(conf: Mapping[str, str], key: str) -> bool:
    from lib.params import parse_bool

    try:
        return parse_bool(conf.get(key), key, False)
    except Exception:
        raise ConfigError(f"--conf {key} must be true or false, got {conf.get(key)!r}") from None


# ---------------------------------------------------------------------- CORS
def configure_cors(app: Any, conf: Mapping[str, str]) -> list[str]:
    """Restrict the CORS middleware's origins; returns the origins allowed."""
    from monailabel.config import settings
    from starlette.middleware.cors import CORSMiddleware

    if settings.MONAI_LABEL_CORS_ORIGINS:
        origins = [str(o).rstrip("/") for o in settings.MONAI_LABEL_CORS_ORIGINS]
    else:
        origins = [o.rstrip("/") for o in _conf_list(conf.get("cors_origins"))]
    if "*" in origins:
        raise ConfigError("--conf cors_origins may not be '*': list the web origins that may call this server")
    for middleware in app.user_middleware:
        if getattr(middleware, "cls", None) is CORSMiddleware:
            options = getattr(middleware, "kwargs", None)
            if options is None:
                options = middleware.options  # older Starlette
            options["allow_origins"] = origins
            options.pop("allow_origin_regex", None)
    if getattr(app, "middleware_stack", None) is not None:
        app.middleware_stack = app.build_middleware_stack()
    return origins


# ---------------------------------------------------------------------- authentication
def _algorithms(conf: Mapping[str, str]) -> list[str]:
    algorithms = _conf_list(conf.get("auth_algorithms")) or ["RS256"]
    bad = [a for a in algorithms if a not in _ALLOWED_ALGORITHMS]
    if bad:
        raise ConfigError(
            f"--conf auth_algorithms: {', '.join(bad)} not accepted (public-key algorithms only: "
            f"{', '.join(_ALLOWED_ALGORITHMS)})"
        )
    return algorithms


def verify_token(token: str, public_key: str, algorithms: Sequence[str]) -> Any:
    """The MONAI Label ``User`` a signed, unexpired token stands for (raises ``jwt.InvalidTokenError``)."""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import User

    payload = jwt.decode(
        token, public_key, algorithms=list(algorithms), options={"verify_aud": False, "require": ["exp"]}
    )
    roles: Any = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    username = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not isinstance(username, str) or not username:
        raise jwt.InvalidTokenError(f"the token has no '{settings.MONAI_LABEL_AUTH_TOKEN_USERNAME}' claim")
    return User(
        username=username,
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=[r for r in roles if isinstance(r, str)] if isinstance(roles, list) else [],
    )


def install_auth(app: Any, conf: Mapping[str, str]) -> bool:
    """With auth on: verified tokens for every stock route and an admin check on ``/reload``."""
    from monailabel.config import settings

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return False
    import jwt
    import requests
    from fastapi import Depends, HTTPException
    from monailabel.endpoints.user import auth

    algorithms = _algorithms(conf)

    async def current_user(token: str = Depends(auth.oauth2_scheme)) -> Any:
        try:
            key = auth.get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        except (requests.RequestException, KeyError, ValueError) as exc:
            raise HTTPException(
                status_code=503,
                detail=f"cannot read the identity provider's public key from MONAI_LABEL_AUTH_REALM_URI ({type(exc).__name__})",
            ) from None
        try:
            return verify_token(token, key, algorithms)
        except jwt.InvalidTokenError as exc:
            raise HTTPException(
                status_code=401, detail=f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from None

    app.dependency_overrides[auth.get_current_user] = current_user
    _protect_reload(app)
    logger.info("authentication on: tokens verified with %s against %s", ",".join(algorithms),
                settings.MONAI_LABEL_AUTH_REALM_URI)
    return True


def _protect_reload(app: Any) -> None:
    """Replace MONAI Label's ``POST /reload`` (no auth dependency) by one that needs the admin role."""
    from fastapi import Depends
    from fastapi.routing import APIRoute
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import RBAC
    from monailabel.interfaces.utils.app import clear_cache

    def reload() -> dict:
        clear_cache()
        return {}

    from lib.route_override import replace_route

    replace_route(app, "/reload", "POST", APIRoute(
        "/reload", reload, methods=["POST"], include_in_schema=False,
        dependencies=[Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))],
        dependency_overrides_provider=app,  # the token check of install_auth applies here too
    ))


# ---------------------------------------------------------------------- binding
def bind_address(argv: Sequence[str]) -> Optional[str]:
    """The ``--host`` a ``monailabel start_server`` command line binds (its default 0.0.0.0), else None."""
    args = list(argv)
    if "start_server" not in args:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--host", default="0.0.0.0")
    known, _ = parser.parse_known_args(args[args.index("start_server") + 1:])
    return known.host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_address(conf: Mapping[str, str], argv: Sequence[str] = sys.argv) -> Optional[str]:
    """Refuse a non-loopback bind without ``--conf allow_remote true``; returns the address."""
    from monailabel.config import settings

    host = bind_address(argv)
    if host is None or _is_loopback(host):
        return host
    if not _conf_bool(conf, "allow_remote"):
        raise ConfigError(
            f"refusing to listen on {host}: every computer that reaches this address could use the server. "
            "Use --host 127.0.0.1, or enable authentication (MONAI_LABEL_AUTH_ENABLE=true) and TLS, then "
            "opt in with --conf allow_remote true (see docs/security.md)"
        )
    if not settings.MONAI_LABEL_AUTH_ENABLE:
        logger.warning(
            "listening on %s WITHOUT authentication (--conf allow_remote true): anyone who reaches it can read "
            "the datastore, upload data and start training; see docs/security.md", host,
        )
    return host


# ---------------------------------------------------------------------- logs
_REPORT_VALUE = re.compile(r"""(?P<key>["']report["']\s*:\s*)(?P<value>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""", re.S)


class ReportRedactor(logging.Filter):
    """Replaces ``"report": "<text>"`` in log messages by the text's length."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        if "report" not in message:
            return True
        redacted = _REPORT_VALUE.sub(lambda m: f"{m.group('key')}'<report: {len(m.group('value')) - 2} characters>'", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction(loggers: Iterable[logging.Logger] = ()) -> None:
    """Add :class:`ReportRedactor` to every handler of the root logger and of configured loggers."""
    seen: set[int] = set()
    targets = [logging.getLogger(), *loggers]
    targets += [l for l in logging.Logger.manager.loggerDict.values() if isinstance(l, logging.Logger)]
    for log in targets:
        for handler in log.handlers:
            if id(handler) in seen or any(type(f).__name__ == "ReportRedactor" for f in handler.filters):
                continue
            seen.add(id(handler))
            handler.addFilter(ReportRedactor())


def install(app: Any, conf: Mapping[str, str]) -> None:
    """Apply everything in this module to MONAI Label's FastAPI ``app``."""
    from lib import route_guard

    check_bind_address(conf)
    route_guard.set_allowed_origins(configure_cors(app, conf))
    install_auth(app, conf)
    install_log_redaction()
