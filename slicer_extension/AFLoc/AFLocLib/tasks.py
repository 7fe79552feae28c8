"""Run a blocking job on a worker thread and let the UI thread poll it.

Slicer's scene and widgets may only be touched from the main thread, so the module runs each
network job through :class:`BackgroundTask` and polls it from a ``QTimer``: the job reports
progress through :meth:`TaskContext.report`, the timer reads :attr:`BackgroundTask.progress`
and, once :attr:`BackgroundTask.done`, takes :meth:`BackgroundTask.outcome` and updates the scene.
No callback ever runs on the worker thread against Qt objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .cancel import CancelToken
from .errors import OperationCancelledError

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """Latest progress: a message and a fraction in ``[0, 1]`` (None when unknown)."""

    message: str = ""
    fraction: float | None = None


class TaskContext:
    """Handed to the job: its cancel token and a thread-safe progress reporter."""

    def __init__(self, cancel: CancelToken):
        self.cancel = cancel
        self._lock = threading.Lock()
        self._progress = Progress()

    def report(self, message: str, fraction: float | None = None) -> None:
        """Publish progress; also the job's cancellation point between steps."""
        with self._lock:
            self._progress = Progress(message, None if fraction is None else min(max(fraction, 0.0), 1.0))
        self.cancel.raise_if_cancelled(message.rstrip(". ").lower() or "the task")

    @property
    def progress(self) -> Progress:
        with self._lock:
            return self._progress


class BackgroundTask(Generic[T]):
    """``job(context) -> T`` on a daemon thread; poll :attr:`done`, then call :meth:`outcome`."""

    def __init__(self, job: Callable[[TaskContext], T], name: str = "AFLoc task"):
        self.name = name
        self.cancel_token = CancelToken()
        self.context = TaskContext(self.cancel_token)
        self._job = job
        self._result: T | None = None
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "BackgroundTask[T]":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self._result = self._job(self.context)
        except BaseException as exc:  # noqa: BLE001 - handed to the UI thread by outcome()
            self._error = exc
        finally:
            self._finished.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    @property
    def progress(self) -> Progress:
        return self.context.progress

    @property
    def cancelled(self) -> bool:
        return isinstance(self._error, OperationCancelledError)

    def cancel(self) -> None:
        """Ask the job to stop; it ends at its next check, or at once if blocked on the network."""
        self.cancel_token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (for scripts and tests; the UI polls :attr:`done` instead)."""
        return self._finished.wait(timeout)

    def outcome(self) -> T:
        """The job's return value, or re-raise its exception; only once :attr:`done`."""
        if not self.done:
            raise RuntimeError(f"{self.name} is still running")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
