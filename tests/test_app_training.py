"""``afloc_train`` end to end through MONAI Label's ``/train`` endpoints on a server of its own.

A stopped run must leave the served model alone; a finished run is published and served by the
next inference request without a restart.
"""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT_S = 420


def wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def train_status(url: str) -> dict:
    reply = requests.get(f"{url}/train/", timeout=30)
    return reply.json() if reply.status_code == 200 else {}


def served_version(url: str) -> str:
    return requests.get(f"{url}/info/", timeout=30).json()["models"]["afloc"]["model_version"]


@pytest.fixture(scope="module")
def training_server(start_afloc_server):
    return start_afloc_server()


def test_stopped_run_leaves_the_served_model_and_finished_run_is_served(training_server, afloc_infer):
    url, model_dir = training_server.url, training_server.model_dir
    assert served_version(url) == "test-base"

    # 1) A long run, stopped while it trains: nothing is published.
    reply = requests.post(f"{url}/train/afloc_train", json={"max_steps": 5000, "max_minutes": 30}, timeout=30)
    assert reply.status_code == 200, reply.text
    wait_for(lambda: list((model_dir / "runs").glob("*")) if (model_dir / "runs").is_dir() else None,
             TRAIN_TIMEOUT_S, "the training run to start")
    wait_for(lambda: train_status(url).get("status") == "RUNNING", 60, "status RUNNING")
    reply = requests.delete(f"{url}/train/", timeout=30)
    assert reply.status_code == 200, reply.text
    assert wait_for(lambda: train_status(url).get("status") in ("STOPPED", "ERROR", "DONE") and train_status(url),
                    60, "the run to end")["status"] == "STOPPED"
    assert not (model_dir / "current").exists()
    assert served_version(url) == "test-base"
    assert afloc_infer(url, image="phantom_00000", params={"prompt": "nodule"}).params["model_version"] == "test-base"

    # 2) A tiny fine-tuning run to the end: published and served without a restart.
    reply = requests.post(f"{url}/train/afloc_train", json={"max_steps": 2, "init": "current"}, timeout=30)
    assert reply.status_code == 200, reply.text
    final = wait_for(lambda: (s := train_status(url)).get("status") in ("DONE", "ERROR", "STOPPED") and s,
                     TRAIN_TIMEOUT_S, "training to finish", interval_s=1.0)
    assert final["status"] == "DONE", final.get("details")
    assert (model_dir / "current").is_symlink()
    new_version = served_version(url)
    assert new_version != "test-base"

    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["afloc_train"]
    assert stats["status"] == "DONE" and stats["result"]["steps"] == 2 and stats["result"]["published"]
    assert stats["init_from"] is not None  # fine-tuned from the served checkpoint

    reply = afloc_infer(url, image="phantom_00000", params={"prompt": "nodule"})
    assert reply.status == 200, reply.params
    assert reply.params["model_version"] == new_version
    assert reply.params["checkpoint"] == (model_dir / "current").resolve().name


def test_training_refuses_unusable_options_before_starting(training_server):
    url = training_server.url
    wait_for(lambda: train_status(url).get("status") != "RUNNING", TRAIN_TIMEOUT_S, "no run in progress")
    before = train_status(url).get("id")
    reply = requests.post(f"{url}/train/afloc_train", json={"init": "sideways"}, timeout=30)
    assert reply.status_code == 400 and "init" in reply.json()["detail"], reply.text[:300]
    assert train_status(url).get("id") == before  # no training process was started
