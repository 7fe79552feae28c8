"""What the tests that run the whole stack share: what it needs and the launcher that runs it.

``tests/browser/run_in_netns.sh`` starts Orthanc, the AFLoc Label server and a Playwright script
(or, for the PACS test, a Python check) inside a private network namespace (``unshare -n``,
loopback only). The OHIF tests (``test_ohif_e2e``, ``test_ohif_panel``, ``test_ohif_panel_auth``)
and ``test_pacs`` each run one scenario through :func:`run_in_netns` and then check what it
wrote to its output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNNER = REPO_ROOT / "tests" / "browser" / "run_in_netns.sh"
DOCS_IMAGES = REPO_ROOT / "docs" / "images"


def missing_requirements(browser: bool = True) -> list[str]:
    """What this machine lacks for a run (empty when it has everything); ``browser=False``: a run
    of Orthanc and the server only, without Chromium and Playwright."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (for unshare -n)")
    for tool in ("unshare", "ip", "curl", *(("node",) if browser else ()), "Orthanc"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if browser and not Path("/usr/bin/chromium").exists():
        missing.append("/usr/bin/chromium")
    if not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
        missing.append("orthanc-dicomweb")
    if browser and not (REPO_ROOT / "tests" / "browser" / "node_modules" / "playwright-core").is_dir():
        missing.append("playwright-core (tests/browser/node_modules)")
    return missing


def require_stack(what: str, browser: bool = True) -> None:
    """Skip the calling test when the stack is missing; under CI (``CI`` set) fail instead."""
    missing = missing_requirements(browser)
    if missing:
        message = f"{what} needs {', '.join(missing)}: run scripts/install_system_deps.sh as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class BrowserRun:
    """How one ``run_in_netns.sh`` run ended (its files are in the output folder it was given)."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    def output_tail(self) -> str:
        return f"{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


def run_in_netns(
    out: Path, arguments: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None
) -> BrowserRun:
    """Run ``run_in_netns.sh OUT ARGUMENTS...`` with this interpreter as the server's Python.

    The run has its own process group: past ``timeout_s`` the whole stack (Orthanc, server,
    browser driver) is stopped, first with SIGTERM, then with SIGKILL.
    """
    full_env = {**os.environ, "AFLOC_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        ["unshare", "-n", "bash", str(RUNNER), str(out), *[str(a) for a in arguments]],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
        return BrowserRun(process.returncode, stdout, stderr, timed_out=False)
    except subprocess.TimeoutExpired:
        stdout, stderr = stop_group(process)
        return BrowserRun(process.returncode if process.returncode is not None else -9, stdout, stderr, timed_out=True)


def stop_group(process: subprocess.Popen) -> tuple[str, str]:
    """SIGTERM, then SIGKILL, to the process group of ``process``; what it printed meanwhile."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.communicate(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def server_log_tail(out: Path, lines: int = 40) -> str:
    """The last lines of the server's log in a run's output folder, or '' without one."""
    log = out / "server.log"
    if not log.is_file():
        return ""
    return "server log tail:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def read_result(path: Path) -> dict:
    """A scenario's result JSON, or {} when it wrote none."""
    return json.loads(path.read_text()) if path.is_file() else {}


def keep_artifacts(out: Path, artifacts: Path, scenario: str, doc_shots: Sequence[str]) -> None:
    """Copy a run's screenshots, JSON and logs to ``artifacts``; its ``<scenario>-<shot>.png``
    screenshots also to ``docs/images/ohif-<scenario>-<shot>.png`` when missing there or when
    ``AFLOC_UPDATE_DOCS_IMAGES=1`` (ordinary runs leave the tracked images alone)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.is_file() and path.suffix in (".png", ".json", ".log"):
            shutil.copyfile(path, artifacts / path.name)
    update = os.environ.get("AFLOC_UPDATE_DOCS_IMAGES") == "1"
    for name in doc_shots:
        source, target = out / f"{scenario}-{name}.png", DOCS_IMAGES / f"ohif-{scenario}-{name}.png"
        if source.is_file() and (update or not target.exists()):
            save_doc_image(source, target)


def save_doc_image(source: Path, target: Path) -> None:
    """A 256-colour copy for the docs (a quarter of the size; the tests read the originals)."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    Image.open(source).convert("RGB").quantize(256).save(temporary, format="PNG", optimize=True)
    os.replace(temporary, target)
