"""Bad requests get a 4xx with a JSON message naming the problem, never a bare 500."""

from __future__ import annotations

import json
import time

import pytest
import requests


def assert_json_error(reply, status: int, *words: str) -> dict:
    assert reply.status_code == status, f"{reply.status_code}: {reply.text[:300]}"
    assert reply.headers["content-type"].startswith("application/json"), reply.text[:200]
    body = reply.json()
    for word in words:
        assert word.lower() in body["detail"].lower(), body
    return body


def post_infer(url: str, model: str = "afloc", params=None, raw_params: str | None = None, **query):
    data = raw_params if raw_params is not None else json.dumps(params or {})
    return requests.post(f"{url}/infer/{model}", params=query, files={"params": (None, data)}, timeout=120)


def test_unknown_model_is_404_and_names_the_offered_models(afloc_server_url):
    body = assert_json_error(post_infer(afloc_server_url, "nope", {"prompt": "x"}, image="phantom_00000"), 404, "nope")
    assert "afloc" in body["detail"]


def test_missing_or_unknown_image_is_4xx(afloc_server_url):
    assert_json_error(post_infer(afloc_server_url, params={"prompt": "x"}), 400, "no image")
    assert_json_error(post_infer(afloc_server_url, params={"prompt": "x"}, image="no_such_image"), 404, "no_such_image")


@pytest.mark.parametrize("image", ["../datastore_v2.json", "/etc/passwd", "..", "a/../../b", "..\\x"])
def test_image_ids_with_path_tricks_are_refused(afloc_server_url, image):
    assert_json_error(post_infer(afloc_server_url, params={"prompt": "x"}, image=image), 400)


def test_a_server_path_in_params_is_refused_too(afloc_server_url):
    # MONAI Label lets params override the image; it must still be a datastore id.
    reply = post_infer(afloc_server_url, params={"prompt": "x", "image": "/etc/hostname"}, image="phantom_00000")
    assert_json_error(reply, 400, "path")


@pytest.mark.parametrize(
    "params, status, words",
    [
        ({"prompt": ""}, 400, ["empty"]),
        ({"prompt": " ; ;"}, 400, ["empty"]),
        ({}, 400, ["empty"]),
        ({"prompt": "x" * 5000}, 400, ["characters"]),
        ({"prompt": ";".join(f"finding {i}" for i in range(20))}, 400, ["at most"]),
        ({"prompt": "!!!"}, 400, ["no words"]),
        ({"prompt": "nodule", "threshold": "high"}, 400, ["threshold"]),
        ({"prompt": "nodule", "threshold": 3}, 400, ["threshold"]),
        ({"prompt": "nodule", "threshold": "nan"}, 400, ["threshold"]),
        ({"prompt": "nodule", "result_extension": ".exe"}, 400, ["result_extension"]),
        ({"prompt": "nodule", "result_dtype": "complex128"}, 400, ["result_dtype"]),
        ({"prompt": "nodule", "save_draft": "perhaps"}, 400, ["save_draft"]),
        ({"prompt": "nodule", "save_label": True, "label_tag": "final"}, 400, ["final"]),
        ({"prompt": "nodule", "save_draft": True, "label_tag": "../final"}, 400, ["tag"]),
    ],
)
def test_bad_parameters_are_400_with_a_message(afloc_server_url, params, status, words):
    assert_json_error(post_infer(afloc_server_url, params=params, image="phantom_00000"), status, *words)


def test_params_that_are_not_json_are_400(afloc_server_url):
    assert_json_error(post_infer(afloc_server_url, raw_params='{"prompt": "x"', image="phantom_00000"), 400, "json")


@pytest.mark.parametrize("raw", ['["prompt", "x"]', '"nodule"', "3", "null"])
def test_params_that_are_json_but_not_an_object_are_400(afloc_server_url, raw):
    assert_json_error(post_infer(afloc_server_url, raw_params=raw, image="phantom_00000"), 400, "json object")
    reply = requests.put(
        f"{afloc_server_url}/datastore/label",
        params={"image": "phantom_00000", "tag": "afloc_draft"},
        files={"params": (None, raw), "label": ("x.nrrd", b"not read")},
        timeout=60,
    )
    assert_json_error(reply, 400, "json object")


def test_classify_without_findings_is_400(afloc_server_url):
    reply = post_infer(afloc_server_url, "afloc_classify", {"findings": " , ;"}, image="phantom_00000")
    assert_json_error(reply, 400, "findings")


def test_an_unreadable_image_in_the_datastore_is_422(afloc_server):
    broken = afloc_server.studies / "broken_upload.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"truncated")
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the datastore notices new files by itself
            listing = requests.get(f"{afloc_server.url}/datastore/?output=all", timeout=30).json()
            if "broken_upload" in listing["objects"]:
                break
            time.sleep(0.2)
        reply = post_infer(afloc_server.url, params={"prompt": "nodule"}, image="broken_upload")
        assert_json_error(reply, 422, "broken_upload.png")
    finally:
        broken.unlink()


def test_uploads_with_bad_ids_or_content_are_refused(afloc_server_url):
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 100  # a PNG signature and nothing decodable
    reply = requests.put(
        f"{afloc_server_url}/datastore/image", params={"image": "../escape"}, files={"file": ("a.png", png)}, timeout=30
    )
    assert_json_error(reply, 400, "path separator")
    reply = requests.put(f"{afloc_server_url}/datastore/image", params={"image": "garbage"}, files={"file": ("a.png", png)}, timeout=30)
    assert_json_error(reply, 422, "cannot read image")
    reply = requests.put(f"{afloc_server_url}/datastore/image", files={"file": ("notes.txt", b"hello")}, timeout=30)
    assert_json_error(reply, 400, "must be one of")
    listing = requests.get(f"{afloc_server_url}/datastore/?output=all", timeout=30).json()
    assert "garbage" not in listing["objects"] and "notes" not in listing["objects"]


def test_datastore_errors_are_json_too(afloc_server_url):
    reply = requests.put(
        f"{afloc_server_url}/datastore/image/info", params={"image": "nobody"}, data={"info": "{}"}, timeout=30
    )
    assert_json_error(reply, 404, "nobody")
    assert_json_error(requests.get(f"{afloc_server_url}/datastore/image", params={"image": "../x"}, timeout=30), 400)


def test_label_tags_with_path_tricks_are_refused(afloc_server_url):
    reply = requests.put(
        f"{afloc_server_url}/datastore/label",
        params={"image": "phantom_00000", "tag": "../../x"},
        files={"label": ("l.nrrd", b"NRRD0004\n")},
        timeout=30,
    )
    assert_json_error(reply, 400, "tag")

