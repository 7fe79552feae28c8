"""Round-trip latency of the AFLoc Label server on the real CR DICOM. Prints JSON.

Times what a viewer waits for: ``POST /infer/afloc`` with the prompt in a multipart ``params``
field until the label file (multipart reply: params + ``.nrrd``) is fully received.

- ``first_prompt``: one prompt on a DICOM the server has not seen (decode, image encoder, text
  encoder, heatmap on the 1955 x 1841 grid, label and heatmap files). Each repeat uses another
  copy of ``RG1_UNCI.dcm`` with one pixel changed, so no cache can answer it.
- ``further_prompt``: a never-seen prompt on an image already encoded (text encoder, heatmap,
  files).
- ``*_no_heatmap``: the same with ``save_heatmap: false`` (no float heatmap written into the
  datastore), which is what an interactive client re-prompting quickly can ask for.

The server is started here (``monailabel start_server`` on 127.0.0.1) with a temporary
datastore and the demo checkpoint, unless ``--url`` points at a running one (then ``--image``
names a DICOM there and only ``further_prompt`` is meaningful after the first request).

Usage::

    python benchmarks/server_latency.py                       # demo/checkpoint, 10 repeats
    python benchmarks/server_latency.py --checkpoint CKPT --repeats 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

TARGET_FIRST_MS = 700
TARGET_FURTHER_MS = 150
_FINDINGS = (
    "pleural effusion", "pneumothorax", "lower lobe opacity", "upper zone nodule", "consolidation",
    "atelectasis", "perihilar opacity", "apical scarring", "airspace disease", "pleural thickening",
)
#: 60 distinct prompts: every measured request sees a prompt the server has not encoded yet.
PROMPTS = [f"{size} {side} {finding}" for size in ("small", "moderate", "large") for side in ("left", "right")
           for finding in _FINDINGS]


def summarize(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p90_ms": round(1000 * ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))], 1),
        "min_ms": round(1000 * ordered[0], 1),
        "n": len(ordered),
    }


def rg1_unci() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("data_store")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / "data" / "RG1_UNCI.dcm"
        if candidate.is_file():
            return candidate
    raise SystemExit("RG1_UNCI.dcm not found: install pydicom-data")


def write_variants(folder: Path, n: int) -> list[str]:
    """``n`` copies of RG1_UNCI.dcm, each with one different pixel: distinct images to every cache."""
    import pydicom

    ds = pydicom.dcmread(str(rg1_unci()))
    pixels = ds.pixel_array.copy()
    ids = []
    for i in range(n):
        variant = pixels.copy()
        variant[100 + i, 100] = (int(variant[100 + i, 100]) + 1) % 2**15
        ds.PixelData = variant.tobytes()
        image_id = f"rg1_variant_{i:03d}"
        ds.save_as(str(folder / f"{image_id}.dcm"))
        ids.append(image_id)
    return ids


def start_server(studies: Path, checkpoint: Path, model_dir: Path, log: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(REPO_ROOT / "apps" / "afloc_label"),
               "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
               "--conf", "checkpoint", str(checkpoint), "--conf", "model_dir", str(model_dir)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=str(REPO_ROOT), env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{url}/info/", timeout=5).ok:
                return url, process
        except requests.RequestException:
            pass
        time.sleep(0.25)
    stop(process)
    raise SystemExit(f"server did not start; log:\n{log.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def infer(session: requests.Session, url: str, image: str, prompt: str, heatmap: bool) -> tuple[float, dict[str, Any]]:
    params = {"prompt": prompt, "result_extension": ".nrrd", "result_dtype": "uint8", "save_heatmap": heatmap}
    start = time.perf_counter()
    reply = session.post(f"{url}/infer/afloc", params={"image": image, "output": "all"},
                         files={"params": (None, json.dumps(params))}, timeout=300)
    body = reply.content  # the whole label file has arrived
    elapsed = time.perf_counter() - start
    if reply.status_code != 200 or not reply.headers.get("content-type", "").startswith("multipart/"):
        raise SystemExit(f"infer failed ({reply.status_code}): {body[:500]!r}")
    server = _server_latencies(body, reply.headers["content-type"])
    return elapsed, server


def _server_latencies(body: bytes, content_type: str) -> dict[str, Any]:
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    for part in MultipartDecoder(body, content_type).parts:
        if b'name="params"' in part.headers.get(b"Content-Disposition", b""):
            return json.loads(part.content).get("latencies", {})
    return {}


def run(url: str, first_images: list[str], further_image: str, repeats: int) -> dict[str, Any]:
    session = requests.Session()
    infer(session, url, further_image, "warm up", True)  # model load, allocator, first-call costs
    results: dict[str, Any] = {}
    if 4 * repeats > len(PROMPTS):
        raise SystemExit(f"--repeats is at most {len(PROMPTS) // 4} (each measurement needs an unseen prompt)")
    prompts = iter(PROMPTS)
    for label, heatmap, images in (("first_prompt", True, first_images[:repeats]),
                                   ("first_prompt_no_heatmap", False, first_images[repeats:2 * repeats])):
        times, server = [], []
        for image in images:
            elapsed, latencies = infer(session, url, image, next(prompts), heatmap)
            times.append(elapsed)
            server.append(latencies)
        results[label] = {**summarize(times), "server_infer_p50_ms": _p50(server, "infer"),
                          "server_write_p50_ms": _p50(server, "write")}
    for label, heatmap in (("further_prompt", True), ("further_prompt_no_heatmap", False)):
        times, server = [], []
        for _ in range(repeats):
            elapsed, latencies = infer(session, url, further_image, next(prompts), heatmap)
            times.append(elapsed)
            server.append(latencies)
        results[label] = {**summarize(times), "server_infer_p50_ms": _p50(server, "infer"),
                          "server_write_p50_ms": _p50(server, "write")}
    return results


def _p50(latencies: list[dict[str, Any]], key: str) -> Optional[float]:
    values = [d[key] for d in latencies if key in d]
    return round(1000 * statistics.median(values), 1) if values else None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=REPO_ROOT / "demo" / "checkpoint")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--url", default=None, help="use this running server instead of starting one")
    parser.add_argument("--image", default="RG1_UNCI", help="with --url: the DICOM image id to use")
    args = parser.parse_args(argv)

    info: dict[str, Any] = {
        "benchmark": "server_latency",
        "image": "RG1_UNCI.dcm (CR, 1955 x 1841)",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_1m_before": os.getloadavg()[0]},
        "targets_ms": {"first_prompt_p50": TARGET_FIRST_MS, "further_prompt_p50": TARGET_FURTHER_MS},
    }
    if args.url:
        info["results"] = run(args.url, [args.image] * (2 * args.repeats), args.image, args.repeats)
    else:
        if not (args.checkpoint / "model.safetensors").is_file():
            raise SystemExit(f"no checkpoint at {args.checkpoint}: run `python scripts/build_demo.py` or pass --checkpoint")
        work = Path(tempfile.mkdtemp(prefix="afloc-bench-"))
        try:
            studies = work / "datastore"
            studies.mkdir()
            ids = write_variants(studies, 2 * args.repeats + 1)
            url, process = start_server(studies, args.checkpoint.resolve(), work / "model", work / "server.log")
            try:
                info["checkpoint"] = requests.get(f"{url}/info/", timeout=30).json()["models"]["afloc"]["model_version"]
                info["results"] = run(url, ids[1:], ids[0], args.repeats)
            finally:
                stop(process)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    info["machine"]["load_avg_1m_after"] = os.getloadavg()[0]
    results = info["results"]
    info["meets_targets"] = {
        "first_prompt": results["first_prompt"]["p50_ms"] <= TARGET_FIRST_MS,
        "further_prompt": results["further_prompt"]["p50_ms"] <= TARGET_FURTHER_MS,
    }
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
