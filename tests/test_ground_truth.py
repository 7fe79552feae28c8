"""Ground-truth readers (MS-CXR, RSNA, COCO, mask folders) built from small files in tmp_path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afloc_models.errors import AFLocError
from afloc_models.evaluation.ground_truth import (
    GroundTruthCase,
    GroundTruthError,
    load_ground_truth,
    read_coco,
    read_mask_folder,
    read_ms_cxr,
    read_rsna_pneumonia,
)
from afloc_models.imaging import read_image


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_png(path: Path, height: int, width: int, pixels: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((height, width), np.uint8) if pixels is None else pixels.astype(np.uint8)
    Image.fromarray(data).save(path)
    return path


def box_mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Expected mask from integer (row0, row1, col0, col1) spans."""
    out = np.zeros(shape, bool)
    for r0, r1, c0, c1 in boxes:
        out[r0:r1, c0:c1] = True
    return out


MS_CXR_HEADER = ["dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                 "image_width", "image_height"]


def test_ms_cxr_unites_boxes_and_scales_to_the_real_image(tmp_path):
    csv_path = write_csv(
        tmp_path / "ms_cxr.csv",
        MS_CXR_HEADER,
        [
            ["d1", "Pneumothorax", "small left apical pneumothorax", "files/p1.png", 10, 20, 30, 10, 100, 80],
            ["d1", "Pneumothorax", "small left apical pneumothorax", "files/p1.png", 50, 50, 10, 20, 100, 80],
            ["d2", "Consolidation", "right lower lobe consolidation", "files/p2.png", 0, 0, 40, 40, 100, 80],
        ],
    )
    # The image on disk is twice the annotated 100 x 80 frame.
    write_png(tmp_path / "files" / "p1.png", 160, 200)
    write_png(tmp_path / "files" / "p2.png", 80, 100)
    cases = read_ms_cxr(csv_path)
    assert [c.category for c in cases] == ["Pneumothorax", "Consolidation"]
    first = cases[0]
    assert first.prompt == "small left apical pneumothorax"
    assert first.image_path == tmp_path / "files" / "p1.png"
    assert first.boxes == ((10, 20, 30, 10), (50, 50, 10, 20)) and first.annotation_size == (80, 100)

    shape = read_image(first.image_path).pixels.shape
    expected = box_mask((160, 200), (40, 60, 20, 80), (100, 140, 100, 120))
    np.testing.assert_array_equal(first.mask(shape), expected)
    np.testing.assert_array_equal(cases[1].mask((80, 100)), box_mask((80, 100), (0, 40, 0, 40)))


def test_ms_cxr_images_dir_and_missing_files(tmp_path):
    csv_path = write_csv(
        tmp_path / "t.csv",
        MS_CXR_HEADER,
        [["d", "Edema", "edema", f"img{i}.png", 1, 1, 5, 5, 64, 64] for i in range(5)],
    )
    with pytest.raises(GroundTruthError, match=r"5 of the 5 images .* missing: .*img0\.png.*\.\.\.") as info:
        read_ms_cxr(csv_path)
    assert isinstance(info.value, AFLocError)
    assert len(read_ms_cxr(csv_path, check_files=False)) == 5
    for i in range(5):
        write_png(tmp_path / "elsewhere" / f"img{i}.png", 64, 64)
    cases = read_ms_cxr(csv_path, images_dir=tmp_path / "elsewhere")
    assert cases[0].image_path == tmp_path / "elsewhere" / "img0.png"


def test_csv_errors_name_the_problem(tmp_path):
    no_xy = write_csv(tmp_path / "a.csv", ["path", "category_name", "label_text", "w", "y"], [])
    with pytest.raises(GroundTruthError, match=r"missing required column\(s\) 'x', 'h'"):
        read_ms_cxr(no_xy)

    bad_number = write_csv(
        tmp_path / "b.csv", MS_CXR_HEADER, [["d", "Edema", "edema", "i.png", "ten", 1, 5, 5, 64, 64]]
    )
    with pytest.raises(GroundTruthError, match=r"b\.csv: row 2: column 'x' is not a number: 'ten'"):
        read_ms_cxr(bad_number, check_files=False)

    flat_box = write_csv(
        tmp_path / "c.csv", MS_CXR_HEADER, [["d", "Edema", "edema", "i.png", 1, 1, 0, 5, 64, 64]]
    )
    with pytest.raises(GroundTruthError, match="row 2.*non-positive"):
        read_ms_cxr(flat_box, check_files=False)

    with pytest.raises(GroundTruthError, match="does not exist"):
        read_ms_cxr(tmp_path / "nowhere.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(GroundTruthError, match="no header"):
        read_ms_cxr(tmp_path / "empty.csv")


def test_rsna_skips_negatives_and_unites_boxes(tmp_path):
    csv_path = write_csv(
        tmp_path / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [
            ["pa", 100, 200, 300, 100, 1],
            ["pb", "", "", "", "", 0],
            ["pa", 600, 200, 100, 300, 1],
            ["pc", 0, 0, 512, 512, 1],
        ],
    )
    images = tmp_path / "images"
    for patient in ("pa", "pc"):
        write_png(images / f"{patient}.png", 32, 32)
    cases = read_rsna_pneumonia(csv_path, images_dir=images, extension="png")
    assert [c.case_id for c in cases] == ["pa", "pc"]
    assert cases[0].image_path == images / "pa.png" and cases[0].category == "Pneumonia"
    assert cases[0].prompt == "Findings suggesting pneumonia"
    # Boxes are in the 1024 x 1024 frame; this copy of the image is 512 x 512.
    expected = box_mask((512, 512), (100, 150, 50, 200), (100, 250, 300, 350))
    np.testing.assert_array_equal(cases[0].mask((512, 512)), expected)
    np.testing.assert_array_equal(cases[1].mask((512, 512)), box_mask((512, 512), (0, 256, 0, 256)))


def test_rsna_errors(tmp_path):
    missing = write_csv(tmp_path / "r.csv", ["patientId", "x", "y", "width", "height"], [])
    with pytest.raises(GroundTruthError, match="'Target'"):
        read_rsna_pneumonia(missing)
    bad_target = write_csv(
        tmp_path / "t.csv", ["patientId", "x", "y", "width", "height", "Target"], [["p", 1, 1, 1, 1, 2]]
    )
    with pytest.raises(GroundTruthError, match="Target' must be 0 or 1"):
        read_rsna_pneumonia(bad_target)
    dicom_case = write_csv(
        tmp_path / "d.csv", ["patientId", "x", "y", "width", "height", "Target"], [["p1", 1, 1, 1, 1, 1]]
    )
    with pytest.raises(GroundTruthError, match=r"p1\.dcm"):
        read_rsna_pneumonia(dicom_case)


def coco_document() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 50, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 50, "height": 40},
        ],
        "categories": [{"id": 7, "name": "Nodule"}, {"id": 8, "name": "Pleural Effusion"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 8, "bbox": [0, 30, 50, 10]},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [30, 5, 10, 10]},
        ],
    }


def test_coco_boxes_per_image_and_category(tmp_path):
    json_path = tmp_path / "instances.json"
    json_path.write_text(json.dumps(coco_document()))
    write_png(tmp_path / "a.png", 40, 50)
    write_png(tmp_path / "b.png", 40, 50)
    cases = read_coco(json_path, prompts={"Nodule": "a pulmonary nodule"})
    assert [(c.case_id, c.category) for c in cases] == [("1", "Nodule"), ("1", "Pleural Effusion")]
    assert cases[0].prompt == "a pulmonary nodule"
    assert cases[1].prompt == "Findings suggesting pleural effusion"
    assert cases[0].annotation_size == (40, 50)
    np.testing.assert_array_equal(
        cases[0].mask((40, 50)), box_mask((40, 50), (5, 15, 5, 15), (5, 15, 30, 40))
    )


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.pop("categories"), "list under 'categories'"),
        (lambda d: d["annotations"][0].pop("bbox"), r"annotations\[0\] has no 'bbox'"),
        (lambda d: d["annotations"][1].update(image_id=99), "unknown image_id 99"),
        (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), r"bbox must be 4 numbers"),
        (lambda d: d["images"][0].pop("file_name"), r"images\[0\] needs 'id' and 'file_name'"),
    ],
)
def test_coco_errors(tmp_path, edit, match):
    document = coco_document()
    edit(document)
    json_path = tmp_path / "bad.json"
    json_path.write_text(json.dumps(document))
    with pytest.raises(GroundTruthError, match=match):
        read_coco(json_path, check_files=False)


def test_coco_invalid_json(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(GroundTruthError, match="not valid JSON"):
        read_coco(tmp_path / "x.json")


def make_phantom_folder(root: Path) -> Path:
    """What the phantom generator writes: images, masks and findings.csv side by side."""
    write_png(root / "images" / "case0.png", 40, 60)
    left = np.zeros((40, 60), np.uint8)
    left[10:20, 5:15] = 255
    right = np.zeros((20, 30), np.uint8)  # a half-size mask: resampled to the image
    right[5:10, 20:25] = 1
    write_png(root / "masks" / "case0_left.png", 40, 60, left)
    write_png(root / "masks" / "case0_right.png", 20, 30, right)
    return write_csv(
        root / "findings.csv",
        ["image", "finding", "prompt", "mask_file"],
        [
            ["images/case0.png", "Nodule", "a nodule", "masks/case0_left.png"],
            ["images/case0.png", "Nodule", "a nodule", "masks/case0_right.png"],
            ["images/case0.png", "Effusion", "", "masks/case0_left.png"],
        ],
    )


def test_mask_folder_unites_and_resamples_masks(tmp_path):
    csv_path = make_phantom_folder(tmp_path / "phantoms")
    cases = read_mask_folder(csv_path)
    assert len(cases) == 2
    nodule, effusion = cases
    assert nodule.image_path == tmp_path / "phantoms" / "images" / "case0.png"
    assert nodule.prompt == "a nodule" and effusion.prompt == "Effusion"
    expected = box_mask((40, 60), (10, 20, 5, 15), (10, 20, 40, 50))
    np.testing.assert_array_equal(nodule.mask((40, 60)), expected)
    np.testing.assert_array_equal(effusion.mask((40, 60)), box_mask((40, 60), (10, 20, 5, 15)))


def test_mask_folder_missing_mask(tmp_path):
    csv_path = make_phantom_folder(tmp_path)
    (tmp_path / "masks" / "case0_right.png").unlink()
    with pytest.raises(GroundTruthError, match=r"1 of the 2 mask files .*case0_right\.png"):
        read_mask_folder(csv_path)
    case = read_mask_folder(csv_path, check_files=False)[0]
    with pytest.raises(GroundTruthError, match="case0_right.png' does not exist"):
        case.mask((40, 60))


def test_load_ground_truth_dispatches_on_content(tmp_path):
    phantom_csv = make_phantom_folder(tmp_path / "ph")
    assert load_ground_truth(phantom_csv)[0].mask_files
    rsna = write_csv(
        tmp_path / "r.csv", ["patientId", "x", "y", "width", "height", "Target"], [["p", 1, 1, 4, 4, 1]]
    )
    assert load_ground_truth(rsna, check_files=False)[0].case_id == "p"
    ms = write_csv(tmp_path / "m.csv", MS_CXR_HEADER, [["d", "Edema", "edema", "i.png", 1, 1, 5, 5, 64, 64]])
    assert load_ground_truth(ms, check_files=False)[0].category == "Edema"
    (tmp_path / "c.json").write_text(json.dumps(coco_document()))
    assert len(load_ground_truth(tmp_path / "c.json", check_files=False)) == 2
    other = write_csv(tmp_path / "o.csv", ["file", "label"], [])
    with pytest.raises(GroundTruthError, match="cannot tell the ground-truth format"):
        load_ground_truth(other)


def test_box_rasterisation_rules():
    def mask_of(*boxes):
        return GroundTruthCase(Path("x.png"), "c", "p", boxes=boxes).mask((6, 6))

    np.testing.assert_array_equal(mask_of((0.5, 0.5, 1.0, 1.0)), box_mask((6, 6), (0, 1, 0, 1)))
    np.testing.assert_array_equal(mask_of((2.2, 3.2, 0.1, 0.1)), box_mask((6, 6), (3, 4, 2, 3)))
    assert not mask_of((10, 10, 3, 3)).any()  # entirely outside the image
    np.testing.assert_array_equal(mask_of((-2, 4, 20, 9)), box_mask((6, 6), (4, 6, 0, 6)))  # clipped
    assert mask_of((1, 1, 2, 2)).shape == (6, 6) and not GroundTruthCase(Path("x"), "c", "p").mask((3, 3)).any()


def test_custom_mask_function():
    case = GroundTruthCase(Path("x.png"), "c", "p", mask_fn=lambda shape: np.ones(shape, bool))
    assert case.mask((5, 7, 3)).shape == (5, 7) and case.mask((5, 7)).all()
    wrong = GroundTruthCase(Path("x.png"), "c", "p", mask_fn=lambda shape: np.ones((2, 2), bool))
    with pytest.raises(GroundTruthError, match="returned shape"):
        wrong.mask((5, 7))
