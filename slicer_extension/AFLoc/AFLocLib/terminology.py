"""Standard terminology (SNOMED CT) for the findings a prompt names.

Slicer stores a segment's meaning as a terminology entry string in the ``.seg.nrrd`` tag
``SegmentN_Tags`` (``TerminologyEntry:...``), seven ``~``-separated fields::

    context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier

where each coded field is ``scheme^code^meaning`` (``SCT^60046008^Pleural effusion``).
A prompt is matched to a known finding by its words ("right pleural effusion" -> pleural
effusion, laterality right); a prompt naming no known finding is coded as a generic clinical
finding so that the segment still carries a valid entry and keeps its free-text name.

:func:`terminology_context` builds a Slicer ``.term.json`` context listing these findings, so
that Segment Editor's terminology picker offers them.
"""

from __future__ import annotations

import colorsys
import json
import re
from dataclasses import dataclass
from pathlib import Path

#: Name of the terminology context this module defines (``.term.json`` and entry strings).
CONTEXT_NAME = "Segmentation category and type - AFLoc chest radiograph findings"
#: Slicer's bundled anatomic context, which holds the lung and heart codes used below.
ANATOMIC_CONTEXT_NAME = "Anatomic codes - DICOM master list"

Code = tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

CATEGORY: Code = ("SCT", "49755003", "Morphologically Altered Structure")
GENERIC_FINDING: Code = ("SCT", "404684003", "Clinical finding")
LUNG: Code = ("SCT", "39607008", "Lung")
HEART: Code = ("SCT", "80891009", "Heart")
RIGHT: Code = ("SCT", "24028007", "Right")
LEFT: Code = ("SCT", "7771000", "Left")
BILATERAL: Code = ("SCT", "51440002", "Right and left")


@dataclass(frozen=True)
class Finding:
    """A finding with its SNOMED CT code, the words that name it, and a display colour."""

    key: str
    code: Code
    patterns: tuple[str, ...]
    color: tuple[int, int, int]
    region: Code | None = None


FINDINGS: tuple[Finding, ...] = (
    # A bare "effusion" on a chest X-ray means pleural; a pericardial one is not this finding.
    Finding("pleural effusion", ("SCT", "60046008", "Pleural effusion"), (r"(?<!pericardial )effusion",),
            (70, 130, 220)),
    Finding("pneumothorax", ("SCT", "36118008", "Pneumothorax"), (r"pneumothora(x|ces)",), (240, 200, 60)),
    Finding("consolidation", ("SCT", "95436008", "Lung consolidation"), (r"consolidat",), (220, 90, 60), LUNG),
    Finding("atelectasis", ("SCT", "46621007", "Atelectasis"), (r"atelecta",), (150, 100, 200), LUNG),
    Finding("cardiomegaly", ("SCT", "8186001", "Cardiomegaly"), (r"cardiomegaly", r"enlarged heart"), (230, 60, 130),
            HEART),
    Finding("pulmonary edema", ("SCT", "19242006", "Pulmonary edema"), (r"o?edema",), (60, 190, 190), LUNG),
    Finding("lung nodule", ("SCT", "786838002", "Nodule of lung"), (r"nodul",), (250, 140, 30), LUNG),
    Finding("pneumonia", ("SCT", "233604007", "Pneumonia"), (r"pneumonia",), (200, 60, 60), LUNG),
    Finding("emphysema", ("SCT", "87433001", "Pulmonary emphysema"), (r"emphysema",), (120, 180, 80), LUNG),
    Finding("mass", ("SCT", "4147007", "Mass"), (r"\bmass(es)?\b",), (180, 120, 60)),
)

_GENERIC_COLOR = (255, 105, 180)
_LATERALITY = (
    (re.compile(r"\bbilateral|\bboth\b"), BILATERAL),
    (re.compile(r"\bright\b"), RIGHT),
    (re.compile(r"\bleft\b"), LEFT),
)


def match_finding(prompt: str) -> Finding | None:
    """The known finding a prompt names (first match in :data:`FINDINGS` order), or None."""
    text = prompt.lower()
    for finding in FINDINGS:
        if any(re.search(p, text) for p in finding.patterns):
            return finding
    return None


def laterality(prompt: str) -> Code | None:
    """``right`` / ``left`` / ``bilateral`` (or ``both``) named in the prompt, else None."""
    text = prompt.lower()
    for pattern, code in _LATERALITY:
        if pattern.search(text):
            return code
    return None


def _code_str(code: Code | None) -> str:
    return "^".join(code) if code else "^^"


def terminology_entry(prompt: str) -> str:
    """Slicer terminology entry string for a prompt (see the module docstring for the format).

    The laterality modifier is set only where the finding has an anatomic region (Slicer attaches
    modifiers to the region, not to the type).
    """
    finding = match_finding(prompt)
    type_code = finding.code if finding else GENERIC_FINDING
    region = finding.region if finding else None
    modifier = laterality(prompt) if region else None
    return "~".join(
        [
            CONTEXT_NAME,
            _code_str(CATEGORY),
            _code_str(type_code),
            _code_str(None),
            ANATOMIC_CONTEXT_NAME,
            _code_str(region),
            _code_str(modifier),
        ]
    )


def terminology_dict(prompt: str) -> dict[str, object]:
    """The entry of :func:`terminology_entry` as the dict ``slicerio`` reads and writes."""
    fields = terminology_entry(prompt).split("~")
    entry: dict[str, object] = {
        "contextName": fields[0],
        "category": fields[1].split("^"),
        "type": fields[2].split("^"),
        "anatomicContextName": fields[4],
    }
    if fields[5] != "^^":
        entry["anatomicRegion"] = fields[5].split("^")
        if fields[6] != "^^":
            entry["anatomicRegionModifier"] = fields[6].split("^")
    return entry


def segment_color(prompt: str, index: int = 0) -> tuple[float, float, float]:
    """Display colour in ``[0, 1]``: the finding's colour, or a hue from ``index`` for free text."""
    finding = match_finding(prompt)
    if finding:
        r, g, b = (c / 255.0 for c in finding.color)
    else:
        # Free-text prompts: spread hues so that several unknown findings stay distinguishable.
        r, g, b = colorsys.hsv_to_rgb((0.9 + 0.27 * index) % 1.0, 0.6, 1.0)
    return (round(r, 4), round(g, 4), round(b, 4))


def terminology_context() -> dict[str, object]:
    """A Slicer ``.term.json`` terminology context listing :data:`FINDINGS` and the generic finding."""
    types = [
        {
            "CodingSchemeDesignator": f.code[0],
            "CodeValue": f.code[1],
            "CodeMeaning": f.code[2],
            "recommendedDisplayRGBValue": list(f.color),
        }
        for f in FINDINGS
    ]
    types.append(
        {
            "CodingSchemeDesignator": GENERIC_FINDING[0],
            "CodeValue": GENERIC_FINDING[1],
            "CodeMeaning": GENERIC_FINDING[2],
            "recommendedDisplayRGBValue": list(_GENERIC_COLOR),
        }
    )
    return {
        "SegmentationCategoryTypeContextName": CONTEXT_NAME,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
        "SegmentationCodes": {
            "Category": [
                {
                    "CodingSchemeDesignator": CATEGORY[0],
                    "CodeValue": CATEGORY[1],
                    "CodeMeaning": CATEGORY[2],
                    "showAnatomy": True,
                    "Type": types,
                }
            ]
        },
    }


def write_terminology_context(path: str | Path) -> Path:
    """Write :func:`terminology_context` to ``path`` (use a ``.term.json`` name) and return it."""
    path = Path(path)
    path.write_text(json.dumps(terminology_context(), indent=2), encoding="utf-8")
    return path
