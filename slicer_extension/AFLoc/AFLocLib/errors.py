"""Errors the AFLoc Slicer module shows to its user.

Every problem a user can cause or meet (server down, wrong URL, a server that is not AFLoc Label,
an image sent without consent, a request the server refuses, a cancelled run) raises a subclass of
:class:`AFLocClientError` whose message says what went wrong and what to check. The module shows
the message in a dialog; tracebacks are for bugs only.

This package talks to the server over HTTP and imports nothing from the server side, so these
classes mirror, but do not derive from, ``afloc_models.errors``.
"""

from __future__ import annotations


class AFLocClientError(Exception):
    """Base class for every error the AFLoc client reports to its user."""


class ServerUnreachableError(AFLocClientError):
    """Nothing answers at the server URL (server down, wrong host or port, timeout)."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot reach the AFLoc Label server at {url}: {reason}. "
            "Check that the server is running and that the URL (host and port) is right."
        )


class NotAFLocServerError(AFLocClientError):
    """Something answers at the URL, but it is not a MONAI Label server with the AFLoc model."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"the server at {url} is not an AFLoc Label server: {reason}")


class ServerError(AFLocClientError):
    """The server answered a request with an HTTP error."""

    def __init__(self, method: str, path: str, status: int, detail: str):
        self.method = method
        self.path = path
        self.status = status
        self.detail = detail
        super().__init__(f"{method} {path} failed with HTTP {status}: {detail}")


class AuthenticationRequiredError(AFLocClientError):
    """The server has authentication enabled and refused the request (no token, or an expired one)."""

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(
            f"the AFLoc Label server at {url} requires you to log in ({reason}). "
            "Enter your user name and password in the module's Settings section and press Log in."
        )


class ResultFormatError(AFLocClientError):
    """A reply or a result file does not have the shape the client expects."""


class ConsentRequiredError(AFLocClientError):
    """An image would leave this computer but the user has not agreed to upload it."""


class PromptInputError(AFLocClientError):
    """The prompt text holds no usable finding."""


class OperationCancelledError(AFLocClientError):
    """The user cancelled the running request."""

    def __init__(self, what: str = "the request"):
        super().__init__(f"{what} was cancelled")
