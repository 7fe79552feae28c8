"""Prompts in any language reach every output format intact, read back with pynrrd, slicerio and highdicom.

NRRD headers are ASCII: segment names outside printable ASCII are percent-encoded (UTF-8) and
decode to the prompt; DICOM-SEG declares UTF-8 (ISO_IR 192). Control characters never appear
raw in a header.
"""

from __future__ import annotations

import urllib.parse

import pytest
import requests

PROMPTS = ["épanchement pleural", "右側胸水"]


def _nrrd_header(data: bytes) -> bytes:
    return data.split(b"\n\n", 1)[0]


@pytest.mark.parametrize("extension", [".nrrd", ".seg.nrrd"])
def test_non_ascii_prompts_in_nrrd_labels(afloc_server_url, afloc_infer, extension, tmp_path):
    import nrrd
    import slicerio

    reply = afloc_infer(afloc_server_url, image="phantom_00000",
                        params={"prompt": "; ".join(PROMPTS), "result_extension": extension})
    assert reply.status == 200, reply.params
    assert list(reply.params["label_names"]) == PROMPTS
    header = _nrrd_header(reply.label)
    header.decode("ascii")  # the NRRD spec's header is ASCII
    path = tmp_path / f"label{extension}"
    path.write_bytes(reply.label)
    fields = nrrd.read_header(str(path))
    names = [urllib.parse.unquote(fields[f"Segment{i}_Name"]) for i in range(len(PROMPTS))]
    assert names == PROMPTS
    segments = slicerio.read_segmentation(str(path))["segments"]
    assert [urllib.parse.unquote(s["name"]) for s in segments] == PROMPTS
    assert [s["labelValue"] for s in segments] == [1, 2]


def test_non_ascii_prompts_in_nifti_label_and_heatmaps(afloc_server_url, afloc_infer):
    reply = afloc_infer(afloc_server_url, image="phantom_00001",
                        params={"prompt": PROMPTS, "result_extension": ".nii.gz"})
    assert reply.status == 200, reply.params
    assert [p["prompt"] for p in reply.params["prompts"]] == PROMPTS
    info = requests.get(f"{afloc_server_url}/datastore/label/info",
                        params={"label": "phantom_00001", "tag": "afloc_heatmap_2"}, timeout=60)
    assert info.status_code == 200 and info.json()["prompt"] == PROMPTS[1]


def test_non_ascii_prompts_in_dicom_seg(afloc_server_url, afloc_infer, tmp_path):
    import highdicom as hd

    reply = afloc_infer(afloc_server_url, image="RG1_UNCI",
                        params={"prompt": PROMPTS, "result_extension": ".dcm", "save_heatmap": False})
    assert reply.status == 200, reply.params
    path = tmp_path / "seg.dcm"
    path.write_bytes(reply.label)
    seg = hd.seg.segread(str(path))
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    assert [d.segment_label for d in seg.SegmentSequence] == PROMPTS


def test_non_ascii_draft_reopens_with_its_names(afloc_server_url, afloc_infer, tmp_path):
    import slicerio

    reply = afloc_infer(afloc_server_url, image="phantom_00002",
                        params={"prompt": PROMPTS, "save_draft": True, "save_heatmap": False})
    assert reply.status == 200, reply.params
    stored = requests.get(afloc_server_url + reply.params["draft"]["url"], timeout=60)
    assert stored.status_code == 200
    path = tmp_path / "draft.seg.nrrd"
    path.write_bytes(stored.content)
    _nrrd_header(stored.content).decode("ascii")
    names = [urllib.parse.unquote(s["name"]) for s in slicerio.read_segmentation(str(path))["segments"]]
    assert names == PROMPTS


def test_control_characters_never_reach_a_header(afloc_server_url, afloc_infer):
    reply = afloc_infer(afloc_server_url, image="phantom_00000",
                        params={"prompt": "pleural\x07 effusion\x00; nodule\x1b[31m", "save_heatmap": False})
    assert reply.status == 200, reply.params
    assert list(reply.params["label_names"]) == ["pleural effusion", "nodule [31m"]
    header = _nrrd_header(reply.label)
    assert not any(b < 0x20 and b != 0x0A for b in header)
    assert b"Segment0_Name:=pleural effusion\n" in header


def test_the_slicer_client_reads_the_names_back_decoded(afloc_server_url, afloc_infer, tmp_path):
    """The Slicer module's own .seg.nrrd reader (AFLocLib) turns the encoded names back into the prompts."""
    import sys
    from pathlib import Path

    module_dir = Path(__file__).resolve().parents[1] / "slicer_extension" / "AFLoc"
    if str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))
    from AFLocLib import read_segmentation

    reply = afloc_infer(afloc_server_url, image="phantom_00003",
                        params={"prompt": PROMPTS + ["50% opacity"], "save_heatmap": False})
    assert reply.status == 200, reply.params
    path = tmp_path / "label.seg.nrrd"
    path.write_bytes(reply.label)
    assert [s.name for s in read_segmentation(path).segments] == PROMPTS + ["50% opacity"]
