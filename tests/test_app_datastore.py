"""Datastore side of the app: images with reports, uploads, drafts, and inference on uploaded files."""

from __future__ import annotations

import json

import numpy as np
import requests

from conftest import rg1_unci_path


def test_upload_with_a_report_stores_it_in_the_image_info(afloc_server_url):
    report = "Small left apical pneumothorax. No pleural effusion."
    with open(rg1_unci_path(), "rb") as handle:
        reply = requests.put(
            f"{afloc_server_url}/datastore/image",
            params={"image": "uploaded_cr"},
            data={"params": json.dumps({"report": report})},
            files={"file": ("upload.dcm", handle)},
            timeout=60,
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["image"] == "uploaded_cr"
    info = requests.get(f"{afloc_server_url}/datastore/image/info", params={"image": "uploaded_cr"}, timeout=30).json()
    assert info["report"] == report
    listing = requests.get(f"{afloc_server_url}/datastore/?output=all", timeout=30).json()
    assert listing["objects"]["uploaded_cr"]["image"]["ext"] == ".dcm"

    reply = requests.put(
        f"{afloc_server_url}/datastore/image/info",
        params={"image": "uploaded_cr"},
        data={"info": json.dumps({"report": 42})},
        timeout=30,
    )
    assert reply.status_code == 400 and "report" in reply.json()["detail"]


def test_draft_is_saved_under_its_own_tag_and_never_over_final(afloc_server, afloc_infer, tmp_path):
    import slicerio

    url = afloc_server.url
    final = b"a final label stands in here"
    reply = requests.put(
        f"{url}/datastore/label",
        params={"image": "phantom_00003", "tag": "final"},
        files={"label": ("phantom_00003.nrrd", final)},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text

    reply = afloc_infer(url, image="phantom_00003", params={"prompt": "opacity; nodule", "save_draft": True})
    assert reply.status == 200, reply.params
    draft = reply.params["draft"]
    assert draft["tag"] == "afloc_draft"
    stored = requests.get(url + draft["url"], timeout=30)
    assert stored.status_code == 200
    path = tmp_path / "draft.seg.nrrd"
    path.write_bytes(stored.content)
    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["opacity", "nodule"]
    returned = tmp_path / "returned.seg.nrrd"
    returned.write_bytes(reply.label)
    assert np.array_equal(seg["voxels"], slicerio.read_segmentation(str(returned))["voxels"])

    # MONAI Label's own save_label flag also saves a draft, not a final label.
    reply = afloc_infer(url, image="phantom_00003", params={"prompt": "opacity", "save_label": True})
    assert reply.status == 200 and reply.params["draft"]["tag"] == "afloc_draft"
    kept = requests.get(f"{url}/datastore/label", params={"label": "phantom_00003", "tag": "final"}, timeout=30)
    assert kept.content == final
    # Heatmaps are stored just after the reply; reading one waits for it, the listing does not.
    assert requests.get(url + reply.params["heatmap"]["url"], timeout=60).status_code == 200
    tags = requests.get(f"{url}/datastore/?output=all", timeout=30).json()["objects"]["phantom_00003"]["labels"]
    assert {"final", "afloc_draft", "afloc_heatmap"} <= set(tags)


def test_inference_on_an_uploaded_file(afloc_server_url, afloc_infer):
    dicom = rg1_unci_path().read_bytes()
    reply = afloc_infer(afloc_server_url, params={"prompt": "pneumothorax", "save_heatmap": True}, file=("x.dcm", dicom))
    assert reply.status == 200, reply.params
    assert reply.params["image"]["id"] is None and reply.params["heatmap"] is None  # nothing is stored for uploads
    assert reply.params["image"]["shape"] == [1955, 1841]
    reply = afloc_infer(afloc_server_url, params={"prompt": "pneumothorax", "save_draft": True}, file=("x.dcm", dicom))
    assert reply.status == 400 and "upload" in reply.params["detail"]
