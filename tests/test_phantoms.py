"""Synthetic chest phantoms: anatomy convention, masks vs reports, visibility, datastore, CLI."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from afloc_models.errors import ConfigError
from afloc_training.phantoms import (
    CSV_COLUMNS,
    FINDING_NAMES,
    GROUND_TRUTH_DIR,
    _generate,
    generate_phantom,
    write_phantom_datastore,
)
from afloc_training.reports import parse_report

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
N_SAMPLE = 120

# Words that name each finding in a report sentence, positive or negative. Written here, apart
# from the generator's templates, so a template that names the wrong thing is caught.
TERMS = {
    "opacity": r"opacit|consolidat|airspace|pneumonia",
    "nodule": r"nodul|\bmass",
    "effusion": r"effusion|pleural fluid",
    "pneumothorax": r"pneumothora",
    "atelectasis": r"atelecta",
    "cardiomegaly": r"cardiomegaly|heart|cardi",
    "edema": r"edema|congestion|haziness",
}
NEGATION = re.compile(r"\b(no|not|without|normal|clear|unremarkable|negative|intact|none)\b")
SIDE_WORDS = re.compile(r"\b(right|left|bilateral)\b")
ZONE_WORDS = {
    "upper": r"\b(upper|apical|apex)\b",
    "middle": r"\b(mid|middle|midlung)\b",
    "lower": r"\b(lower|base|basilar|basal)\b",
}


@pytest.fixture(scope="module")
def sample():
    """``N_SAMPLE`` phantoms at ``SIZE`` px from fixed seeds."""
    return [generate_phantom(np.random.default_rng([11, i]), SIZE) for i in range(N_SAMPLE)]


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    """``(row, column)`` centroid of a ``[H, W]`` mask, as fractions of the image size."""
    rows, cols = np.nonzero(mask)
    return rows.mean() / mask.shape[0], cols.mean() / mask.shape[1]


def test_phantom_types_and_shapes(sample):
    for phantom in sample:
        assert phantom.image.dtype == np.uint8 and phantom.image.shape == (SIZE, SIZE)
        assert 0 <= len(phantom.findings) <= 3
        assert len({f.name for f in phantom.findings}) == len(phantom.findings)
        for finding in phantom.findings:
            assert finding.name in FINDING_NAMES
            assert finding.mask.dtype == bool and finding.mask.shape == (SIZE, SIZE)
            assert finding.mask.any(), finding.prompt
    counts = [len(p.findings) for p in sample]
    assert counts.count(0) >= 5, "some studies are normal"
    assert {f.name for p in sample for f in p.findings} == set(FINDING_NAMES)


def test_same_seed_same_phantom_and_different_seeds_differ():
    a = generate_phantom(np.random.default_rng(123), 96)
    b = generate_phantom(np.random.default_rng(123), 96)
    c = generate_phantom(np.random.default_rng(124), 96)
    assert a.image.tobytes() == b.image.tobytes() and a.report == b.report
    assert [f.prompt for f in a.findings] == [f.prompt for f in b.findings]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.findings, b.findings))
    assert a.image.tobytes() != c.image.tobytes()


def test_radiology_convention_heart_is_on_the_image_right(sample):
    """Patient's left (heart side) is the image right: the heart's band is brighter there."""
    for phantom in sample:
        if phantom.findings:
            continue
        image = phantom.image.astype(float)
        band = image[int(0.55 * SIZE) : int(0.68 * SIZE)]
        # Columns at 60-70 % (heart over the patient's left) vs their mirror (patient's right lung).
        heart_side = band[:, int(0.60 * SIZE) : int(0.70 * SIZE)].mean()
        lung_side = band[:, int(0.30 * SIZE) : int(0.40 * SIZE)].mean()
        assert heart_side > lung_side + 20


def test_mask_side_zone_and_prompt(sample):
    for phantom in sample:
        for f in phantom.findings:
            row, col = _centroid(f.mask)
            if f.side == "right":  # patient's right = image left
                assert col < 0.5, (f.prompt, col)
            elif f.side == "left":
                assert col > 0.5, (f.prompt, col)
            elif f.side == "bilateral":
                assert f.mask[:, : SIZE // 2].any() and f.mask[:, SIZE // 2 :].any(), f.prompt
            if f.zone == "upper":
                assert row < 0.36, (f.prompt, row)
            elif f.zone == "middle":
                assert 0.26 < row < 0.60, (f.prompt, row)
            elif f.zone == "lower":
                assert row > 0.44, (f.prompt, row)
            if f.name == "cardiomegaly":
                assert f.side is None and f.zone is None and f.prompt == "cardiomegaly"
                assert col > 0.5, "the heart lies mostly on the patient's left"
            if f.side in ("left", "right"):
                assert f.side in f.prompt.split()
            if f.zone:
                assert f"{f.zone} zone" in f.prompt or (f.name == "pneumothorax" and "apical" in f.prompt)
            assert f.prompt == f.prompt.strip().lower() and f.prompt


def test_findings_are_clearly_visible():
    """Contrast of each finding against the same study rendered without findings."""
    for i in range(60):
        with_findings = _generate(np.random.default_rng([21, i]), SIZE, draw_findings=True)
        without = _generate(np.random.default_rng([21, i]), SIZE, draw_findings=False)
        assert with_findings.report == without.report
        for f in with_findings.findings:
            delta = with_findings.image[f.mask].mean() - without.image[f.mask].mean()
            if f.name == "pneumothorax":
                assert delta < -6, (f.prompt, delta)  # air without lung markings is darker
            else:
                assert delta > 15, (f.prompt, delta)


def _names_in(sentence: str) -> set[str]:
    return {name for name, pattern in TERMS.items() if re.search(pattern, sentence)}


def test_report_parses_and_matches_findings(sample):
    """Every finding is stated with its side and zone; no other finding is stated."""
    for phantom in sample:
        sentences = parse_report(phantom.report)
        assert sentences, phantom.report
        by_name = {f.name: f for f in phantom.findings}
        stated: set[str] = set()
        for sentence in sentences:
            names = _names_in(sentence)
            if not names or NEGATION.search(sentence):
                continue
            assert len(names) == 1, (sentence, names)
            name = names.pop()
            assert name in by_name, (sentence, phantom.report)
            finding = by_name[name]
            sides = set(SIDE_WORDS.findall(sentence))
            if name == "edema":
                assert sides <= {"bilateral"}, sentence
            elif finding.side:
                assert sides == {finding.side}, (sentence, finding.side)
            else:
                assert not sides, sentence
            if finding.zone:
                zones = {zone for zone, pattern in ZONE_WORDS.items() if re.search(pattern, sentence)}
                assert zones == {finding.zone}, (sentence, finding.zone)
            stated.add(name)
        assert stated == set(by_name), (phantom.report, sorted(by_name))


def test_negatives_never_name_a_present_finding(sample):
    for phantom in sample:
        present = {f.name for f in phantom.findings}
        lung_findings = present - {"cardiomegaly"}
        for sentence in parse_report(phantom.report):
            if NEGATION.search(sentence):
                assert not (_names_in(sentence) & present), (sentence, present)
                if lung_findings:
                    assert "lungs are clear" not in sentence, (sentence, present)
                if present:
                    assert "no acute cardiopulmonary" not in sentence and "normal chest" not in sentence


def test_reports_vary_and_sometimes_have_sections(sample):
    reports = [p.report for p in sample]
    assert len(set(reports)) > 0.9 * len(reports)  # normal studies may share a report
    assert sum("FINDINGS:" in r.upper() for r in reports) > 10
    assert sum("IMPRESSION:" not in r.upper() for r in reports) > 10
    assert any(re.search(r"^\s*2\. ", r, re.MULTILINE) for r in reports), "numbered impressions occur"


@pytest.mark.parametrize("size", [63, 0, 4096, 100.0, True])
def test_generate_rejects_bad_size(size):
    with pytest.raises(ConfigError, match="size"):
        generate_phantom(np.random.default_rng(0), size)


def test_small_images_still_have_masks():
    for i in range(40):
        for f in generate_phantom(np.random.default_rng([31, i]), 64).findings:
            assert f.mask.any(), f.prompt


# --------------------------------------------------------------------------------- datastore


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_datastore_layout_is_deterministic_and_matches_the_generator(tmp_path):
    a = write_phantom_datastore(tmp_path / "a", n=6, seed=5, size=64)
    b = write_phantom_datastore(tmp_path / "b", n=6, seed=5, size=64)
    tree = _tree(a)
    assert tree == _tree(b), "same seed, same bytes"
    assert _tree(write_phantom_datastore(tmp_path / "c", n=6, seed=6, size=64)) != tree
    parallel = write_phantom_datastore(tmp_path / "d", n=6, seed=5, size=64, workers=2)
    assert _tree(parallel) == tree, "worker processes write the same bytes, findings.csv in order"

    images = sorted(name for name in tree if name.endswith(".png") and "/" not in name)
    assert images == [f"phantom_{i:05d}.png" for i in range(6)]
    assert all(name.replace(".png", ".txt") in tree for name in images)
    assert not [name for name in tree if name.endswith(".tmp")]

    gt = a / GROUND_TRUTH_DIR
    manifest = json.loads((gt / "manifest.json").read_text())
    assert (manifest["n"], manifest["seed"], manifest["size"]) == (6, 5, 64)
    with (gt / "findings.csv").open(newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    for i in range(6):
        phantom = generate_phantom(np.random.default_rng([5, i]), 64)
        stem = f"phantom_{i:05d}"
        assert (a / f"{stem}.txt").read_text(encoding="utf-8") == phantom.report
        assert np.array_equal(np.asarray(Image.open(a / f"{stem}.png")), phantom.image)
        mine = [r for r in rows if r["image"] == f"../{stem}.png"]
        assert [(r["finding"], r["side"], r["zone"], r["prompt"]) for r in mine] == [
            (f.name, f.side or "", f.zone or "", f.prompt) for f in phantom.findings
        ]
        for row, finding in zip(mine, phantom.findings):
            assert (gt / row["image"]).resolve() == (a / f"{stem}.png").resolve()
            mask = np.asarray(Image.open(gt / row["mask_file"]))
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask > 0, finding.mask)


def test_smaller_n_is_a_prefix_of_larger_n(tmp_path):
    small = _tree(write_phantom_datastore(tmp_path / "s", n=2, seed=9, size=64))
    large = _tree(write_phantom_datastore(tmp_path / "l", n=4, seed=9, size=64))
    assert all(large[name] == data for name, data in small.items() if name.startswith("phantom_"))


def test_existing_phantoms_need_overwrite(tmp_path):
    out = write_phantom_datastore(tmp_path / "ds", n=3, seed=1, size=64)
    (out / "keep_me.txt").write_text("user file")
    with pytest.raises(ConfigError, match="already holds phantoms"):
        write_phantom_datastore(out, n=2, seed=2, size=64)
    write_phantom_datastore(out, n=2, seed=2, size=64, overwrite=True)
    assert sorted(p.name for p in out.glob("phantom_*")) == [
        "phantom_00000.png", "phantom_00000.txt", "phantom_00001.png", "phantom_00001.txt"
    ]
    assert (out / "keep_me.txt").read_text() == "user file"
    assert json.loads((out / GROUND_TRUTH_DIR / "manifest.json").read_text())["n"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "positive"), ({"n": -3}, "positive"), ({"size": 32}, "between"), ({"n": 2.5}, "positive"),
])
def test_writer_rejects_bad_arguments(tmp_path, kwargs, message):
    args = {"n": 2, "seed": 0, "size": 64, **kwargs}
    with pytest.raises(ConfigError, match=message):
        write_phantom_datastore(tmp_path / "x", **args)


def test_writer_rejects_a_file_as_output(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_phantom_datastore(target, n=1, seed=0, size=64)


@pytest.mark.slow
def test_monai_label_local_datastore_sees_only_the_images(tmp_path):
    """A real LocalDatastore lists exactly the N images; ground truth is neither image nor label."""
    from monailabel.config import settings
    from monailabel.datastore.local import LocalDatastore

    out = write_phantom_datastore(tmp_path / "ds", n=4, seed=3, size=64)
    # MONAI Label's defaults, our app's additions, and the ground-truth file types for good measure.
    extensions = [*settings.MONAI_LABEL_DATASTORE_FILE_EXT, "*.dcm", "*.dicom", "*.jpeg", "*.csv", "*.json"]
    datastore = LocalDatastore(str(out), extensions=extensions, auto_reload=False)
    assert sorted(datastore.list_images()) == [f"phantom_{i:05d}" for i in range(4)]
    assert datastore.get_labeled_images() == []
    assert datastore.get_image_uri("phantom_00002").endswith("phantom_00002.png")
    assert all(not tags for tags in (datastore.get_labels_by_image_id(i) for i in datastore.list_images()))


# --------------------------------------------------------------------------------- CLI


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "afloc_training.phantoms", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_cli_writes_a_datastore(tmp_path):
    result = _cli("--out", str(tmp_path / "ds"), "--n", "3", "--seed", "4", "--size", "64")
    assert result.returncode == 0, result.stderr
    assert "wrote 3 phantoms" in result.stdout
    assert sorted(p.name for p in (tmp_path / "ds").glob("phantom_*.png")) == [
        "phantom_00000.png", "phantom_00001.png", "phantom_00002.png"
    ]
    assert (tmp_path / "ds" / GROUND_TRUTH_DIR / "findings.csv").is_file()
    varied = _cli("--out", str(tmp_path / "v"), "--n", "2", "--seed", "4", "--size", "64", "--style", "varied",
                  "--backgrounds", "none")
    assert varied.returncode == 0, varied.stderr
    manifest = json.loads((tmp_path / "v" / GROUND_TRUTH_DIR / "manifest.json").read_text())
    assert manifest["style"] == "varied" and manifest["real_backgrounds"] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--n", "0"], "--n must be a positive integer"),
        (["--n", "-2"], "--n must be a positive integer"),
        (["--n", "abc"], "invalid int value"),
        (["--n", "2", "--size", "32"], "--size must be between 64"),
        (["--n", "2", "--out", "IS_A_FILE"], "is a file, not a folder"),
        (["--seed", "1"], "required"),
        (["--n", "2", "--style", "glossy"], "invalid choice: 'glossy'"),
        (["--n", "2", "--real-fraction", "1.5"], "--real-fraction must be between 0 and 1"),
        (["--n", "2", "--real-fraction", "0.5", "--backgrounds", "NOWHERE"], "has no pairs.csv"),
    ],
)
def test_cli_bad_arguments_fail_cleanly(tmp_path, args, message):
    file_path = tmp_path / "file.png"
    file_path.write_bytes(b"not a folder")
    args = [str(file_path) if a == "IS_A_FILE" else str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in args]
    if "--out" not in args:
        args = ["--out", str(tmp_path / "ds"), *args]
    result = _cli(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_to_mix_with_existing_phantoms(tmp_path):
    write_phantom_datastore(tmp_path / "ds", n=1, seed=0, size=64)
    result = _cli("--out", str(tmp_path / "ds"), "--n", "1", "--size", "64")
    assert result.returncode == 1
    assert "--overwrite" in result.stderr and "Traceback" not in result.stderr


def test_killed_run_leaves_only_complete_images(tmp_path):
    """SIGKILL mid-run: every PNG present decodes fully and has its report."""
    out = tmp_path / "ds"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "afloc_training.phantoms", "--out", str(out), "--n", "2000", "--size", "256"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("phantom_*.png"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    images = sorted(out.glob("phantom_*.png"))
    assert 5 <= len(images) < 2000
    for path in images:
        with Image.open(path) as image:
            image.load()  # raises on a truncated file
            assert image.size == (256, 256)
        assert path.with_suffix(".txt").read_text(encoding="utf-8").strip()


# --- the varied style (domain randomisation) -------------------------------------------------


def test_plain_style_is_the_default_and_unchanged_by_the_styles():
    """Adding styles changed nothing about plain phantoms: the default draws them, bit for bit the
    same with ``style="plain"`` as without the argument."""
    for i in range(5):
        default = generate_phantom(np.random.default_rng([31, i]), SIZE)
        plain = generate_phantom(np.random.default_rng([31, i]), SIZE, style="plain")
        assert np.array_equal(default.image, plain.image) and default.report == plain.report


def test_varied_style_keeps_masks_and_reports_but_changes_the_look():
    """Same seed: the varied study has the same findings, report and (pose aside) the same masks'
    meaning; its image differs from the plain one, and it is reproducible."""
    for i in range(8):
        a = generate_phantom(np.random.default_rng([32, i]), SIZE, style="varied")
        b = generate_phantom(np.random.default_rng([32, i]), SIZE, style="varied")
        plain = generate_phantom(np.random.default_rng([32, i]), SIZE, style="plain")
        assert np.array_equal(a.image, b.image) and a.report == b.report
        assert a.report == plain.report
        assert [f.prompt for f in a.findings] == [f.prompt for f in plain.findings]
        assert a.image.dtype == np.uint8 and a.image.shape == (SIZE, SIZE)
        assert not np.array_equal(a.image, plain.image)
        for f in a.findings:
            assert f.mask.shape == (SIZE, SIZE) and f.mask.any(), f.prompt


def test_varied_findings_stay_visible_in_the_finding_s_own_mask():
    """Findings get fainter or softer in the varied style but never vanish: measured against the
    same varied study drawn without its findings (same pose, texture, devices and noise)."""
    deltas = []
    for i in range(40):
        with_findings = _generate(np.random.default_rng([33, i]), SIZE, draw_findings=True, style="varied")
        without = _generate(np.random.default_rng([33, i]), SIZE, draw_findings=False, style="varied")
        for f in with_findings.findings:
            delta = float(with_findings.image[f.mask].mean()) - float(without.image[f.mask].mean())
            deltas.append(-delta if f.name == "pneumothorax" else delta)
            assert deltas[-1] > 1.5, (i, f.prompt, delta)
    assert np.median(deltas) > 8


def test_varied_style_varies_pose_and_exposure():
    """Across studies the varied style spreads the image statistics far wider than plain does."""
    def spread(style):
        images = [generate_phantom(np.random.default_rng([34, i]), SIZE, style=style).image for i in range(24)]
        return np.std([im.mean() for im in images]), np.std([im.std() for im in images])

    plain_mean, plain_std = spread("plain")
    varied_mean, varied_std = spread("varied")
    assert varied_mean > 1.5 * plain_mean and varied_std > 1.5 * plain_std


def test_unknown_style_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown phantom style 'glossy'"):
        generate_phantom(np.random.default_rng(0), SIZE, style="glossy")
    with pytest.raises(ConfigError, match="unknown phantom style"):
        write_phantom_datastore(tmp_path / "x", 2, 0, SIZE, style="glossy")
