"""Reports, training and drafts from a PACS, run inside the private network namespace of the e2e runner.

Usage (by ``tests/browser/run_in_netns.sh`` with ``AFLOC_NETNS_CHECK`` set to this file):
``python pacs_checks.py SERVER_URL DICOMWEB_URL OUT_DIR WORKDIR``

Orthanc holds the CR/DX images and SR files that ``tests/test_pacs.py`` wrote; the server reads
them over DICOMweb. Every reply (status and body) goes to ``OUT_DIR/pacs.json``; the test asserts
on it. Steps: image info of every image series; the background drafting job; the review
strategy; two training runs through ``/train`` (with the image cache listed before and after the
second); ``afloc-train --data DICOMWEB_URL`` from the command line; the CLI's own cache reused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

TIMEOUT_S = 300


def wait_for(condition, timeout_s: float, interval_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    return None


def image_series(dicomweb: str) -> list[dict]:
    found = []
    for modality in ("CR", "DX"):
        for item in requests.get(f"{dicomweb}/series", params={"Modality": modality}, timeout=30).json():
            found.append({"series": item["0020000E"]["Value"][0], "study": item["0020000D"]["Value"][0], "modality": modality})
    return found


def cache_listing(workdir: Path) -> dict[str, float]:
    """``relative path -> mtime`` of every cached DICOM image file."""
    root = workdir / "dicom-cache"
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*.dcm")} if root.is_dir() else {}


def train(server: str, body: dict) -> dict:
    before = requests.get(f"{server}/info/", timeout=30).json()["models"]["afloc"]["model_version"]
    reply = requests.post(f"{server}/train/afloc_train", json=body, timeout=60)
    result = {"status": reply.status_code, "body": reply.text[:2000], "version_before": before}
    if reply.ok:
        def finished():
            stats = requests.get(f"{server}/info/", timeout=30).json().get("train_stats", {}).get("afloc_train", {})
            running = requests.get(f"{server}/train/", params={"check_if_running": "true"}, timeout=30).status_code == 200
            return stats if stats.get("status") in ("DONE", "ERROR", "STOPPED") and not running else None

        time.sleep(3)
        result["stats"] = wait_for(finished, TIMEOUT_S, 2.0)
    result["version_after"] = requests.get(f"{server}/info/", timeout=30).json()["models"]["afloc"]["model_version"]
    return result


def main(server: str, dicomweb: str, out_dir: str, workdir: str) -> int:
    out, work = Path(out_dir), Path(workdir)
    results: dict = {"series": image_series(dicomweb)}

    # 1. Each image's report and where it came from.
    results["info"] = {}
    for entry in results["series"]:
        reply = requests.get(f"{server}/datastore/image/info", params={"image": entry["series"]}, timeout=60)
        results["info"][entry["series"]] = {"status": reply.status_code, "body": reply.json() if reply.ok else reply.text}

    # 2. A report set through the API wins over the SR (then is removed again).
    first = results["series"][0]["series"]
    put = requests.put(f"{server}/datastore/image/info", params={"image": first},
                       data={"info": json.dumps({"report": "IMPRESSION: corrected by hand."})}, timeout=120)
    got = requests.get(f"{server}/datastore/image/info", params={"image": first}, timeout=60)
    results["put_info"] = {"status": put.status_code, "body": put.text[:500], "after": got.json() if got.ok else got.text}
    requests.put(f"{server}/datastore/image/info", params={"image": first}, data={"info": json.dumps({"report": ""})}, timeout=120)

    # 3. Draft every image with a report, in the background; then again (nothing to redo).
    started = requests.post(f"{server}/afloc/draft", timeout=60)
    results["draft_start"] = {"status": started.status_code, "body": started.json() if started.ok else started.text}
    results["draft"] = wait_for(
        lambda: (lambda s: s if not s.get("running") else None)(requests.get(f"{server}/afloc/draft", timeout=30).json()),
        TIMEOUT_S,
    )
    results["draft_labels"] = {}
    for entry in results["series"]:
        reply = requests.get(f"{server}/datastore/label/info", params={"label": entry["series"], "tag": "afloc_draft"}, timeout=60)
        results["draft_labels"][entry["series"]] = reply.json() if reply.ok else None
    requests.post(f"{server}/afloc/draft", timeout=60)
    results["draft_again"] = wait_for(
        lambda: (lambda s: s if not s.get("running") else None)(requests.get(f"{server}/afloc/draft", timeout=30).json()),
        TIMEOUT_S,
    )

    # 4. Next sample for review.
    reply = requests.post(f"{server}/activelearning/afloc_review", timeout=120)
    results["next_sample"] = {"status": reply.status_code, "body": reply.json() if reply.ok else reply.text}

    # 5. Training through /train in DICOMweb mode, twice; the cache must not be downloaded again.
    results["cache_before_training"] = cache_listing(work)
    results["train_1"] = train(server, {"max_steps": 2, "max_minutes": 5, "init": "current"})
    results["cache_after_train_1"] = cache_listing(work)
    results["train_2"] = train(server, {"max_steps": 1, "max_minutes": 5, "init": "current"})
    results["cache_after_train_2"] = cache_listing(work)

    # 6. afloc-train --data <DICOMweb URL>, and its own cache reused by a second listing.
    cli_cache = out / "cli-cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "afloc_training.cli", "--data", dicomweb, "--out", str(out / "cli-run"),
         "--max-steps", "1", "--no-progress", "--device", "cpu", "--dicomweb-cache", str(cli_cache)],
        capture_output=True, text=True, timeout=TIMEOUT_S, env=env,
    )  # fmt: skip
    results["cli"] = {"returncode": done.returncode, "stdout": done.stdout[-2000:], "stderr": done.stderr[-3000:],
                      "checkpoint": (out / "cli-run" / "model.safetensors").is_file()}
    from afloc_training.dicomweb import SeriesCache, StudyReports, dicomweb_pairs, list_image_series, make_client

    client = make_client(dicomweb)
    cache = SeriesCache(client, next(cli_cache.iterdir()) if cli_cache.is_dir() and any(cli_cache.iterdir()) else cli_cache)
    reports = StudyReports(client, ttl_s=0)
    pairs = dicomweb_pairs(list_image_series(client), lambda s, st: (reports.lookup(st).text, reports.lookup(st).reason()),
                           lambda s, st: cache.folder(st, s), dicomweb)
    results["cli_cache_reuse"] = {"downloads": cache.downloads, "pairs": len(pairs), "skipped": dict(pairs.skipped),
                                  "warnings": pairs.warnings}

    (out / "pacs.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
