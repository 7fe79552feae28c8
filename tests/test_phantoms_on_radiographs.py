"""Training studies drawn on real radiographs, and the split that keeps them off the test set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afloc_models.errors import ConfigError
from afloc_models.radiograph_split import TEST, TRAIN, radiograph_split
from afloc_training.phantoms import write_phantom_datastore
from afloc_training.phantoms.lung_fields import find_lung_fields
from afloc_training.phantoms.radiographs import find_backgrounds, generate_on_radiograph

REPO = Path(__file__).resolve().parents[1]
CXR_NOTES = REPO.parent / "shared" / "data" / "cxr-notes"
needs_cxr_notes = pytest.mark.skipif(not (CXR_NOTES / "pairs.csv").is_file(), reason="../shared/data/cxr-notes absent")


def _rows() -> list[dict]:
    with (CXR_NOTES / "pairs.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_split_is_fixed_by_patient_and_roughly_even():
    patients = [f"patient-{i}" for i in range(400)]
    sides = [radiograph_split(p) for p in patients]
    assert set(sides) == {TRAIN, TEST}
    assert 0.4 < sides.count(TRAIN) / len(sides) < 0.6
    assert [radiograph_split(p) for p in patients] == sides  # no state, no seed
    assert radiograph_split(" 17 ") == radiograph_split("17")


@needs_cxr_notes
def test_training_backgrounds_and_the_real_test_set_share_no_patient(tmp_path):
    """Every background is a training-split patient; the real external set uses only the others."""
    from afloc_models.evaluation.external.writer import _real_sources

    rows = {row["id"]: row for row in _rows()}
    backgrounds = find_backgrounds(CXR_NOTES, 128)
    assert len(backgrounds) >= 20
    train_patients = {rows[b.name]["patient"] for b in backgrounds}
    assert all(radiograph_split(p) == TRAIN for p in train_patients)
    test_ids = [name for name, _ in _real_sources(CXR_NOTES) if name in rows]
    assert test_ids
    test_patients = {rows[i]["patient"] for i in test_ids}
    assert not train_patients & test_patients


@needs_cxr_notes
def test_findings_land_inside_the_lungs_and_change_the_image():
    backgrounds = find_backgrounds(CXR_NOTES, 192)
    counts: dict[str, int] = {}
    for i in range(30):
        rng = np.random.default_rng([3, i])
        background = backgrounds[i % len(backgrounds)]
        study = generate_on_radiograph(rng, background)
        again = generate_on_radiograph(np.random.default_rng([3, i]), background)
        assert np.array_equal(study.image, again.image) and study.report == again.report
        assert study.image.shape == (192, 192) and study.image.dtype == np.uint8
        lungs = background.lungs.right | background.lungs.left
        original = np.round(background.pixels * 255)
        assert study.findings, study.report
        for finding in study.findings:
            assert finding.name != "cardiomegaly"
            assert finding.mask.any() and (finding.mask & ~lungs).sum() == 0, finding.prompt
            changed = np.abs(study.image.astype(float) - original)[finding.mask].mean()
            assert changed > 3, (finding.prompt, changed)
            if finding.side in ("right", "left"):
                other = background.lungs.left if finding.side == "right" else background.lungs.right
                assert not (finding.mask & other).any(), finding.prompt
            counts[finding.name] = counts.get(finding.name, 0) + 1
    assert len(counts) >= 5, counts


@needs_cxr_notes
def test_patient_right_lung_is_on_the_image_left():
    for background in find_backgrounds(CXR_NOTES, 128)[:10]:
        right_cols = np.nonzero(background.lungs.right)[1].mean()
        left_cols = np.nonzero(background.lungs.left)[1].mean()
        assert right_cols < 64 < left_cols


def test_lung_fields_refuse_an_image_without_lungs():
    assert find_lung_fields(np.full((200, 160), 0.5, dtype=np.float32)) is None
    rng = np.random.default_rng(0)
    assert find_lung_fields(rng.random((200, 200)).astype(np.float32)) is None


@needs_cxr_notes
def test_datastore_mixes_real_and_phantom_studies_reproducibly(tmp_path):
    a = write_phantom_datastore(tmp_path / "a", 12, seed=4, size=96, style="varied", backgrounds=CXR_NOTES,
                                real_fraction=0.5)
    b = write_phantom_datastore(tmp_path / "b", 12, seed=4, size=96, style="varied", backgrounds=CXR_NOTES,
                                real_fraction=0.5, workers=2)
    for name in sorted(p.name for p in a.glob("phantom_*")):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    manifest = json.loads((a / "ground_truth" / "manifest.json").read_text())
    assert manifest["style"] == "varied" and manifest["real_fraction"] == 0.5 and manifest["real_backgrounds"] >= 20
    phantom_only = write_phantom_datastore(tmp_path / "c", 12, seed=4, size=96, style="varied", backgrounds=None)
    differs = [name for name in sorted(p.name for p in a.glob("phantom_*.png"))
               if (a / name).read_bytes() != (phantom_only / name).read_bytes()]
    assert 2 <= len(differs) <= 10  # about half the studies are drawn on real radiographs


def test_missing_background_folder_is_a_clear_error_and_auto_falls_back(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="has no pairs.csv"):
        write_phantom_datastore(tmp_path / "x", 2, seed=0, size=64, backgrounds=tmp_path / "nowhere",
                                real_fraction=0.5)
    with pytest.raises(ConfigError, match="real_fraction"):
        write_phantom_datastore(tmp_path / "y", 2, seed=0, size=64, real_fraction=1.5)
    import afloc_training.phantoms.writer as writer

    monkeypatch.setattr(writer, "default_background_folder", lambda: tmp_path / "absent")
    out = write_phantom_datastore(tmp_path / "z", 3, seed=0, size=64, real_fraction=0.5)
    manifest = json.loads((out / "ground_truth" / "manifest.json").read_text())
    assert manifest["real_backgrounds"] == 0 and manifest["real_fraction"] == 0.0
    assert Image.open(out / "phantom_00000.png").size == (64, 64)
