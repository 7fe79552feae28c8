"""Reports from DICOM SR (written by highdicom, read back through files) and findings from reports.

The PACS path (Orthanc, DICOMweb, the server) is in ``tests/test_pacs.py``; these are the pure parts:
``afloc_training.sr_reports`` (one SR -> text, several -> the study's report) and
``afloc_training.findings`` (report -> positive findings as prompts, negation-aware).
"""

from __future__ import annotations

import datetime as dt

import pydicom
import pytest

from afloc_training.findings import report_findings
from afloc_training.sr_reports import SRSkip, choose_report, make_report_sr, read_sr

SECTIONS = [
    ("FINDINGS", "Small right pleural effusion.\nNo pneumothorax."),
    ("IMPRESSION", "Right pleural effusion."),
]
EXPECTED = "FINDINGS:\nSmall right pleural effusion.\nNo pneumothorax.\n\nIMPRESSION:\nRight pleural effusion."


@pytest.fixture(scope="module")
def image():
    from conftest import rg1_unci_path

    return pydicom.dcmread(str(rg1_unci_path()), stop_before_pixels=True)


def _roundtrip(dataset, tmp_path=None):
    """Write and read again, as a PACS hands the file back."""
    import io

    buffer = io.BytesIO()
    dataset.save_as(buffer)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


@pytest.mark.parametrize("kind, sop_class", [("basic", "Basic Text SR"), ("enhanced", "Enhanced SR"), ("comprehensive", "Comprehensive SR")])
def test_each_sr_kind_reads_back_with_its_sections(image, tmp_path, kind, sop_class):
    sr = make_report_sr(image, SECTIONS, kind=kind, content_datetime=dt.datetime(2024, 3, 1, 9, 30))
    doc = read_sr(_roundtrip(sr, tmp_path))
    assert doc.text == EXPECTED
    assert doc.sop_class == sop_class
    assert [h for h, _ in doc.sections] == ["FINDINGS", "IMPRESSION"]
    assert doc.is_final and doc.content_datetime == dt.datetime(2024, 3, 1, 9, 30)
    assert doc.study_instance_uid == image.StudyInstanceUID


def test_latest_final_wins_and_addendum_is_appended(image, tmp_path):
    def doc(sections, when, final=True, addendum=False):
        return read_sr(_roundtrip(make_report_sr(image, sections, final=final, addendum=addendum, content_datetime=when)))

    early = doc([("IMPRESSION", "Early final.")], dt.datetime(2024, 1, 1, 8))
    late = doc([("IMPRESSION", "Late final.")], dt.datetime(2024, 1, 1, 10))
    draft = doc([("IMPRESSION", "Later draft.")], dt.datetime(2024, 1, 1, 12), final=False)
    add = doc([("", "Left rib fracture also seen.")], dt.datetime(2024, 1, 2, 8), addendum=True)
    chosen = choose_report([early, draft, add, late])
    assert chosen.text == "IMPRESSION:\nLate final.\n\nADDENDUM:\nLeft rib fracture also seen."
    assert chosen.source["sop_instance_uid"] == late.sop_instance_uid and chosen.source["final"] is True
    assert chosen.source["addenda"] == [add.sop_instance_uid]
    reasons = {s["sop_instance_uid"]: s["reason"] for s in chosen.skipped}
    assert "earlier final" in reasons[early.sop_instance_uid]
    assert "not the final" in reasons[draft.sop_instance_uid]
    # Without any final document the latest one is used and marked as not final.
    only_drafts = choose_report([draft])
    assert only_drafts.text == "IMPRESSION:\nLater draft." and only_drafts.source["final"] is False


def test_an_sr_without_text_is_not_a_report(image):
    import highdicom as hd

    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report"))
    length = hd.sr.NumContentItem(
        name=hd.sr.CodedConcept("410668003", "SCT", "Length"), value=12.0,
        unit=hd.sr.CodedConcept("mm", "UCUM", "millimeter"), relationship_type="CONTAINS",
    )
    root.ContentSequence = hd.sr.ContentSequence([length])
    sr = hd.sr.ComprehensiveSR(
        evidence=[image], content=hd.sr.ContentSequence([root], is_root=True), series_instance_uid=hd.UID(),
        series_number=1, sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
    )
    with pytest.raises(SRSkip, match="no text content item: not a narrative report"):
        read_sr(_roundtrip(sr))


def test_a_corrupt_sr_is_refused_with_a_reason(image, tmp_path):
    sr = _roundtrip(make_report_sr(image, SECTIONS), tmp_path)
    del sr.ContentSequence[0].ContentSequence[0].ValueType  # a TEXT item that lost its type
    with pytest.raises(SRSkip, match="corrupt SR content tree"):
        read_sr(sr)


def test_an_image_is_not_a_report(image):
    with pytest.raises(SRSkip, match="not a structured report"):
        read_sr(image)


@pytest.mark.parametrize(
    "report, expected",
    [
        ("No pneumothorax.", []),
        ("There is no pneumothorax. No pleural effusion.", []),
        ("No focal consolidation, pleural effusion, or pneumothorax.", []),
        ("The effusion has resolved.", []),
        ("Small left effusion but no pneumothorax.", [("left pleural effusion", "positive")]),
        ("No evidence of pneumothorax; small right pleural effusion.", [("right pleural effusion", "positive")]),
        ("Possible right lower lobe pneumonia.", [("right lower zone opacity", "uncertain")]),
        ("Left apical pneumothorax cannot be excluded.", [("left apical pneumothorax", "uncertain")]),
        ("A nodule measuring 12 mm projects over the right upper zone.", [("right upper zone nodule", "positive")]),
        ("INDICATION: rule out pneumothorax.\n\nFINDINGS: The heart is enlarged.\n\nIMPRESSION: Cardiomegaly.",
         [("cardiomegaly", "positive")]),
    ],
)
def test_findings_are_negation_aware(report, expected):
    assert [(f.prompt, f.certainty) for f in report_findings(report)] == expected


def test_phantom_reports_name_exactly_their_findings():
    """On the phantoms' report language every drawn finding is found, with its canonical prompt."""
    import numpy as np

    from afloc_training.phantoms import generate_phantom

    for index in range(60):
        phantom = generate_phantom(np.random.default_rng([3, index]), size=64)
        found = {f.prompt for f in report_findings(phantom.report)}
        assert found == {f.prompt for f in phantom.findings}, phantom.report
