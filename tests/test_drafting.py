"""Report-driven drafts on a local datastore: the review order, and the drafting job on a real server.

The DICOMweb (Orthanc) path of the same job is in ``tests/test_pacs.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_DIR = REPO_ROOT / "apps" / "afloc_label"
if str(APP_DIR) not in sys.path:
    sys.path.append(str(APP_DIR))


def _png(path: Path, value: int = 0) -> Path:
    from PIL import Image

    Image.fromarray(np.full((32, 32), value, np.uint8)).save(path)
    return path


def test_review_order_most_uncertain_draft_first_then_reports_without_draft(tmp_path):
    from lib.datastore import AFLocDatastore
    from lib.strategies import AFLocReview, review_order

    studies = tmp_path / "studies"
    studies.mkdir()
    for name in ("a_low", "b_high", "c_final", "d_report_only", "e_no_report", "f_hand_draft", "g_report_only"):
        _png(studies / f"{name}.png")
        if name != "e_no_report":
            (studies / f"{name}.txt").write_text("Small right pleural effusion.", encoding="utf-8")
    datastore = AFLocDatastore(str(studies), extensions=["*.png"], auto_reload=False)
    label = _png(tmp_path / "label.png", 1)
    datastore.save_label("a_low", str(label), "afloc_draft", {"source": "report", "uncertainty": 0.2})
    datastore.save_label("b_high", str(label), "afloc_draft", {"source": "report", "uncertainty": 0.9})
    datastore.save_label("c_final", str(label), "afloc_draft", {"source": "report", "uncertainty": 1.0})
    datastore.save_label("c_final", str(label), "final", {})
    datastore.save_label("f_hand_draft", str(label), "afloc_draft", {"model": "afloc"})  # made by hand: not in the queue

    drafted, undrafted = review_order(datastore)
    assert drafted == [("b_high", 0.9), ("a_low", 0.2)]
    assert undrafted == ["d_report_only", "g_report_only"]
    first = AFLocReview()({"strategy": "afloc_review"}, datastore)
    assert first["id"] == "b_high" and first["reason"] == "draft_waits_for_review"
    assert first["drafts_waiting"] == 2 and first["reported_without_draft"] == 2
    # Reviewing the drafts (final labels) moves the queue on to reported images without a draft.
    datastore.save_label("b_high", str(label), "final", {})
    datastore.save_label("a_low", str(label), "final", {})
    nxt = AFLocReview()({"strategy": "afloc_review"}, datastore)
    assert nxt["id"] == "d_report_only" and nxt["reason"] == "report_without_draft"


@pytest.mark.slow
def test_drafting_job_on_a_local_datastore(start_afloc_server, make_datastore, tmp_path, afloc_infer):
    studies = make_datastore(tmp_path / "datastore", phantoms=6)
    (studies / "phantom_00002.txt").write_text("FINDINGS: No pneumothorax. No pleural effusion.", encoding="utf-8")
    server = start_afloc_server(studies=studies)
    url = server.url
    # A draft made by hand is kept; an image with a final label is left alone.
    reply = afloc_infer(url, image="phantom_00003", params={"prompt": "nodule", "save_draft": True})
    assert reply.status == 200, reply.params
    with open(studies / "phantom_00004.png", "rb") as handle:
        put = requests.put(f"{url}/datastore/label", params={"image": "phantom_00004", "tag": "final"},
                           files={"label": ("label.png", handle)}, timeout=60)
    assert put.status_code == 200, put.text

    def run_job(**params) -> dict:
        started = requests.post(f"{url}/afloc/draft", params=params, timeout=60)
        assert started.status_code == 200, started.text
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = requests.get(f"{url}/afloc/draft", timeout=30).json()
            if not status["running"]:
                return status
            time.sleep(0.5)
        raise AssertionError("the drafting job did not finish in 300 s")

    status = run_job()
    assert status["status"] == "DONE" and status["total"] == 7, status
    report_images = [f"phantom_{i:05d}" for i in range(6)]
    assert status["no_report"] == 1 and status["has_final"] == 1 and status["hand_made_draft"] == 1, status
    assert status["failed"] == 0
    infos = {i: requests.get(f"{url}/datastore/label/info", params={"label": i, "tag": "afloc_draft"}, timeout=30).json()
             for i in report_images}
    assert infos["phantom_00002"] == {}  # every finding negated: nothing drafted
    assert infos["phantom_00003"].get("source") is None  # the hand-made draft is untouched
    drafted = [i for i, info in infos.items() if info.get("source") == "report"]
    assert len(drafted) == status["drafted"] >= 1
    for image in drafted:
        info = infos[image]
        assert info["segments"] and all(s["sentence"] and s["certainty"] in ("positive", "uncertain") for s in info["segments"])
        assert info["label_names"] == {s["prompt"]: s["value"] for s in info["segments"]}
    final = requests.get(f"{url}/datastore/label/info", params={"label": "phantom_00004", "tag": "afloc_draft"}, timeout=30).json()
    assert final == {}
    # Resumable: a second run keeps every draft made from the same report by the same model.
    again = run_job()
    assert again["drafted"] == 0 and again["kept"] == status["drafted"], again
    # Next sample: the most uncertain of the drafts.
    nxt = requests.post(f"{url}/activelearning/afloc_review", timeout=60).json()
    assert nxt["id"] == max(drafted, key=lambda i: (infos[i]["uncertainty"], [-ord(c) for c in i]))


@pytest.mark.slow
def test_afloc_draft_cli_drafts_a_folder_and_resumes(afloc_checkpoint, tmp_path):
    import json
    import subprocess

    from afloc_training.phantoms import write_phantom_datastore

    studies = write_phantom_datastore(tmp_path / "studies", n=4, seed=0, size=128)
    (studies / "phantom_00001.txt").write_text("No pneumothorax. No pleural effusion.", encoding="utf-8")
    command = [sys.executable, "-m", "afloc_training.draft", "--data", str(studies), "--checkpoint",
               str(afloc_checkpoint), "--out", str(tmp_path / "drafts")]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["images"] == 4 and summary["failed"] == 0 and summary["no_positive_finding"] >= 1
    assert summary["drafted"] == len(list((tmp_path / "drafts").glob("*.png")))
    negated = json.loads((tmp_path / "drafts" / "phantom_00001.json").read_text())
    assert negated["segments"] == [] and not (tmp_path / "drafts" / "phantom_00001.png").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert json.loads(again.stdout.strip().splitlines()[-1])["kept"] == 4
    bad = subprocess.run([sys.executable, "-m", "afloc_training.draft", "--data", str(tmp_path / "nothing"),
                          "--checkpoint", str(afloc_checkpoint), "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
