"""The module's network jobs, run in a separate Python process (see :class:`.tasks.SubprocessTask`).

Usage: ``python worker.py <folder>/job.pickle``. The job file holds ``{"job": name, "args": {...}}``;
the worker writes ``progress.json`` while it runs and ``result.pickle`` at the end:
``{"ok": True, "value": ...}`` or ``{"ok": False, "type": <AFLocClientError subclass name>,
"message": ...}``. Errors that are not client errors (bugs) are logged with their traceback to the
process output (``worker.log``) and reported as ``WorkerError``.

Jobs (each takes ``server`` = ``{"url", "token", "timeout"}`` in its args):

- ``connect``: ``check_connection`` -> :class:`.client.ServerInfo` (raises
  :class:`.errors.AuthenticationRequiredError` when the server wants a login and none was given);
- ``login``: ``{"username", "password"}`` -> access token;
- ``localize``: :func:`.workflow.localize` -> :class:`.workflow.Localization`;
- ``save``: :func:`.workflow.save_review` -> the server's reply;
- ``train`` / ``stop_training``: :func:`.workflow.train` / ``client.stop_training``.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

if __name__ == "__main__" and not __package__:
    # Run as a script: import the package from the folder above (never this folder, whose module
    # names such as ``errors`` or ``tasks`` must not shadow anything).
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from AFLocLib.worker import main

    sys.exit(main(sys.argv[1:]))

from . import workflow
from .cancel import CancelToken
from .client import AFLocClient
from .errors import AFLocClientError, AuthenticationRequiredError
from .tasks import TaskContext


class FileTaskContext(TaskContext):
    """A :class:`TaskContext` that also publishes each progress report to a JSON file."""

    def __init__(self, path: Path):
        super().__init__(CancelToken())
        self._path = path

    def report(self, message: str, fraction: float | None = None) -> None:
        super().report(message, fraction)
        progress = self.progress
        _write_atomically(self._path, json.dumps({"message": progress.message, "fraction": progress.fraction}).encode())


def _client(args: dict[str, Any]) -> AFLocClient:
    server = args["server"]
    return AFLocClient(server["url"], timeout=float(server.get("timeout", 30.0)), token=server.get("token"))


def _connect(args: dict[str, Any], context: TaskContext) -> Any:
    client = _client(args)
    context.report("Connecting...", None)
    if not client.token and client.auth_enabled(cancel=context.cancel):
        raise AuthenticationRequiredError(client.url, "authentication is enabled on this server")
    return client.check_connection(cancel=context.cancel)


def _login(args: dict[str, Any], context: TaskContext) -> str:
    client = _client(args)
    context.report("Logging in...", None)
    return client.login(args["username"], args["password"], cancel=context.cancel)


def _localize(args: dict[str, Any], context: TaskContext) -> workflow.Localization:
    return workflow.localize(
        _client(args), args["image"], args["prompt_text"], args["consent"], args["work_dir"],
        args.get("threshold"), args.get("existing_names", ()), context,
    )


def _save(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    return workflow.save_review(
        _client(args), args["image_id"], args["path"], args["final"], args.get("localization"), context
    )


def _train(args: dict[str, Any], context: TaskContext) -> Any:
    return workflow.train(_client(args), args.get("params"), context=context, poll_seconds=args.get("poll_seconds", 2.0))


def _stop_training(args: dict[str, Any], context: TaskContext) -> Any:
    return _client(args).stop_training(cancel=context.cancel)


JOBS: dict[str, Callable[[dict[str, Any], TaskContext], Any]] = {
    "connect": _connect,
    "login": _login,
    "localize": _localize,
    "save": _save,
    "train": _train,
    "stop_training": _stop_training,
}


def run_job(job_file: Path) -> dict[str, Any]:
    """Run the job described in ``job_file``; returns what is written to ``result.pickle``."""
    folder = job_file.parent
    try:
        with open(job_file, "rb") as handle:
            spec = pickle.load(handle)
        job = JOBS[spec["job"]]
        return {"ok": True, "value": job(spec["args"], FileTaskContext(folder / "progress.json"))}
    except AFLocClientError as exc:
        return {"ok": False, "type": type(exc).__name__, "message": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a bug: keep the traceback in the log, report one line
        traceback.print_exc()
        return {"ok": False, "type": "WorkerError", "message": f"internal error in the AFLoc worker: {type(exc).__name__}: {exc}"}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: worker.py <job folder>/job.pickle", file=sys.stderr)
        return 2
    job_file = Path(argv[0])
    result = run_job(job_file)
    _write_atomically(job_file.parent / "result.pickle", pickle.dumps(result, protocol=4))
    return 0


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(path.name + ".part")
    with open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
