"""A cancel token shared between the UI thread and a background request.

The UI calls :meth:`CancelToken.cancel`; the worker checks :meth:`CancelToken.raise_if_cancelled`
between chunks and requests. A request blocked waiting for the server's first byte cannot check
anything, so the transport registers a callback that shuts its socket down: ``cancel()`` then
wakes the blocked read at once instead of after the timeout.
"""

from __future__ import annotations

import threading
from typing import Callable

from .errors import OperationCancelledError


class CancelToken:
    """Thread-safe, one-way cancel flag with wake-up callbacks."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Set the flag and run every registered callback (each at most once)."""
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except OSError:
                # The socket may already be closed by the worker: nothing left to wake.
                pass

    def raise_if_cancelled(self, what: str = "the request") -> None:
        if self._event.is_set():
            raise OperationCancelledError(what)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True as soon as the token is cancelled."""
        return self._event.wait(seconds)

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Register ``callback`` (runs at once if already cancelled); returns an unregister function."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._callbacks.append(callback)
        if already:
            try:
                callback()
            except OSError:
                pass

        def unregister() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return unregister
