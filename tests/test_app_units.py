"""The AFLoc Label app's building blocks without a server: parsing, names, labels, checkpoints."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

APP_DIR = Path(__file__).resolve().parents[1] / "apps" / "afloc_label"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))

from afloc_models.errors import AFLocError, ImageReadError, PromptError  # noqa: E402
from lib.checkpoints import ModelStore, checkpoint_problem  # noqa: E402
from lib.errors import BadRequestError, NotFoundError, http_status  # noqa: E402
from lib.geometry import Geometry, geometry_for  # noqa: E402
from lib.ids import check_image_id, check_tag  # noqa: E402
from lib.image_source import resolve_image_file  # noqa: E402
from lib.infers.localize import combine_masks, heatmap_tag  # noqa: E402
from lib.label_io import Segment, write_heatmap, write_label  # noqa: E402
from lib.params import (  # noqa: E402
    MAX_PROMPTS,
    parse_bool,
    parse_dtype,
    parse_extension,
    parse_findings,
    parse_prompts,
    parse_threshold,
)


# ----------------------------------------------------------------------------- parameters
def test_prompts_split_on_semicolons_keep_commas_and_drop_blanks_and_repeats():
    assert parse_prompts("pneumothorax") == ["pneumothorax"]
    assert parse_prompts(" small, left pneumothorax ;  effusion;; Effusion ") == ["small, left pneumothorax", "effusion"]
    assert parse_prompts('["a b", "c"]') == ["a b", "c"]
    assert parse_prompts(["x; y", "z"]) == ["x", "y", "z"]


@pytest.mark.parametrize("value", [None, "", "  ", ";;", [], "[]"])
def test_empty_prompt_is_a_prompt_error(value):
    with pytest.raises(PromptError, match="empty"):
        parse_prompts(value)


def test_too_many_and_too_long_prompts_are_refused():
    with pytest.raises(PromptError, match="at most"):
        parse_prompts(";".join(f"finding {i}" for i in range(MAX_PROMPTS + 1)))
    with pytest.raises(PromptError, match="characters long"):
        parse_prompts("x" * 5000)
    with pytest.raises(BadRequestError):
        parse_prompts(42)


def test_findings_split_on_commas_and_semicolons():
    assert parse_findings("pneumonia, pleural effusion; edema") == ["pneumonia", "pleural effusion", "edema"]
    assert parse_findings('["a", "b"]') == ["a", "b"]
    with pytest.raises(PromptError):
        parse_findings(" , ;")


@pytest.mark.parametrize("value, expected", [(None, None), ("", None), ("0.25", 0.25), (-1, -1.0), ([0.5, 0.1], 0.5)])
def test_threshold_accepts_numbers_strings_and_choice_lists(value, expected):
    assert parse_threshold(value) == expected


@pytest.mark.parametrize("value", ["abc", 1.5, -2, "nan", "inf", True, {"a": 1}])
def test_bad_thresholds_are_refused(value):
    with pytest.raises(BadRequestError, match="threshold"):
        parse_threshold(value)


def test_extension_dtype_and_bool_parsing():
    assert parse_extension(None) == ".nrrd"
    assert parse_extension("nii.gz") == ".nii.gz"
    assert parse_extension([".seg.nrrd", ".nrrd"]) == ".seg.nrrd"
    with pytest.raises(BadRequestError):
        parse_extension(".png")
    assert parse_dtype("UINT16") == "uint16"
    with pytest.raises(BadRequestError):
        parse_dtype("float64")
    assert parse_bool("true", "x", False) is True and parse_bool("0", "x", True) is False
    assert parse_bool(None, "x", True) is True
    with pytest.raises(BadRequestError):
        parse_bool("maybe", "x", False)


# ----------------------------------------------------------------------------- names and errors
@pytest.mark.parametrize("bad", ["", "../x", "a/b", "/etc/passwd", "..", ".", "a\\b", "x\x00", "~root", "x" * 300])
def test_path_tricks_in_image_ids_are_refused(bad):
    with pytest.raises(BadRequestError):
        check_image_id(bad)


def test_plain_image_ids_and_tags_pass():
    for good in ("RG1_UNCI", "phantom_00001", "1.2.840.113619.2.55", "chest x-ray (1)"):
        assert check_image_id(good) == good
    assert check_tag("afloc_heatmap_2") == "afloc_heatmap_2"
    for bad in ("../final", "a/b", "", ".hidden", "x" * 80):
        with pytest.raises(BadRequestError):
            check_tag(bad)


def test_http_status_mapping():
    assert http_status(NotFoundError("x")) == 404
    assert http_status(BadRequestError("x")) == 400
    assert http_status(PromptError("x")) == 400
    assert http_status(ImageReadError("f.png", "corrupt")) == 422
    assert http_status(AFLocError("x")) == 400


# ----------------------------------------------------------------------------- labels
def test_combine_masks_gives_each_pixel_to_the_hottest_covering_prompt():
    heat_a = np.array([[0.9, 0.5, 0.0]], dtype=np.float32)
    heat_b = np.array([[0.4, 0.8, 0.9]], dtype=np.float32)
    masks = [heat_a > 0.3, heat_b > 0.3]
    masks[1][0, 0] = True
    label = combine_masks([heat_a, heat_b], masks)
    assert label.dtype == np.uint8
    assert label.tolist() == [[1, 2, 2]]
    assert combine_masks([heat_a], [np.zeros_like(masks[0])]).tolist() == [[0, 0, 0]]
    assert heatmap_tag(0) == "afloc_heatmap" and heatmap_tag(2) == "afloc_heatmap_3"


@pytest.fixture
def label_and_geometry():
    label = np.zeros((30, 40), dtype=np.uint8)
    label[2:6, 10:25] = 1
    label[20:28, 3:9] = 2
    geometry = Geometry(shape=(30, 40), spacing=(0.5, 0.25), spacing_known=True, origin=(10.0, -5.0, 2.0))
    segments = [Segment("left pneumothorax", 1, (1, 0, 0)), Segment("effusion", 2, (0, 1, 0))]
    return label, geometry, segments


def test_seg_nrrd_has_named_segments_and_the_source_geometry(tmp_path, label_and_geometry):
    import SimpleITK as sitk
    import slicerio

    label, geometry, segments = label_and_geometry
    path = write_label(tmp_path / "x.seg.nrrd", label, segments, geometry)
    seg = slicerio.read_segmentation(str(path))
    assert [(s["name"], s["labelValue"]) for s in seg["segments"]] == [("left pneumothorax", 1), ("effusion", 2)]
    assert np.array_equal(seg["voxels"][:, :, 0].T, label)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (40, 30, 1)
    assert image.GetSpacing() == pytest.approx((0.25, 0.5, 1.0))
    assert image.GetOrigin() == pytest.approx((10.0, -5.0, 2.0))
    assert np.array_equal(sitk.GetArrayFromImage(image)[0], label)


def test_nifti_label_and_heatmap_read_back_on_the_same_grid(tmp_path, label_and_geometry):
    import SimpleITK as sitk

    label, geometry, segments = label_and_geometry
    path = write_label(tmp_path / "x.nii.gz", label, segments, geometry, dtype="uint16")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (40, 30)
    assert image.GetSpacing() == pytest.approx((0.25, 0.5))
    assert image.GetOrigin() == pytest.approx((10.0, -5.0))
    assert np.array_equal(sitk.GetArrayFromImage(image), label)
    heat = np.linspace(-1, 1, 30 * 40, dtype=np.float32).reshape(30, 40)
    image = sitk.ReadImage(str(write_heatmap(tmp_path / "h.nii", heat, geometry)))
    assert image.GetPixelIDTypeAsString() == "32-bit float"
    assert np.array_equal(sitk.GetArrayFromImage(image), heat)


def test_label_for_a_nifti_source_reuses_its_affine_and_shape(tmp_path):
    import nibabel as nib

    affine = np.array([[-0.2, 0, 0, 5.0], [0, -0.3, 0, 7.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    source = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 30, 1), dtype=np.uint8), affine), str(source))
    geometry = geometry_for(source, (30, 40), (0.3, 0.2))
    assert geometry.spacing == pytest.approx((0.3, 0.2))
    out = write_label(tmp_path / "l.nii.gz", np.ones((30, 40), np.uint8), [Segment("a", 1, (1, 1, 1))], geometry)
    written = nib.load(str(out))
    assert written.shape == (40, 30, 1)
    assert np.allclose(written.affine, affine)


def test_dicom_seg_needs_a_dicom_source(tmp_path, label_and_geometry):
    label, geometry, segments = label_and_geometry
    with pytest.raises(BadRequestError, match="DICOM"):
        write_label(tmp_path / "x.dcm", label, segments, geometry)


# ----------------------------------------------------------------------------- image folders
def test_a_series_folder_with_one_dicom_resolves_to_that_file(tmp_path):
    from conftest import rg1_unci_path

    series = tmp_path / "series" / "1.2.3"
    series.mkdir(parents=True)
    (series / "instance").write_bytes(rg1_unci_path().read_bytes())  # no extension: found by its magic
    (series / "notes.json").write_text("{}")
    assert resolve_image_file(str(tmp_path / "series")) == series / "instance"
    (series / "second.dcm").write_bytes(b"x")
    with pytest.raises(ImageReadError, match="2 DICOM files"):
        resolve_image_file(str(series))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageReadError, match="no DICOM"):
        resolve_image_file(str(empty))
    with pytest.raises(ImageReadError, match="does not exist"):
        resolve_image_file(str(tmp_path / "missing.png"))


# ----------------------------------------------------------------------------- datastore
def test_datastore_lists_dicom_and_finds_reports_in_info_or_sidecars(tmp_path):
    from conftest import rg1_unci_path
    from lib.datastore import AFLocDatastore, datastore_extensions

    (tmp_path / "a.png").write_bytes(b"")  # listing does not decode
    (tmp_path / "a.txt").write_text("Left pleural effusion.\n")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.dcm").write_bytes(rg1_unci_path().read_bytes())
    store = AFLocDatastore(str(tmp_path), extensions=datastore_extensions(["*.png"]))
    assert sorted(store.list_images()) == ["a", "b", "c"]
    store.update_image_info("c", {"report": "No pneumothorax."})
    assert store.report("a") == "Left pleural effusion.\n" and store.report("b") is None
    assert store.images_with_reports() == ["a", "c"]
    with pytest.raises(BadRequestError):
        store.update_image_info("c", {"report": ["not", "text"]})
    with pytest.raises(BadRequestError):
        store.get_image_uri("../c")


def test_a_label_stored_after_the_reply_is_waited_for_by_readers(tmp_path):
    from lib.datastore import AFLocDatastore, datastore_extensions

    (tmp_path / "a.png").write_bytes(b"")
    store = AFLocDatastore(str(tmp_path), extensions=datastore_extensions(["*.png"]))

    def slow_write(path: Path) -> None:
        time.sleep(0.5)
        path.write_bytes(b"heat")

    started = time.monotonic()
    assert store.save_label_soon("a", "afloc_heatmap", ".nii", slow_write, {"prompt": "x"}) == "a"
    assert time.monotonic() - started < 0.4  # queued, not written in the caller
    uri = store.get_label_uri("a", "afloc_heatmap")  # waits for the writer
    assert Path(uri).read_bytes() == b"heat"
    assert store.get_label_info("a", "afloc_heatmap")["prompt"] == "x"


def test_localize_task_reads_a_downloaded_dicom_series_folder(tmp_path, afloc_checkpoint):
    """What MONAI Label's DICOMweb datastore hands a task: a folder holding the series' file."""
    import slicerio

    from conftest import rg1_unci_path
    from lib.infers import AFLocLocalizeTask
    from lib.served_model import ServedModel

    series = tmp_path / "cache" / "1.3.6.1.4.1.5962.1.3.9.1"
    series.mkdir(parents=True)
    (series / "1.3.6.1.4.1.5962.1.1.9.1.3.dcm").write_bytes(rg1_unci_path().read_bytes())
    task = AFLocLocalizeTask(ServedModel(ModelStore(tmp_path / "model", afloc_checkpoint), "cpu"), lambda: None)
    with pytest.warns(UserWarning, match="pixel spacing"):  # this real file states 0\0
        label_file, params = task({"image": str(series), "prompt": "pneumothorax", "image_id": None})
    try:
        assert params["image"]["shape"] == [1955, 1841] and params["heatmap"] is None
        seg = slicerio.read_segmentation(label_file)
        assert seg["voxels"].shape == (1841, 1955, 1)
        assert [s["name"] for s in seg["segments"]] == ["pneumothorax"]
    finally:
        Path(label_file).unlink()


# ----------------------------------------------------------------------------- checkpoints
def _fake_checkpoint(folder: Path, version: str) -> Path:
    (folder / "text_encoder").mkdir(parents=True)
    (folder / "config.yaml").write_text("name: small\n")
    (folder / "model.safetensors").write_bytes(os.urandom(16))
    (folder / "meta.json").write_text(json.dumps({"version": version}))
    return folder


def test_model_store_serves_base_until_a_run_is_published_then_swaps_atomically(tmp_path):
    base = _fake_checkpoint(tmp_path / "base", "v-base")
    store = ModelStore(tmp_path / "model", base)
    served = store.served()
    assert served.source == "base" and served.version == "v-base"

    run = store.new_run_dir()
    assert not run.exists() and run.parent == store.runs_dir
    (run / "partial").mkdir(parents=True)  # an unfinished run is never published
    with pytest.raises(RuntimeError, match="incomplete"):
        store.publish(run)
    assert store.served().source == "base"

    run2 = _fake_checkpoint(store.new_run_dir(), "v-trained")
    published = store.publish(run2)
    assert published.version == "v-trained"
    assert store.current_link.is_symlink() and store.served().path == run2.resolve()
    assert store.served().fingerprint != served.fingerprint

    old = tmp_path / "model" / "runs" / "old-unfinished"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    removed = store.prune()
    assert old in removed and run2.exists()


def test_model_store_without_any_checkpoint_explains_how_to_get_one(tmp_path):
    store = ModelStore(tmp_path / "model", tmp_path / "nothing")
    assert store.served() is None
    assert "build_demo.py" in store.describe_missing()
    assert "missing" in (checkpoint_problem(_fake_checkpoint(tmp_path / "c", "x") / "text_encoder") or "missing")


def test_combine_masks_matches_the_stacked_argmax_on_random_maps():
    """The one-pass combination (O(H*W) memory) equals the argmax over stacked masked heat."""
    rng = np.random.default_rng(0)
    for prompts in (2, 3, 8):
        heat = [rng.random((40, 30)).astype(np.float32).round(1) for _ in range(prompts)]  # ties happen
        masks = [rng.random((40, 30)) > 0.5 for _ in range(prompts)]
        stacked = np.stack([np.where(m, h, -np.inf) for h, m in zip(heat, masks)])
        expected = np.where(np.any(masks, axis=0), np.argmax(stacked, axis=0) + 1, 0).astype(np.uint8)
        np.testing.assert_array_equal(combine_masks(heat, masks), expected)
