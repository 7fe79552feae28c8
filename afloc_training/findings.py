"""Positive findings of a radiology report, as localization prompts (negation- and uncertainty-aware).

:func:`report_findings` reads the FINDINGS and IMPRESSION sections of a report (the whole text when
it has neither), sentence by sentence (:mod:`afloc_training.reports`), finds the chest findings it
names from a small lexicon, and keeps those stated as present:

- **negated** mentions draft nothing: a negation cue earlier in the same clause ("no
  pneumothorax", "without effusion", "no focal consolidation, pleural effusion or pneumothorax",
  "negative for", "free of", "no evidence of") or a statement of absence after it ("effusion has
  resolved", "pneumothorax is not seen");
- **uncertain** mentions are kept and marked ``uncertain`` ("possible", "may", "cannot be
  excluded", "concerning for", "suspicious for", "questionable", "likely", ...).

Each kept finding becomes a short canonical prompt built from the words of its sentence: the
side ("right", "left", "bilateral"), the lung zone when the finding has one ("upper", "middle",
"lower"), and the finding ("pleural effusion", "pneumothorax", "nodule", ...), e.g. "a nodule
measuring 12 mm projects over the right upper zone" -> "right upper zone nodule". The same prompt
twice keeps the more certain, earlier mention.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Optional

from afloc_models.text_normalization import normalize_text
from afloc_training.reports import extract_sections, split_sentences

__all__ = ["Finding", "report_findings", "sentence_findings"]


@dataclass(frozen=True)
class Finding:
    """One positive finding of a report.

    Attributes:
        prompt: the localization prompt ("right pleural effusion").
        finding: the lexicon entry it matched ("effusion").
        sentence: the report sentence it came from (as written).
        certainty: ``positive`` or ``uncertain``.
        cue: the uncertainty cue when uncertain ("possible"), else "".
    """

    prompt: str
    finding: str
    sentence: str
    certainty: str = "positive"
    cue: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# name -> (surface forms as regex over normalised text, has a lung zone, prompt head)
_LEXICON: dict[str, tuple[str, bool, str]] = {
    "effusion": (r"pleural effusions?|effusions?|pleural fluid|hydrothorax", False, "pleural effusion"),
    "pneumothorax": (r"pneumothora(?:x|ces)", False, "pneumothorax"),
    "cardiomegaly": (
        r"cardiomegaly|(?:heart|cardiac silhouette|cardiac shadow) (?:is |appears )?(?:moderately |mildly |markedly )?enlarged"
        r"|enlarged (?:heart|cardiac silhouette)",
        False,
        "cardiomegaly",
    ),
    "edema": (r"(?:pulmonary |interstitial |alveolar )?edema|vascular congestion", False, "pulmonary edema"),
    "atelectasis": (r"atelectasis|atelectatic|collapse", True, "atelectasis"),
    "nodule": (r"nodules?|nodular (?:density|opacity)|mass(?:es)?", True, "nodule"),
    "opacity": (
        r"opacit(?:y|ies)|consolidations?|airspace disease|infiltrates?|pneumonia", True, "opacity"
    ),
    "fracture": (r"fractures?", False, "fracture"),
    "emphysema": (r"emphysema|hyperinflat(?:ed|ion)", False, "emphysema"),
    "fibrosis": (r"fibrosis|fibrotic", True, "fibrosis"),
}
_MENTION = re.compile(
    "|".join(f"(?P<{name}>\\b(?:{pattern})\\b)" for name, (pattern, _, _) in _LEXICON.items())
)
# Clause boundaries: negation and uncertainty do not cross them.
_CLAUSE_BREAK = re.compile(r"\b(?:but|however|although|though|while|whereas|except|which|with new|and new)\b")
_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|resolution of|clear of|rule out|ruled out)\b"
)
_NEGATION_AFTER = re.compile(
    r"^\s*(?:is |are |has |have )?(?:not (?:seen|present|identified|visualized|demonstrated|appreciated)|"
    r"no longer (?:seen|present|visible)|(?:has |have )?resolved|absent|excluded|ruled out)\b"
)
_UNCERTAIN_BEFORE = re.compile(
    r"\b(?:possible|possibly|probable|probably|questionable|suspected|suspicious for|concerning for|"
    r"may|might|could|likely|equivocal|cannot exclude|can not exclude|differential includes|vs|versus|"
    r"suggestive of|suggests|compatible with|worrisome for|presumed|question of)\b"
)
_UNCERTAIN_AFTER = re.compile(
    r"^\s*(?:is |are )?(?:not excluded|cannot be excluded|can not be excluded|not ruled out|"
    r"cannot be ruled out|is possible|is suspected|is questioned|versus|vs)\b"
)
_SIDE = re.compile(r"\b(right|left|bilateral|bilaterally|both)\b")
_ZONE = {
    "upper": re.compile(r"\b(?:upper|apical|apex|apices)\b"),
    "middle": re.compile(r"\b(?:mid|middle|midlung|perihilar)\b"),
    "lower": re.compile(r"\b(?:lower|basilar|base|bases|basal|retrocardiac)\b"),
}
_NEGATION_DOUBLE = re.compile(r"\bnot (?:excluded|ruled out)\b|\bcannot be (?:excluded|ruled out)\b|\bno change\b")


def report_findings(report: Optional[str]) -> list[Finding]:
    """The positive (and uncertain) findings of a report, in order, one per prompt."""
    if not report or not str(report).strip():
        return []
    kept: dict[str, Finding] = {}
    for sentence in split_sentences(extract_sections(str(report))):
        for finding in sentence_findings(sentence):
            previous = kept.get(finding.prompt)
            if previous is None or (previous.certainty == "uncertain" and finding.certainty == "positive"):
                kept[finding.prompt] = finding
    return list(kept.values())


def sentence_findings(sentence: str) -> list[Finding]:
    """The findings one sentence states as present or possible (see the module docstring)."""
    results: list[Finding] = []
    for part in re.split(r"[;:]", sentence):
        results.extend(_clause_findings(part, sentence.strip()))
    return results


def _clause_findings(part: str, sentence: str) -> list[Finding]:
    text = normalize_text(part)
    results: list[Finding] = []
    for match in _MENTION.finditer(text):
        name = match.lastgroup or ""
        before = _clause_before(text, match.start())
        after = text[match.end():]
        after_clause = _CLAUSE_BREAK.split(after, maxsplit=1)[0]
        uncertain = _UNCERTAIN_BEFORE.search(before) or _UNCERTAIN_AFTER.match(after_clause)
        negated_before = _NEGATION_BEFORE.search(_NEGATION_DOUBLE.sub(" ", before))
        if _NEGATION_AFTER.match(after_clause) or (negated_before and not uncertain):
            continue
        certainty, cue = ("uncertain", uncertain.group(0).strip()) if uncertain else ("positive", "")
        results.append(Finding(_prompt(name, before + text[match.start():match.end()] + after_clause), name, sentence, certainty, cue))
    return results


def _clause_before(text: str, position: int) -> str:
    """The part of ``text`` before ``position`` that belongs to the same clause."""
    before = text[:position]
    breaks = list(_CLAUSE_BREAK.finditer(before))
    return before[breaks[-1].end():] if breaks else before


def _prompt(name: str, text: str) -> str:
    _, has_zone, head = _LEXICON[name]
    sides = {s if s not in ("bilaterally", "both") else "bilateral" for s in _SIDE.findall(text)}
    side = "bilateral" if "bilateral" in sides or {"right", "left"} <= sides else next(iter(sides), "")
    if name == "cardiomegaly":
        return "cardiomegaly"
    if name == "edema":
        return "pulmonary edema"
    if name == "effusion":
        return "bilateral pleural effusions" if side == "bilateral" else f"{side} pleural effusion".strip()
    if name == "pneumothorax":
        apical = "apical " if _ZONE["upper"].search(text) else ""
        return f"{side} {apical}pneumothorax".strip()
    zone = next((z for z, pattern in _ZONE.items() if pattern.search(text)), "") if has_zone else ""
    parts = [side, f"{zone} zone" if zone else "", head]
    return " ".join(p for p in parts if p)
