"""Errors raised by AFLoc with a message that names the problem.

Every error a user can cause (bad file, empty report, bad prompt, foreign checkpoint) is an
``AFLocError``; the server maps these to HTTP 4xx with the message, the CLIs print the message
without a traceback.
"""

from __future__ import annotations


class AFLocError(ValueError):
    """Base class for user-facing AFLoc errors."""


class ImageReadError(AFLocError):
    """An image file is missing, unreadable, or has an unusable shape."""

    def __init__(self, path: object, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")


class EmptyReportError(AFLocError):
    """A report (or prompt) has no usable text after parsing."""


class PromptError(AFLocError):
    """A text prompt is empty, too long, or otherwise unusable."""


class CheckpointError(AFLocError):
    """A checkpoint folder or file is missing, corrupt, or from another model."""


class ConfigError(AFLocError):
    """A configuration value or file is invalid."""
