"""Inside the e2e network namespace (``tests/browser/run_in_netns.sh`` with ``AFLOC_NETNS_CHECK``):
draft every image of the Orthanc-backed server once and write ``OUT_DIR/draft-orthanc.json``.

Usage: ``python draft_orthanc_check.py SERVER_URL DICOMWEB_URL OUT_DIR WORKDIR`` (the runner's).
Part of ``benchmarks/draft_throughput.py --orthanc``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import requests


def main(server: str, dicomweb: str, out_dir: str, workdir: str) -> int:
    started = time.perf_counter()
    reply = requests.post(f"{server}/afloc/draft", timeout=120)
    reply.raise_for_status()
    status = {}
    while time.perf_counter() - started < 3000:
        status = requests.get(f"{server}/afloc/draft", timeout=60).json()
        if not status.get("running"):
            break
        time.sleep(2)
    status["wall_s_from_post"] = round(time.perf_counter() - started, 1)
    (Path(out_dir) / "draft-orthanc.json").write_text(json.dumps(status, indent=2), encoding="utf-8")
    return 0 if status.get("status") == "DONE" else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
