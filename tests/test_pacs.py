"""Learning from the PACS and drafting from its reports: Orthanc (CR/DX + SR) -> AFLoc Label over DICOMweb.

The study files are written here: phantom radiographs as DICOM, their reports as real SR files
written by highdicom (Basic Text, Enhanced and Comprehensive SR), plus the awkward cases: an SR
that is not a report (measurements only), a corrupt SR, an older preliminary report and an
addendum, a study without SR, a study whose only SR is corrupt, and a report whose findings are
all negated. ``tests/browser/run_in_netns.sh`` then starts Orthanc with them and the server in
DICOMweb mode inside a private network namespace and runs ``tests/browser/pacs_checks.py``
there (image info, drafting job, review strategy, two training runs, ``afloc-train --data URL``);
the tests below check its ``pacs.json``.

Needs root (``unshare``) and Orthanc with its DICOMweb plugin (scripts/install_system_deps.sh);
skipped without them, except under CI.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pydicom
import pytest

from tests.browser_runs import REPO_ROOT, require_stack, run_in_netns, server_log_tail

CHECKS = REPO_ROOT / "tests" / "browser" / "pacs_checks.py"
RUN_TIMEOUT_S = 900

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import make_ohif_demo_dicoms as demo  # noqa: E402

pytestmark = pytest.mark.slow

NEGATED_REPORT = "FINDINGS:\nNo pneumothorax. No pleural effusion.\n\nIMPRESSION:\nNo acute cardiopulmonary process."
EARLY_REPORT = "IMPRESSION:\nPreliminary: possible opacity."
ADDENDUM = "Comparison with the prior study shows no change."


def _save(dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(str(path))
    return path


def _measurement_sr(image):
    """A Comprehensive SR with a number and no text: an SR that is not a report."""
    import highdicom as hd

    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report"))
    root.ContentSequence = hd.sr.ContentSequence([
        hd.sr.NumContentItem(name=hd.sr.CodedConcept("410668003", "SCT", "Length"), value=12.0,
                             unit=hd.sr.CodedConcept("mm", "UCUM", "millimeter"), relationship_type="CONTAINS"),
    ])  # fmt: skip
    return hd.sr.ComprehensiveSR(
        evidence=[image], content=hd.sr.ContentSequence([root], is_root=True), series_instance_uid=hd.UID(),
        series_number=950, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
    )


def _corrupt_sr(image, folder: Path):
    from afloc_training.sr_reports import make_report_sr

    path = _save(make_report_sr(image, [("FINDINGS", "Corrupt.")]), folder / "corrupt_tmp.dcm")
    sr = pydicom.dcmread(str(path))
    path.unlink()
    del sr.ContentSequence[0].ContentSequence[0].ValueType
    return sr


@pytest.fixture(scope="module")
def pacs_files(tmp_path_factory) -> dict:
    """DICOM files for Orthanc and what each study should give."""
    from afloc_training.sr_reports import make_report_sr, report_sections, report_text

    folder = tmp_path_factory.mktemp("pacs-dicom")
    expected: dict = {}
    kinds = ("basic", "enhanced", "comprehensive")
    when = dt.datetime(2024, 5, 1, 10, 0)
    for index, seed in enumerate(range(11, 16)):
        image_file = demo.write_demo_dx(folder / f"study{seed}", seed=seed, size=256)
        image = pydicom.dcmread(str(image_file), stop_before_pixels=True)
        report = str(image.ImageComments)
        if seed == 15:
            report = NEGATED_REPORT
        sections = report_sections(report)
        _save(make_report_sr(image, sections, kind=kinds[index % 3], content_datetime=when), folder / f"study{seed}" / "report.dcm")
        expected[image.SeriesInstanceUID] = {"seed": seed, "report": report_text(sections), "kind": kinds[index % 3]}
        if seed == 11:  # the awkward extras beside a good final report
            _save(make_report_sr(image, report_sections(EARLY_REPORT), final=False, content_datetime=when - dt.timedelta(hours=2)),
                  folder / "study11" / "early.dcm")
            _save(make_report_sr(image, [("", ADDENDUM)], addendum=True, content_datetime=when + dt.timedelta(days=1)),
                  folder / "study11" / "addendum.dcm")
            _save(_measurement_sr(image), folder / "study11" / "measurements.dcm")
            _save(_corrupt_sr(image, folder), folder / "study11" / "corrupt.dcm")
            expected[image.SeriesInstanceUID]["report"] += f"\n\nADDENDUM:\n{ADDENDUM}"
    for seed, case in ((21, "no_sr"), (22, "corrupt_only")):
        image_file = demo.write_demo_dx(folder / f"study{seed}", seed=seed, size=256)
        image = pydicom.dcmread(str(image_file), stop_before_pixels=True)
        if case == "corrupt_only":
            _save(_corrupt_sr(image, folder), folder / f"study{seed}" / "corrupt.dcm")
        expected[image.SeriesInstanceUID] = {"seed": seed, "report": None, "case": case}
    return {"folder": folder, "expected": expected}


@pytest.fixture(scope="module")
def pacs_run(pacs_files, afloc_checkpoint, tmp_path_factory) -> dict:
    require_stack("the PACS tests", browser=False)
    out = tmp_path_factory.mktemp("pacs-run")
    env = {"AFLOC_STACK_ARGS": f"--no-demo --dicom {pacs_files['folder']}", "AFLOC_NETNS_CHECK": str(CHECKS)}
    launch = run_in_netns(out, [afloc_checkpoint], RUN_TIMEOUT_S, env=env)
    tail = server_log_tail(out, lines=60)
    if launch.timed_out:
        pytest.fail(f"the PACS run took over {RUN_TIMEOUT_S} s\n{tail}")
    result_file = out / "pacs.json"
    assert launch.returncode == 0 and result_file.is_file(), f"{launch.output_tail()}\n{tail}"
    return {"result": json.loads(result_file.read_text()), "expected": pacs_files["expected"], "log": tail}


def _by_seed(run: dict) -> dict[int, str]:
    return {value["seed"]: series for series, value in run["expected"].items()}


def test_reports_are_read_back_exactly_from_each_sr_kind(pacs_run):
    info = pacs_run["result"]["info"]
    for series, expected in pacs_run["expected"].items():
        if expected["report"] is None:
            continue
        body = info[series]["body"]
        assert info[series]["status"] == 200, info[series]
        assert body["report"] == expected["report"], series
        source = body["report_source"]
        assert source["type"] == "sr" and source["final"] is True
        assert source["sop_class"] == {"basic": "Basic Text SR", "enhanced": "Enhanced SR", "comprehensive": "Comprehensive SR"}[expected["kind"]]


def test_awkward_srs_are_skipped_with_reasons_and_nothing_is_lost(pacs_run):
    seeds = _by_seed(pacs_run)
    source = pacs_run["result"]["info"][seeds[11]]["body"]["report_source"]
    reasons = " | ".join(s["reason"] for s in source["skipped"])
    assert "not a narrative report" in reasons  # the measurement-only SR
    assert "corrupt SR content tree" in reasons
    assert "not the final version" in reasons  # the older preliminary report
    assert len(source["addenda"]) == 1
    no_sr = pacs_run["result"]["info"][seeds[21]]["body"]
    assert no_sr["report"] is None and "has no SR instance" in no_sr["report_source"]["reason"]
    corrupt = pacs_run["result"]["info"][seeds[22]]["body"]
    assert corrupt["report"] is None and "corrupt SR content tree" in corrupt["report_source"]["reason"]


def test_a_report_set_through_the_api_wins(pacs_run):
    put = pacs_run["result"]["put_info"]
    assert put["status"] == 200, put
    assert put["after"]["report"] == "IMPRESSION: corrected by hand." and put["after"]["report_source"] == {"type": "info"}


def test_drafting_job_drafts_reported_images_and_negated_findings_draft_nothing(pacs_run):
    result, seeds = pacs_run["result"], _by_seed(pacs_run)
    assert result["draft_start"]["status"] == 200, result["draft_start"]
    job = result["draft"]
    assert job and job["status"] == "DONE", job
    assert job["drafted"] == 4 and job["no_positive_finding"] == 1 and job["no_report"] == 2 and job["failed"] == 0, job
    for seed in (11, 12, 13, 14):
        label = result["draft_labels"][seeds[seed]]
        assert label and label["source"] == "report" and label["segments"], seed
        assert all(s["sentence"] and "score" in s for s in label["segments"])
    for seed in (15, 21, 22):
        assert not result["draft_labels"][seeds[seed]], seed  # no afloc_draft label (info {})
    again = result["draft_again"]
    assert again["status"] == "DONE" and again["kept"] == 4 and again["drafted"] == 0, again


def test_next_sample_is_the_most_uncertain_draft(pacs_run):
    result = pacs_run["result"]
    reply = result["next_sample"]
    assert reply["status"] == 200, reply
    uncertainties = {s: l["uncertainty"] for s, l in result["draft_labels"].items() if l}
    assert reply["body"]["reason"] == "draft_waits_for_review"
    assert reply["body"]["uncertainty"] == pytest.approx(max(uncertainties.values()))
    assert uncertainties[reply["body"]["id"]] == max(uncertainties.values())


def test_training_runs_through_train_in_dicomweb_mode_and_the_model_changes(pacs_run):
    result = pacs_run["result"]
    first, second = result["train_1"], result["train_2"]
    assert first["status"] == 200, first
    assert first["stats"] and first["stats"]["status"] == "DONE", (first, pacs_run["log"])
    assert first["version_before"] == "test-base" and first["version_after"] != "test-base"
    assert second["stats"]["status"] == "DONE" and second["version_after"] != first["version_after"]
    summary = first["stats"]["result"]
    assert summary["train_pairs"] + summary["val_pairs"] == 5
    assert summary["skipped"] == {"empty_report": 2}
    messages = " ".join(first["stats"]["skip_messages"])
    assert "has no SR instance" in messages and "corrupt SR content tree" in messages


def test_training_images_are_downloaded_once(pacs_run):
    result = pacs_run["result"]
    after_first, after_second = result["cache_after_train_1"], result["cache_after_train_2"]
    assert len(after_first) >= 5  # every image with a report is cached
    assert after_second == after_first  # same files, same modification times: nothing downloaded again
    assert not any("SR" in name or "report" in name for name in after_second)


def test_afloc_train_cli_reads_the_pacs_and_caches_images(pacs_run):
    cli = pacs_run["result"]["cli"]
    assert cli["returncode"] == 0 and cli["checkpoint"], cli
    assert "skipped: 2 empty report" in cli["stderr"], cli["stderr"]
    reuse = pacs_run["result"]["cli_cache_reuse"]
    assert reuse["downloads"] == 0 and reuse["pairs"] == 5, reuse
