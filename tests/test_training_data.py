"""Training data: datastore / CSV / MIMIC-CXR sources, the split, the Dataset and the collate function."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from afloc_models.config import DataConfig
from afloc_models.errors import AFLocError
from afloc_training.data import PairDataset, ReportCollate, Sample, Skipped, load_pairs, split_pairs

# The shared folder of real radiographs lies beside the repository on the team's machines only.
CXR_NOTES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-notes" / "pairs.csv"
DATA = DataConfig(resize=72, crop=64, mean=0.5, std=0.25, val_fraction=0.2, num_workers=0)


def write_image(path: Path, size=(80, 60), mode="L", seed=0) -> Path:
    """A real image file (format from the suffix) with random content, ``size`` = (W, H)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


# ----------------------------------------------------------------------------- datastore
def test_datastore_sidecars_json_reports_and_skips(tmp_path, caplog):
    write_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("FINDINGS: Right lower lobe opacity. IMPRESSION: Pneumonia.")
    write_image(tmp_path / "b.jpg", seed=1)  # report only in datastore_v2.json
    write_image(tmp_path / "c.png", seed=2)
    (tmp_path / "c.txt").write_text("   \n")  # empty report
    write_image(tmp_path / "d.png", seed=3)  # no report at all
    (tmp_path / "notes.txt").write_text("not an image's report")  # ignored: no image 'notes'
    (tmp_path / "labels" / "final").mkdir(parents=True)
    document = {
        "name": "ds",
        "description": "",
        "images_dir": ".",
        "labels_dir": "labels",
        "objects": {
            "b": {"image": {"ext": ".jpg", "info": {"name": "b.jpg", "report": "Small left pleural effusion."}}, "labels": {}},
            "gone": {"image": {"ext": ".png", "info": {"report": "Cardiomegaly."}}, "labels": {}},
        },
    }
    (tmp_path / "datastore_v2.json").write_text(json.dumps(document))

    with caplog.at_level("WARNING", logger="afloc.training"):
        pairs = load_pairs(tmp_path)

    assert pairs.kind == "datastore"
    assert [p.id for p in pairs] == ["a", "b"]
    assert pairs[0].sentences == ("right lower lobe opacity", "pneumonia")
    assert pairs[1].sentences == ("small left pleural effusion",)
    assert pairs.skipped_empty_report == 2 and pairs.skipped_missing_image == 1
    joined = "\n".join(pairs.warnings)
    for name in ("c.png", "d.png", "gone.png"):
        assert name in joined
    assert "d.png" in caplog.text
    assert "skipped: 2 empty report, 1 missing image" in pairs.summary()


def test_datastore_json_report_wins_over_sidecar_and_bad_json_is_named(tmp_path):
    write_image(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("Sidecar text.")
    objects = {"x": {"image": {"ext": ".png", "info": {"report": "Edited in the server."}}}}
    (tmp_path / "datastore_v2.json").write_text(json.dumps({"name": "d", "description": "", "objects": objects}))
    assert load_pairs(tmp_path)[0].sentences == ("edited in the server",)

    (tmp_path / "datastore_v2.json").write_text("{not json")
    with pytest.raises(AFLocError, match="datastore_v2.json"):
        load_pairs(tmp_path)


def test_nothing_usable_and_missing_source_raise(tmp_path):
    with pytest.raises(AFLocError, match="does not exist"):
        load_pairs(tmp_path / "nope")
    write_image(tmp_path / "only.png")
    with pytest.raises(AFLocError, match=r"no usable image-report pairs.*only\.png"):
        load_pairs(tmp_path)
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(AFLocError, match="not a .csv"):
        load_pairs(tmp_path / "notes.md")


# ----------------------------------------------------------------------------------- CSV
def test_csv_relative_paths_groups_and_skips(tmp_path):
    root = tmp_path / "set"
    write_image(root / "img" / "p1.png")
    write_image(root / "img" / "p2.png", seed=1)
    write_image(tmp_path / "elsewhere.png", seed=2)
    rows = [
        {"id": "one", "file": "img/p1.png", "report": "Left apical pneumothorax.", "patient": "7"},
        {"id": "two", "file": "img/p2.png", "report": "nan", "patient": "8"},
        {"id": "three", "file": "img/missing.png", "report": "Effusion.", "patient": "9"},
        {"id": "four", "file": str(tmp_path / "elsewhere.png"), "report": "Normal heart size.", "patient": "7"},
    ]
    manifest = root / "pairs.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    pairs = load_pairs(manifest)
    assert [p.id for p in pairs] == ["one", "four"]
    assert pairs[0].image == root / "img" / "p1.png"
    assert pairs[0].group == "7" == pairs[1].group
    assert pairs.skipped_empty_report == 1 and pairs.skipped_missing_image == 1
    assert any("line 4" in w and "missing.png" in w for w in pairs.warnings)


def test_csv_without_needed_columns_names_them(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("name,notes\na.png,hello\n")
    with pytest.raises(AFLocError, match=r"image column.*found columns: name, notes"):
        load_pairs(manifest)


@pytest.mark.skipif(not CXR_NOTES.is_file(), reason="cxr-notes data set not present")
def test_real_cxr_notes_manifest_loads():
    pairs = load_pairs(CXR_NOTES)
    assert len(pairs) == 158
    assert all(p.image.is_file() and p.sentences for p in pairs)


# --------------------------------------------------------------------------------- MIMIC
def _mimic_tree(root: Path) -> None:
    studies = {
        ("10", "10000032", "50414267"): ["d1", "d2"],  # d2 is lateral
        ("10", "10000032", "53189527"): ["d3"],  # test split
        ("11", "11000011", "51000001"): ["d4"],  # validate split
        ("11", "11000011", "52000002"): ["d5"],  # no report
    }
    for (group, subject, study), dicoms in studies.items():
        folder = root / "files" / f"p{group}" / f"p{subject}" / f"s{study}"
        for n, dicom in enumerate(dicoms):
            write_image(folder / f"{dicom}.jpg", seed=n)
        if study != "52000002":
            (folder.parent / f"s{study}.txt").write_text(
                "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
                " INDICATION:  Cough.\n\n FINDINGS:  Mild cardiomegaly.  No effusion.\n\n"
                " IMPRESSION:  No acute process.\n"
            )
    views = {"d1": "PA", "d2": "LATERAL", "d3": "AP", "d4": "AP", "d5": "PA"}
    splits = {"d1": "train", "d2": "train", "d3": "test", "d4": "validate", "d5": "train"}
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as handle:
        handle.write("dicom_id,subject_id,study_id,ViewPosition\n")
        handle.writelines(f"{d},0,0,{v}\n" for d, v in views.items())
    with (root / "mimic-cxr-2.0.0-split.csv").open("w") as handle:
        handle.write("dicom_id,study_id,subject_id,split\n")
        handle.writelines(f"{d},0,0,{s}\n" for d, s in splits.items())


def test_mimic_layout_views_splits_and_reports(tmp_path):
    _mimic_tree(tmp_path)
    pairs = load_pairs(tmp_path)
    assert pairs.kind == "mimic"
    assert [p.id for p in pairs] == ["d1", "d4"]
    assert pairs[0].sentences == ("mild cardiomegaly", "no effusion", "no acute process")
    assert pairs[0].group == "p10000032"
    assert pairs.skipped["other_view"] == 1 and pairs.skipped["test_split"] == 1
    assert pairs.skipped_empty_report == 1 and any("d5.jpg" in w for w in pairs.warnings)
    train, val = split_pairs(pairs.pairs, 0.5)
    assert [p.id for p in train] == ["d1"] and [p.id for p in val] == ["d4"]


def test_mimic_reports_in_a_separate_tree(tmp_path):
    images, reports = tmp_path / "jpg", tmp_path / "reports"
    _mimic_tree(images)
    for report in list(images.rglob("s*.txt")):
        target = reports / report.relative_to(images)
        target.parent.mkdir(parents=True, exist_ok=True)
        report.rename(target)
    assert len(load_pairs(images, reports_root=reports)) == 2
    with pytest.raises(AFLocError, match="no usable"):
        load_pairs(images)


# --------------------------------------------------------------------------------- split
def test_split_keeps_patients_together_and_is_deterministic(tmp_path):
    write_image(tmp_path / "x.png")
    from afloc_training.data import ImageReportPair

    pairs = [ImageReportPair(f"i{n}", tmp_path / "x.png", ("a",), group=f"g{n // 3}") for n in range(30)]
    train, val = split_pairs(pairs, 0.2, seed=3)
    assert len(val) >= 6 and len(train) + len(val) == 30
    assert not {p.group for p in train} & {p.group for p in val}
    assert split_pairs(pairs, 0.2, seed=3) == (train, val)
    assert split_pairs(pairs, 0.0) == (pairs, [])
    with pytest.raises(AFLocError, match="val_fraction"):
        split_pairs(pairs, 1.0)


# ------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from afloc_models.model import default_text_model_folder
    from afloc_models.tokenization import ReportTokenizer

    return ReportTokenizer(AutoTokenizer.from_pretrained(str(default_text_model_folder()), local_files_only=True), 32)


def _pairs(tmp_path: Path, n: int = 3):
    from afloc_training.data import ImageReportPair

    out = []
    for i in range(n):
        image = write_image(tmp_path / f"im{i}.png", size=(90, 50), seed=i)
        out.append(ImageReportPair(f"im{i}", image, ("left effusion", f"sentence {i}"), group=str(i)))
    return out


def test_dataset_crops_are_reproducible_and_normalised(tmp_path):
    pairs = _pairs(tmp_path)
    train = PairDataset(pairs, DATA, channels=1, train=True, seed=5)
    first = train[1]
    assert isinstance(first, Sample) and first.image.shape == (1, 64, 64) and first.index == 1
    assert torch.equal(PairDataset(pairs, DATA, 1, True, seed=5)[1].image, first.image)
    crops = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        crops.add(train[1].image.numpy().tobytes())
    assert len(crops) > 1  # the crop moves between epochs

    val = PairDataset(pairs, DATA, channels=3, train=False)
    a, b = val[0].image, val[0].image
    assert a.shape == (3, 64, 64) and torch.equal(a, b) and torch.equal(a[0], a[2])
    # 90x50 letterboxed to 72: padding rows are 0 before normalisation -> (0 - 0.5) / 0.25 = -2.
    assert float(a.min()) == pytest.approx(-2.0) and float(a.max()) <= 2.0 + 1e-6


def test_drop_negated_keeps_what_a_report_states(tmp_path):
    """``data.drop_negated``: sentences stating an absence leave training and validation alike."""
    import dataclasses

    from afloc_training.data import ImageReportPair

    report = ("small left pleural effusion", "no pneumothorax", "heart size is normal",
              "there is no focal consolidation", "without edema", "right basilar atelectasis")
    stated = ("small left pleural effusion", "heart size is normal", "right basilar atelectasis")
    image = write_image(tmp_path / "a.png")
    dropping = dataclasses.replace(DATA, drop_negated=True)
    for train in (True, False):
        assert PairDataset([], DATA, 1, train=train).sentences(report, 0) == report  # off: every sentence
        assert PairDataset([], dropping, 1, train=train).sentences(report, 0) == stated  # order kept
        # Through the item itself, as the trainer's workers read it.
        item = PairDataset([ImageReportPair("a", image, report, "a")], dropping, 1, train=train)[0]
        assert item.sentences == stated
    # A normal report says nothing but absences: it keeps them, never goes empty.
    normal = ("no pleural effusion or pneumothorax", "no acute cardiopulmonary process")
    assert PairDataset([], dropping, 1, train=True).sentences(normal, 0) == normal


def test_colour_images_become_luma_for_grayscale_models(tmp_path):
    from afloc_training.data import ImageReportPair

    image = write_image(tmp_path / "rgb.png", mode="RGB")
    sample = PairDataset([ImageReportPair("c", image, ("x",), "c")], DATA, channels=1, train=False)[0]
    assert sample.image.shape == (1, 64, 64)


def test_unreadable_image_is_skipped_named_and_dropped_by_collate(tmp_path, tokenizer, caplog):
    pairs = _pairs(tmp_path)
    pairs[1].image.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = PairDataset(pairs, DATA, channels=1, train=True)
    with caplog.at_level("WARNING", logger="afloc.training"):
        items = [dataset[i] for i in range(3)]
    assert isinstance(items[1], Skipped) and "im1.png" in items[1].path
    assert "im1.png" in caplog.text

    batch = ReportCollate(tokenizer, channels=1, crop=64)(items)
    assert len(batch) == 2 and batch.images.shape == (2, 1, 64, 64)
    assert batch.indices.tolist() == [0, 2]
    assert len(batch.tokens) == 2 and int(batch.tokens.n_sentences[0]) == 2
    assert [s.index for s in batch.skipped] == [1]

    empty = ReportCollate(tokenizer, channels=1, crop=64)([items[1]])
    assert len(empty) == 0 and empty.tokens is None


def test_crop_larger_than_resize_is_a_config_error(tmp_path):
    with pytest.raises(AFLocError, match="data.crop"):
        PairDataset(_pairs(tmp_path, 1), DataConfig(resize=64, crop=96), channels=1, train=True)
