"""External test sets: independent of the training generator, masks on the lesions, reproducible."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from afloc_models.errors import ConfigError
from afloc_models.evaluation.cli import load_cases
from afloc_models.evaluation.external import FINDINGS, generate_case
from afloc_models.evaluation.external.inserted import INSERTABLE, estimate_lungs, insert_findings
from afloc_models.evaluation.external.writer import write_real_set, write_synthetic_set
from afloc_models.imaging import read_image

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "afloc_models" / "evaluation" / "external"


def _cxr_notes() -> Path | None:
    for parent in Path(__file__).resolve().parents[1:4]:
        candidate = parent / "shared" / "data" / "cxr-notes"
        if (candidate / "pairs.csv").is_file():
            return candidate
    return None


CXR_NOTES = _cxr_notes()


def test_shares_no_code_with_the_training_generator():
    """Nothing in the package imports afloc_training (the phantoms, their language, anything)."""
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("afloc_training"), f"{path.name} imports {name}"


@pytest.fixture(scope="module")
def pairs():
    """24 cases with and without their findings drawn (same seeds)."""
    return [
        (generate_case(np.random.default_rng([9, i]), 160), generate_case(np.random.default_rng([9, i]), 160, False))
        for i in range(24)
    ]


def test_cases_are_reproducible_by_seed():
    a = generate_case(np.random.default_rng([3, 1]), 128)
    b = generate_case(np.random.default_rng([3, 1]), 128)
    c = generate_case(np.random.default_rng([3, 2]), 128)
    assert np.array_equal(a.image, b.image) and a.report == b.report
    assert [f.prompt for f in a.findings] == [f.prompt for f in b.findings]
    assert all(np.array_equal(f.mask, g.mask) for f, g in zip(a.findings, b.findings))
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_masks_cover_what_the_findings_changed(pairs):
    """Drawing the findings changes the noise-free projection mostly inside their masks, and every
    finding visibly changes its own mask."""
    for index, (drawn, plain) in enumerate(pairs):
        change = np.abs(drawn.attenuation - plain.attenuation)
        union = np.zeros(change.shape, dtype=bool)
        for finding, same in zip(drawn.findings, plain.findings):
            assert np.array_equal(finding.mask, same.mask), (index, finding.name)
            assert finding.mask.shape == drawn.image.shape and finding.mask.any(), (index, finding.name)
            union |= finding.mask
        share = change[ndimage.binary_dilation(union, iterations=2)].sum() / change.sum()
        assert share > 0.7, (index, [f.name for f in drawn.findings], share)
        for finding in drawn.findings:
            others = np.zeros_like(union)
            for other in drawn.findings:
                if other is not finding:
                    others |= other.mask
            own = finding.mask & ~others
            if own.sum() > 20:
                assert change[own].mean() > 0.05, (index, finding.name, change[own].mean())


def test_sides_prompts_and_categories(pairs):
    seen = set()
    for drawn, _ in pairs:
        assert drawn.image.dtype == np.float32 and 0.0 <= drawn.image.min() and drawn.image.max() <= 1.0
        for finding in drawn.findings:
            seen.add(finding.name)
            assert finding.name in FINDINGS
            if finding.side in ("right", "left"):
                assert finding.side in finding.prompt
                cols = np.nonzero(finding.mask)[1]
                middle = drawn.image.shape[1] / 2
                # The patient's right is on the image left.
                assert (cols.mean() < middle) == (finding.side == "right"), finding.prompt
            if finding.zone == "upper" and finding.name != "pneumothorax":
                assert "upper" in finding.prompt
    assert len(seen) >= 6


def test_writer_layout_reads_back_and_is_byte_identical(tmp_path):
    first = write_synthetic_set(tmp_path / "a", 10, seed=5, size=128)
    second = write_synthetic_set(tmp_path / "b", 10, seed=5, size=128)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    cases, fmt = load_cases(first)
    assert fmt == "masks" and cases
    for case in cases:
        pixels = read_image(case.image_path).pixels
        assert case.mask(pixels.shape).any()
    with pytest.raises(ConfigError, match="not empty"):
        write_synthetic_set(first, 3, seed=5, size=128)


def test_dicom_monochrome1_reads_back_upright(tmp_path):
    """A case stored as MONOCHROME1 reads back with dense tissue bright, as it was simulated."""
    index = next(i for i in range(200) if generate_case(np.random.default_rng([5, 7919, i]), 128).storage == "dicom-mono1")
    out = write_synthetic_set(tmp_path / "s", index + 1, seed=5, size=128)
    case = generate_case(np.random.default_rng([5, 7919, index]), 128)
    pixels = read_image(out / f"ext_{index:05d}.dcm").pixels
    assert np.corrcoef(pixels.ravel(), case.image.ravel())[0, 1] > 0.98


def test_cli_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "synthetic").mkdir()
    (tmp_path / "synthetic" / "x.txt").write_text("mine")
    run = subprocess.run([sys.executable, "-m", "afloc_models.evaluation.external", "--out", str(tmp_path),
                          "--n", "2", "--no-real", "--overwrite"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1 and "afloc-external: error:" in run.stderr and "Traceback" not in run.stderr
    assert "not an external test set" in run.stderr
    assert (tmp_path / "synthetic" / "x.txt").read_text() == "mine"


@pytest.mark.skipif(CXR_NOTES is None, reason="shared cxr-notes data not present")
def test_inserted_lesions_on_real_radiographs(tmp_path):
    """Lesions go inside the estimated lung fields and change the image inside their masks."""
    out = write_real_set(tmp_path / "real", seed=3, cxr_notes=CXR_NOTES, variants=1, limit=24)
    assert out is not None
    import json

    manifest = json.loads((out / "ground_truth" / "manifest.json").read_text())
    assert len(manifest["sources_used"]) >= 5 and "RG1_UNCI" in manifest["sources_used"]
    cases, _ = load_cases(out)
    assert {c.category for c in cases} <= set(INSERTABLE)

    from afloc_models.imaging import to_grayscale

    pixels = read_image(CXR_NOTES / "images" / f"{manifest['sources_used'][0]}.jpg").pixels
    pixels = to_grayscale(pixels) if pixels.ndim == 3 else pixels
    pixels = ndimage.zoom(pixels, 384 / max(pixels.shape), order=1).clip(0, 1)
    lungs = estimate_lungs(pixels)
    assert lungs is not None
    for seed in range(6):
        case = insert_findings(np.random.default_rng(seed), pixels, lungs, count=2)
        change = np.abs(case.image - pixels)
        for finding in case.findings:
            grown = ndimage.binary_dilation(lungs.both, iterations=4)
            assert (finding.mask & grown).sum() >= 0.95 * finding.mask.sum(), finding.prompt
            inside = change[finding.mask].mean()
            assert inside > 0.01, (finding.prompt, inside)
        union = np.zeros(pixels.shape, dtype=bool)
        for finding in case.findings:
            union |= finding.mask
        assert change[ndimage.binary_dilation(union, iterations=6)].sum() >= 0.9 * change.sum()
