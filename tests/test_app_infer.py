"""``/infer/afloc`` and ``/infer/afloc_classify`` on a real server, checked against direct predictor calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import requests

# A few pixels may flip where the heatmap sits exactly at the threshold: the server and this
# process may order float sums differently (other thread counts). Anything more is a bug.
MAX_FLIPPED_FRACTION = 1e-3


@pytest.fixture(scope="module")
def predictor(afloc_checkpoint):
    from afloc_models.inference import AFLocPredictor

    return AFLocPredictor.load(afloc_checkpoint, device="cpu")


def read_segmentation(data: bytes, tmp_path: Path, name: str = "label.seg.nrrd"):
    """``(label [H, W], [(segment name, value), ...], slicerio dict)`` from NRRD bytes."""
    import slicerio

    path = tmp_path / name
    path.write_bytes(data)
    seg = slicerio.read_segmentation(str(path))
    label = seg["voxels"][:, :, 0].T  # [W, H, 1] (i, j, k) -> [H, W]
    return label, [(s["name"], s["labelValue"]) for s in seg.get("segments", [])], seg


def fetch_heatmap(url: str, heatmap: dict, tmp_path: Path) -> np.ndarray:
    import nibabel as nib

    reply = requests.get(url + heatmap["url"], timeout=30)
    assert reply.status_code == 200, reply.text
    path = tmp_path / f"{heatmap['tag']}.nii"
    path.write_bytes(reply.content)
    image = nib.load(str(path))
    assert image.get_data_dtype() == np.float32
    return np.asarray(image.dataobj).T  # [W, H] -> [H, W]


def assert_same_mask(label: np.ndarray, expected: np.ndarray) -> None:
    assert label.shape == expected.shape
    flipped = np.count_nonzero(label != expected)
    assert flipped <= MAX_FLIPPED_FRACTION * expected.size, f"{flipped} pixels differ from the direct prediction"


def test_info_lists_the_models_and_the_trainer(afloc_server_url):
    info = requests.get(f"{afloc_server_url}/info/", timeout=30).json()
    afloc = info["models"]["afloc"]
    assert afloc["type"] == "segmentation"
    assert isinstance(afloc["config"]["prompt"], str)  # a string option is a text box in both clients
    assert isinstance(afloc["config"]["threshold"], float)
    assert info["models"]["afloc_classify"]["type"] == "classification"
    assert "afloc_train" in info["trainers"]
    assert afloc["model_version"] == "test-base"
    # What the served model was trained on, from its meta.json (panels show it).
    if not os.environ.get("AFLOC_TEST_CHECKPOINT"):
        assert info["trained_on"] == afloc["trained_on"] == "test: untrained, random weights"
    assert info["models"]["afloc_classify"]["trained_on"] == info["trained_on"]
    listing = requests.get(f"{afloc_server_url}/datastore/?output=all", timeout=30).json()
    assert listing["objects"]["RG1_UNCI"]["image"]["ext"] == ".dcm"


def test_one_prompt_gives_a_named_label_equal_to_the_direct_prediction(
    afloc_server, afloc_infer, predictor, tmp_path
):
    prompt = "nodule in the left mid zone"
    reply = afloc_infer(afloc_server.url, image="phantom_00000", params={"prompt": prompt})
    assert reply.status == 200, reply.params
    params = reply.params
    assert params["model_version"] == "test-base"
    assert params["label_names"] == {prompt: 1}
    entry = params["prompts"][0]
    assert entry["prompt"] == prompt and entry["label_value"] == 1
    assert params["image"]["shape"] == [256, 256]
    # How the maps were read, as the predictor reads them (a project checkpoint: sided prompts
    # mirror averaged, every map guided by the image).
    settings = predictor.settings
    assert params["reading"] == {"level": settings.level, "similarity": settings.similarity, "mirror": settings.mirror,
                                 "refine": settings.refine, "input_size": predictor.input_size,
                                 "recipe": settings.recipe}
    project = predictor.compat == "project"
    assert (params["reading"]["mirror"], params["reading"]["refine"]) == (
        ("sides", "guided") if project else ("off", "off"))

    expected = predictor.localize(afloc_server.studies / "phantom_00000.png", [prompt])[0]
    label, segments, seg = read_segmentation(reply.label, tmp_path)
    assert segments == [(prompt, 1)]
    assert_same_mask(label, expected.mask.astype(np.uint8))
    assert entry["score"] == pytest.approx(expected.score, abs=1e-4)
    assert entry["threshold"] == pytest.approx(expected.threshold)
    assert np.allclose(seg["ijkToLPS"], np.eye(4))  # PNG: origin 0, 1 mm, identity (as ITK reads it)

    heat = fetch_heatmap(afloc_server.url, params["heatmap"], tmp_path)
    assert heat.shape == (256, 256)
    assert np.allclose(heat, expected.heatmap, atol=1e-4)
    info = requests.get(
        f"{afloc_server.url}/datastore/label/info", params={"label": "phantom_00000", "tag": "afloc_heatmap"}, timeout=30
    ).json()
    assert info["prompt"] == prompt


def test_several_prompts_give_one_segment_each_and_the_hottest_prompt_wins_overlaps(
    afloc_server, afloc_infer, predictor, tmp_path
):
    prompts = ["right pleural effusion", "nodule", "enlarged heart"]
    reply = afloc_infer(
        afloc_server.url, image="phantom_00001", params={"prompt": "; ".join(prompts), "threshold": 0.1}
    )
    assert reply.status == 200, reply.params
    label, segments, _ = read_segmentation(reply.label, tmp_path)
    assert segments == [(p, i + 1) for i, p in enumerate(prompts)]
    assert reply.params["threshold"] == pytest.approx(0.1)
    assert [e["heatmap"]["tag"] for e in reply.params["prompts"]] == ["afloc_heatmap", "afloc_heatmap_2", "afloc_heatmap_3"]

    results = predictor.localize(afloc_server.studies / "phantom_00001.png", prompts, threshold=0.1).results
    heat = np.stack([np.where(r.mask, r.heatmap, -np.inf) for r in results])
    expected = np.where(np.any([r.mask for r in results], axis=0), np.argmax(heat, axis=0) + 1, 0)
    overlap = np.sum([r.mask for r in results], axis=0) > 1
    assert overlap.any(), "the prompts should overlap somewhere at threshold 0.1 for this test to mean anything"
    assert_same_mask(label, expected.astype(np.uint8))


def test_slicer_request_keys_and_nifti_output(afloc_server, afloc_infer, predictor, tmp_path):
    import nibabel as nib

    # What the stock Slicer module forces, sent url-encoded instead of multipart this time.
    reply = requests.post(
        f"{afloc_server.url}/infer/afloc",
        params={"image": "phantom_00002", "output": "image"},
        data={"params": json.dumps({"prompt": "opacity", "result_extension": ".nrrd", "result_dtype": "uint8"})},
        timeout=120,
    )
    assert reply.status_code == 200
    label, segments, _ = read_segmentation(reply.content, tmp_path)
    assert segments == [("opacity", 1)] and label.dtype == np.uint8

    reply = afloc_infer(
        afloc_server.url,
        image="phantom_00002",
        params={"prompt": "opacity", "result_extension": ".nii.gz", "result_dtype": "uint16", "save_heatmap": False},
    )
    assert reply.status == 200 and reply.params["heatmap"] is None
    path = tmp_path / "label.nii.gz"
    path.write_bytes(reply.label)
    image = nib.load(str(path))
    assert image.get_data_dtype() == np.uint16 and image.shape == (256, 256)
    expected = predictor.localize(afloc_server.studies / "phantom_00002.png", ["opacity"])[0].mask
    assert_same_mask(np.asarray(image.dataobj).T, expected.astype(np.uint16))


def test_dicom_source_gives_a_dicom_seg_on_its_own_grid(afloc_server, afloc_infer, tmp_path):
    import highdicom as hd
    import pydicom

    reply = afloc_infer(
        afloc_server.url,
        image="RG1_UNCI",
        params={"prompt": "pneumothorax; cardiomegaly", "result_extension": ".dcm", "save_heatmap": False},
    )
    assert reply.status == 200, reply.params
    assert reply.params["image"]["shape"] == [1955, 1841]
    assert reply.params["image"]["spacing_known"] is False  # PixelSpacing 0\0 in this real file
    path = tmp_path / "seg.dcm"
    path.write_bytes(reply.label)
    seg = hd.seg.segread(str(path))
    source = pydicom.dcmread(str(afloc_server.studies / "RG1_UNCI.dcm"), stop_before_pixels=True)
    assert (seg.Rows, seg.Columns) == (1955, 1841)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert [seg.get_segment_description(n).SegmentLabel for n in (1, 2)] == ["pneumothorax", "cardiomegaly"]


def test_dicom_seg_is_refused_for_a_png_source(afloc_server_url, afloc_infer):
    reply = afloc_infer(afloc_server_url, image="phantom_00000", params={"prompt": "nodule", "result_extension": ".dcm"})
    assert reply.status == 400 and "DICOM" in reply.params["detail"]


def test_classification_returns_the_direct_probabilities(afloc_server, afloc_infer, predictor):
    reply = afloc_infer(
        afloc_server.url, model="afloc_classify", image="phantom_00003", params={"findings": "pneumonia; pleural effusion"}
    )
    assert reply.status == 200, reply.params
    probabilities = reply.params["findings"]
    expected = predictor.classify(afloc_server.studies / "phantom_00003.png", ["pneumonia", "pleural effusion"])
    assert set(probabilities) == set(expected)
    for name, value in expected.items():
        assert 0.0 <= probabilities[name] <= 1.0
        assert probabilities[name] == pytest.approx(value, abs=1e-4)
    reply = afloc_infer(afloc_server.url, model="afloc_classify", image="phantom_00003", params={"findings": '["edema"]'})
    assert list(reply.params["findings"]) == ["edema"]
