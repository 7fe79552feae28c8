"""Shared fixtures: a real AFLoc Label server (``monailabel start_server``) on 127.0.0.1.

- ``afloc_checkpoint``: a small untrained AFLoc checkpoint (session; ``$AFLOC_TEST_CHECKPOINT``
  overrides it with an existing folder).
- ``make_datastore(folder, phantoms=4, dicom=True, extra=None)``: a small datastore of phantom
  radiographs (256 px) with reports, the real CR DICOM ``RG1_UNCI.dcm`` (pydicom-data, no report)
  and optional extra files ``{name: bytes}``.
- ``afloc_infer(url, model="afloc", image=None, params=None, output="all", file=None)``: one
  ``/infer`` call as the stock clients make it, split into ``status``, ``params``, ``label`` bytes.
- ``afloc_server`` / ``afloc_server_url``: one server for the whole session (a server takes
  about 7-10 s to start), with its own datastore and model folder under a temporary directory.
- ``start_afloc_server(studies=None, checkpoint=None, conf=None, env=None)``: a factory for
  further servers (their own model folder; custom studies, ``--conf`` or environment), all
  stopped at the end of the session.

Servers run in their own process group and are stopped by process-group id (they may have
started training subprocesses). Their logs are kept next to their datastore; a server that
fails to start raises with the log's tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "afloc_label"
#: Seconds a server may take from process start to answering ``/info/``.
SERVER_START_TIMEOUT_S = float(os.environ.get("AFLOC_TEST_SERVER_TIMEOUT", "120"))


def rg1_unci_path() -> Path:
    """The real CR chest radiograph shipped by pydicom-data (MONOCHROME1, 1955 x 1841).

    Looked up in the ``data_store`` package directly: pydicom<3's own lookup needs
    ``pkg_resources``, which recent setuptools no longer has.
    """
    import importlib.util

    spec = importlib.util.find_spec("data_store")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "RG1_UNCI.dcm"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("RG1_UNCI.dcm not found: install pydicom-data (a project dependency)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerHandle:
    """A running ``monailabel start_server`` process serving the AFLoc Label app."""

    url: str
    studies: Path
    model_dir: Path
    checkpoint: Optional[Path]
    log: Path
    process: subprocess.Popen = field(repr=False)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        pgid = self.process.pid  # started with start_new_session: its group id is its pid
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=15)


def start_server(
    studies: Path,
    checkpoint: Optional[Path],
    model_dir: Path,
    conf: Optional[Mapping[str, str]] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout_s: float = SERVER_START_TIMEOUT_S,
) -> ServerHandle:
    """Start the app on a free 127.0.0.1 port and wait until ``/info/`` answers."""
    import requests

    settings = {"model_dir": str(model_dir), **({"checkpoint": str(checkpoint)} if checkpoint else {})}
    settings.update(conf or {})
    log = Path(studies).parent / f"server-{Path(studies).name}-{int(time.time() * 1000)}.log"
    process_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    for attempt in range(2):  # the free port may be taken between probing and binding
        port = free_port()
        command = [
            sys.executable, "-m", "monailabel.main", "start_server",
            "--app", str(APP_DIR), "--studies", str(studies),
            "--host", "127.0.0.1", "--port", str(port),
        ]
        for key, value in settings.items():
            command += ["--conf", key, value]
        with log.open("ab") as sink:
            process = subprocess.Popen(
                command, cwd=str(REPO_ROOT), env=process_env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        handle = ServerHandle(f"http://127.0.0.1:{port}", Path(studies), Path(model_dir), checkpoint, log, process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and handle.alive():
            try:
                # 401: up, with authentication on (MONAI_LABEL_AUTH_ENABLE in ``env``)
                if requests.get(f"{handle.url}/info/", timeout=5).status_code in (200, 401):
                    return handle
            except requests.RequestException:
                pass
            time.sleep(0.25)
        handle.stop()
        if "address already in use" not in handle.log_tail().lower() or attempt:
            raise RuntimeError(f"AFLoc Label server did not start within {timeout_s:.0f} s; log:\n{handle.log_tail()}")
    raise AssertionError("unreachable")


def write_datastore(
    folder: Path,
    phantoms: int = 4,
    dicom: bool = True,
    extra: Optional[Mapping[str, bytes]] = None,
) -> Path:
    """A MONAI Label datastore folder: phantoms with reports, RG1_UNCI.dcm, extra files."""
    from afloc_training.phantoms import write_phantom_datastore

    folder.mkdir(parents=True, exist_ok=True)
    if phantoms:
        write_phantom_datastore(folder, n=phantoms, seed=0, size=256)
    if dicom:
        shutil.copy(rg1_unci_path(), folder / "RG1_UNCI.dcm")  # no report: its findings are not known
    for name, content in (extra or {}).items():
        (folder / name).write_bytes(content)
    return folder


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


#: ``trained_on`` of the test checkpoint (the server's /info shows it).
TEST_TRAINED_ON = "test: untrained, random weights"


@pytest.fixture(scope="session")
def afloc_checkpoint(tmp_path_factory) -> Path:
    """A small untrained AFLoc checkpoint folder (fixed seed, version ``test-base``)."""
    given = os.environ.get("AFLOC_TEST_CHECKPOINT")
    if given:
        return Path(given)
    import torch

    from afloc_models.model import AFLoc

    torch.manual_seed(0)
    return AFLoc("small").save_pretrained(
        tmp_path_factory.mktemp("afloc-ckpt") / "small",
        meta={"version": "test-base", "trained_on": TEST_TRAINED_ON},
    )


@pytest.fixture(scope="session")
def make_datastore() -> Callable[..., Path]:
    return write_datastore


@pytest.fixture(scope="session")
def start_afloc_server(tmp_path_factory, afloc_checkpoint) -> Iterator[Callable[..., ServerHandle]]:
    """Factory: ``start_afloc_server(studies=None, checkpoint=None, conf=None, env=None)``."""
    started: list[ServerHandle] = []

    def start(
        studies: Optional[Path] = None,
        checkpoint: Optional[Path] = None,
        conf: Optional[Mapping[str, str]] = None,
        env: Optional[Mapping[str, str]] = None,
    ) -> ServerHandle:
        root = tmp_path_factory.mktemp("afloc-server")
        if studies is None:
            studies = write_datastore(root / "datastore")
        handle = start_server(
            Path(studies), checkpoint or afloc_checkpoint, root / "model", conf=conf, env=env
        )
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="session")
def afloc_server(start_afloc_server) -> ServerHandle:
    """The session's shared server (4 phantoms + RG1_UNCI.dcm, untrained small checkpoint)."""
    return start_afloc_server()


@pytest.fixture(scope="session")
def afloc_server_url(afloc_server) -> str:
    return afloc_server.url


@dataclass
class InferReply:
    """An ``/infer`` reply split into its parts."""

    status: int
    params: dict
    label: Optional[bytes]
    filename: Optional[str]
    raw: object = field(repr=False, default=None)


def call_infer(
    url: str,
    model: str = "afloc",
    image: Optional[str] = None,
    params: Optional[dict] = None,
    output: str = "all",
    file: Optional[tuple[str, bytes]] = None,
    timeout: float = 120,
) -> InferReply:
    """``POST /infer/<model>`` with ``params`` as a multipart field (as the stock clients send it)."""
    import json

    import requests
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    query = {"output": output, **({"image": image} if image is not None else {})}
    files = {"params": (None, json.dumps(params or {}), "application/json")}
    if file is not None:
        files["file"] = (file[0], file[1], "application/octet-stream")
    reply = requests.post(f"{url}/infer/{model}", params=query, files=files, timeout=timeout)
    content_type = reply.headers.get("content-type", "")
    if reply.status_code != 200 or not content_type.startswith("multipart/"):
        body = reply.json() if content_type.startswith("application/json") else {}
        label = reply.content if reply.status_code == 200 and not content_type.startswith("application/json") else None
        return InferReply(reply.status_code, body if isinstance(body, dict) else {}, label, None, reply)
    parsed, label, filename = {}, None, None
    for part in MultipartDecoder(reply.content, content_type).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            parsed = json.loads(part.content)
        elif 'name="image"' in disposition:
            label = part.content
            filename = disposition.split("filename=")[-1].strip('"') if "filename=" in disposition else None
    return InferReply(reply.status_code, parsed, label, filename, reply)


@pytest.fixture(scope="session")
def afloc_infer() -> Callable[..., InferReply]:
    """``afloc_infer(url, model="afloc", image=None, params=None, output="all", file=None)``."""
    return call_infer
