"""Run a blocking job in the background and let the UI thread poll it.

Slicer's scene and widgets may only be touched from the main thread, so the module runs each
network job in the background and polls it from a ``QTimer``: the job reports progress through
:meth:`TaskContext.report`, the timer reads ``task.progress`` and, once ``task.done``, takes
``task.outcome()`` and updates the scene.

- :class:`SubprocessTask` (what the Slicer module uses): the job runs in a separate Python
  process (:mod:`.worker`). Slicer's embedded Python never releases the GIL while Qt's event loop
  idles, so a Python worker thread there only advances while the UI thread runs Python; a process
  does not share that GIL.
- :class:`BackgroundTask`: the same on a thread, for scripts and tests outside Slicer.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .cancel import CancelToken
from .errors import AFLocClientError, OperationCancelledError

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


# ---------------------------------------------------------------------- jobs in a separate process
class WorkerError(AFLocClientError):
    """A job failed inside the worker process for a reason that is not a user-facing client error."""


@dataclass(frozen=True)
class WorkerCommand:
    """What :class:`SubprocessTask` runs: ``python worker.py <job folder>/job.pickle``."""

    python: str
    script: str


def worker_script() -> str:
    """Path of :mod:`AFLocLib.worker`, runnable as a script by any Python that has numpy."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


class SubprocessTask:
    """Run an :mod:`AFLocLib.worker` job in its own Python process; poll it from the UI thread.

    Same interface as :class:`BackgroundTask` (``done``, ``progress``, ``outcome``, ``cancel``).
    Slicer's embedded Python keeps the GIL while Qt's event loop idles, so a worker *thread* would
    only run while the UI thread runs Python; a process has its own interpreter and never waits for
    the UI. Progress comes back through ``progress.json`` (rewritten atomically), the result or the
    error through ``result.pickle``, the worker's own output through ``worker.log``, all in a job
    folder that :meth:`outcome` deletes. :meth:`cancel` terminates the process at once.
    """

    def __init__(self, command: WorkerCommand, job: str, args: dict, folder: str, name: str | None = None):
        self.name = name or job
        self.folder = folder
        self._command = command
        self._job = job
        self._args = args
        self._process: subprocess.Popen | None = None
        self._cancelled = False
        self._finished: tuple[bool, object] | None = None

    def start(self) -> "SubprocessTask":
        os.makedirs(self.folder, exist_ok=True)
        spec = os.path.join(self.folder, "job.pickle")
        with open(spec, "wb") as handle:
            pickle.dump({"job": self._job, "args": self._args}, handle, protocol=4)
        self._log = open(os.path.join(self.folder, "worker.log"), "wb")
        try:
            self._process = subprocess.Popen(
                [self._command.python, self._command.script, spec],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                # PythonSlicer is a console program: no console window for it on Windows.
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0) if os.name == "nt" else 0,
            )
        except OSError as exc:
            self._log.close()
            raise WorkerError(f"cannot start the AFLoc worker ({self._command.python}): {exc}") from None
        return self

    @property
    def done(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def progress(self) -> Progress:
        try:
            with open(os.path.join(self.folder, "progress.json"), encoding="utf-8") as handle:
                data = json.load(handle)
            return Progress(str(data.get("message", "")), data.get("fraction"))
        except (OSError, ValueError):
            return Progress()

    def cancel(self) -> None:
        """Stop the job now (the process is terminated; a request in flight is abandoned)."""
        if self._process is not None and self._process.poll() is None:
            self._cancelled = True
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._log.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the process ends (scripts and tests; the UI polls :attr:`done`)."""
        if self._process is None:
            return False
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def outcome(self):
        """The job's return value, or raise its error; only once :attr:`done`. Removes the job folder."""
        if not self.done:
            raise RuntimeError(f"{self.name} is still running")
        if self._finished is None:
            self._finished = self._collect()
            self._log.close()
            shutil.rmtree(self.folder, ignore_errors=True)
        ok, value = self._finished
        if not ok:
            raise value  # type: ignore[misc]
        return value

    def _collect(self) -> tuple[bool, object]:
        if self._cancelled:
            return False, OperationCancelledError(self.name)
        try:
            with open(os.path.join(self.folder, "result.pickle"), "rb") as handle:
                result = pickle.load(handle)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError) as exc:
            self._log.flush()
            tail = _tail(os.path.join(self.folder, "worker.log"))
            return False, WorkerError(
                f"the AFLoc worker for '{self.name}' ended (exit code {self._process.returncode}) without a "
                f"result ({type(exc).__name__}); its last output: {tail or '(none)'}"
            )
        if result.get("ok"):
            return True, result.get("value")
        return False, _rebuild_error(result.get("type", ""), result.get("message", "unknown error"))


def _rebuild_error(type_name: str, message: str) -> AFLocClientError:
    """The worker's error as an instance of the same :mod:`.errors` class (so callers can tell them apart)."""
    from . import errors

    cls = getattr(errors, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, AFLocClientError)):
        cls = WorkerError if type_name == "WorkerError" else AFLocClientError
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return " | ".join(line.rstrip() for line in handle.readlines()[-lines:] if line.strip())
    except OSError:
        return ""
