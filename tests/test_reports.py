"""Report parsing: sections, sentence splitting, normalisation, empty reports, prompt negation."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from afloc_models.errors import AFLocError, EmptyReportError
from afloc_training.reports import (
    extract_sections,
    normalise_sentence,
    parse_report,
    report_or_raise,
    split_sentences,
)

# Shaped like a MIMIC-CXR free-text report: centred title, indented headers, hard-wrapped lines,
# de-identification placeholders, a numbered impression.
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  A 3.5 cm rounded density, e.g. a
 granuloma, projects over the left lung base.

 IMPRESSION:

 1. No acute cardiopulmonary process.
 2. Stable appearance of the ___ catheter.
"""

REAL_NOTES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-notes" / "pairs.csv"


def test_mimic_report_keeps_findings_and_impression_only():
    assert parse_report(MIMIC_REPORT) == [
        "there is no focal consolidation pleural effusion or pneumothorax",
        "bilateral nodular opacities that most likely represent nipple shadows",
        "the cardiomediastinal silhouette is normal",
        "a 3.5 cm rounded density e g a granuloma projects over the left lung base",
        "no acute cardiopulmonary process",
        "stable appearance of the catheter",
    ]


def test_extract_sections_orders_findings_before_impression_and_drops_other_sections():
    text = "IMPRESSION: Small effusion.\nINDICATION: cough\nFINDINGS: Lungs are clear.\nCOMPARISON: none"
    assert extract_sections(text) == "Lungs are clear.\n\nSmall effusion."


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Findings: Lungs clear.\nImpression: Normal.", ["lungs clear", "normal"]),
        ("findings:\nlungs clear\nimpression:\nnormal", ["lungs clear", "normal"]),
        ("Lungs clear. Impression: normal study.", ["normal study"]),
        ("FINDINGS: stable. IMPRESSION: no change.", ["stable", "no change"]),
        ("FINDINGS AND IMPRESSION: Small left effusion.", ["small left effusion"]),
        ("IMPRESSION: Cardiomegaly.\nRECOMMENDATION(S): follow-up CT.", ["cardiomegaly"]),
    ],
)
def test_section_headers_are_case_insensitive(text, expected):
    assert parse_report(text) == expected


def test_prose_with_a_colon_is_not_a_header():
    # "findings:" in lowercase mid-sentence is prose, not a section start.
    assert parse_report("Compared with prior, stable findings: small effusion.") == [
        "compared with prior stable findings small effusion"
    ]


def test_report_without_sections_keeps_all_text_but_drops_labels():
    text = "INDICATION: Cough.\nCOMPARISON: None.\nThe heart is enlarged."
    assert extract_sections(text) == "Cough.\n\nNone.\nThe heart is enlarged."
    assert parse_report(text) == ["cough", "none", "the heart is enlarged"]


@pytest.mark.parametrize(
    "text",
    [
        "1. Small left effusion. 2. No pneumothorax. 3. Heart size is normal.",
        "1) Small left effusion.\n2) No pneumothorax.\n3) Heart size is normal.",
        "IMPRESSION:\n 1.  Small left effusion.\n 2.  No pneumothorax.\n 3.  Heart size is normal.",
        "IMPRESSION: 1. Small left effusion 2. No pneumothorax 3. Heart size is normal",
        "- Small left effusion\n- No pneumothorax\n- Heart size is normal",
    ],
)
def test_numbered_and_bulleted_lists_give_one_sentence_per_item(text):
    assert parse_report(text) == ["small left effusion", "no pneumothorax", "heart size is normal"]


def test_decimals_and_abbreviations_do_not_split():
    text = (
        "A 3.5 cm nodule, approx. 2 cm from the hilum, e.g. a granuloma. "
        "Dr. Smith was told at 3 p.m. today."
    )
    assert split_sentences(text) == [
        "A 3.5 cm nodule, approx. 2 cm from the hilum, e.g. a granuloma.",
        "Dr. Smith was told at 3 p.m. today.",
    ]
    assert parse_report(text)[0] == "a 3.5 cm nodule approx 2 cm from the hilum e g a granuloma"


def test_sentence_ending_in_a_number_or_unit_still_splits():
    assert split_sentences("The nodule measures 12 mm. It is calcified. Size was 3. New line follows.") == [
        "The nodule measures 12 mm.",
        "It is calcified.",
        "Size was 3.",
        "New line follows.",
    ]


def test_wrapped_lines_are_joined_but_unpunctuated_items_split():
    wrapped = "There is a small right\npleural effusion measuring\n12 mm in depth."
    assert split_sentences(wrapped) == ["There is a small right pleural effusion measuring 12 mm in depth."]
    items = "No effusion\nNo pneumothorax\nHeart size normal"
    assert split_sentences(items) == ["No effusion", "No pneumothorax", "Heart size normal"]


def test_question_and_exclamation_marks_end_sentences():
    assert split_sentences("Pneumonia? Likely! Follow up.") == ["Pneumonia?", "Likely!", "Follow up."]


def test_normalise_sentence():
    assert normalise_sentence("  Small  LEFT-sided effusion (3.5 cm);  see ___ . ") == (
        "small left sided effusion 3.5 cm see"
    )
    assert normalise_sentence("Patient's [**Hospital1 18**] film, 1,200 mL.") == "patients film 1 200 ml"


def test_unicode_is_folded_to_ascii_and_other_scripts_are_kept():
    # Accents, a no-break space, an em dash, guillemets, Chinese characters and an emoji: Latin
    # letters fold to ASCII, letters of other scripts stay (as in prompts), symbols go.
    text = (
        "Opacit\u00e9 \u00e0 la base\u00a0droite \u2014 \u00abconsolidation\u00bb. "
        "\u80ba\u708e \U0001F600 noted."
    )
    assert parse_report(text) == ["opacite a la base droite consolidation", "\u80ba\u708e noted"]


@pytest.mark.parametrize(
    "text",
    [None, "", "   \n\t ", float("nan"), "nan", "None", "N/A", "FINDINGS:\n\nIMPRESSION:\n",
     "INDICATION:\nCOMPARISON:\n", "FINAL REPORT\n FINDINGS:\n IMPRESSION:", "___ ___.", "...", "1.\n2."],
)
def test_empty_none_and_headers_only_reports_give_no_sentences(text):
    assert parse_report(text) == []
    with pytest.raises(EmptyReportError, match="no usable sentence"):
        report_or_raise(text)


def test_empty_report_error_is_user_facing():
    with pytest.raises(AFLocError) as info:
        report_or_raise("FINDINGS:\n\nIMPRESSION:\n")
    assert "FINDINGS: IMPRESSION:" in str(info.value)


def test_report_or_raise_returns_sentences():
    assert report_or_raise("IMPRESSION: Small effusion.") == ["small effusion"]


def test_min_words_drops_short_sentences():
    text = "Stable. Small left pleural effusion. No pneumothorax."
    assert parse_report(text, min_words=2) == ["small left pleural effusion", "no pneumothorax"]
    with pytest.raises(EmptyReportError):
        report_or_raise("Stable.", min_words=2)
    with pytest.raises(ValueError):
        parse_report(text, min_words=0)


def test_bytes_report_is_decoded():
    assert parse_report("Small effusion.".encode("utf-8")) == ["small effusion"]


def test_very_long_report_is_parsed_quickly_and_completely():
    sentence = "Patchy opacity at the right base measuring 2.5 cm, e.g. pneumonia."
    text = "FINDINGS: " + "\n".join([sentence] * 5000) + "\nIMPRESSION: Pneumonia."
    start = time.perf_counter()
    sentences = parse_report(text)
    assert time.perf_counter() - start < 5.0
    assert len(sentences) == 5001
    assert sentences[0] == "patchy opacity at the right base measuring 2.5 cm e g pneumonia"
    assert sentences[-1] == "pneumonia"


def test_prompts_and_report_sentences_share_one_normaliser():
    # A prompt must reach the text encoder in the same form as the training sentences.
    from afloc_models.inference.predictor import normalize_prompt

    for text in ("Small LEFT-sided effusion (3.5 cm).", "Patient's café-au-lait ___ film"):
        assert normalize_prompt(text) == normalise_sentence(text)


@pytest.mark.skipif(not REAL_NOTES.is_file(), reason="shared cxr-notes data not present")
def test_real_clinical_notes_all_parse():
    with REAL_NOTES.open(encoding="utf-8", newline="") as stream:
        reports = [row["report"] for row in csv.DictReader(stream)]
    parsed = [parse_report(report) for report in reports]
    assert all(parsed), "every real note has at least one sentence"
    for sentences in parsed:
        for sentence in sentences:
            assert sentence == sentence.lower().strip()
            assert all(ch.isascii() and (ch.isalnum() or ch in " .") for ch in sentence)
