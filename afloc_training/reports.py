"""Radiology report text -> list of normalised sentences.

The pipeline follows the AFLoc publication, which in turn follows GLoRIA: keep the FINDINGS and
IMPRESSION sections when the report has them, split into sentences, lowercase, drop punctuation and
accents, collapse whitespace. Sentences are what the text encoder sees one by one, so
the splitter is careful not to break decimals ("3.5 cm") or abbreviations ("e.g.") and to split
numbered impression lists ("1. ... 2. ...") into separate items.

Public API:
    extract_sections(text) -> str
    split_sentences(text) -> list[str]
    normalise_sentence(sentence) -> str
    parse_report(text, min_words=1) -> list[str]
    report_or_raise(text, min_words=1) -> list[str]      (raises EmptyReportError)
"""

from __future__ import annotations

import math
import re
from typing import Optional

from afloc_models.errors import EmptyReportError
from afloc_models.text_normalization import normalize_text

__all__ = [
    "extract_sections",
    "split_sentences",
    "normalise_sentence",
    "parse_report",
    "report_or_raise",
]

# --- section headers ------------------------------------------------------------------------------

# Section names seen in MIMIC-CXR-style reports, mapped to the part of the report they hold. Only
# "findings" and "impression" are kept; every other name only ends the section before it.
_SECTION_KIND: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "findings and impression": "findings",
    "findings/impression": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
}
_OTHER_SECTIONS = (
    "indication",
    "indications",
    "clinical indication",
    "comparison",
    "comparisons",
    "technique",
    "history",
    "clinical history",
    "clinical information",
    "examination",
    "exam",
    "type of examination",
    "reason for exam",
    "reason for examination",
    "reason for study",
    "procedure",
    "notification",
    "recommendation",
    "recommendations",
    "wet read",
    "addendum",
    "final report",
    "study",
)
_ALL_SECTION_NAMES = sorted({*_SECTION_KIND, *_OTHER_SECTIONS}, key=len, reverse=True)


def _alternation(names: list[str]) -> str:
    """Regex alternation of ``names``, any run of whitespace allowed between their words."""
    return "|".join(r"\s+".join(re.escape(word) for word in name.split()) for name in names)


# A known name followed by a colon at the start of a line, in any case ("Findings:").
_LINE_HEADER = re.compile(
    rf"^[ \t]*(?P<name>{_alternation(_ALL_SECTION_NAMES)})[ \t]*:", re.IGNORECASE | re.MULTILINE
)
# The same name in capitals anywhere in a line ("... comparison. IMPRESSION: ..."); lowercase
# mid-line matches would catch prose such as "stable findings: ...".
_INLINE_HEADER = re.compile(
    rf"(?<![A-Za-z])(?P<name>{_alternation([n.upper() for n in _ALL_SECTION_NAMES])})[ \t]*:"
)
# A known name in any case right after a sentence end ("Lungs clear. Impression: normal").
_AFTER_SENTENCE_HEADER = re.compile(
    rf"(?<=[.!?;])[ \t]+(?P<name>{_alternation(_ALL_SECTION_NAMES)})[ \t]*:", re.IGNORECASE
)
# Any other capitalised label at a line start ("PA AND LATERAL VIEWS:") also ends a section.
_GENERIC_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z /&()-]{2,40}?)[ \t]*:", re.MULTILINE)
# Header lines that carry no colon in MIMIC-CXR ("FINAL REPORT").
_BARE_HEADER_LINE = re.compile(
    r"^[ \t]*(?:FINAL REPORT|WET READ|ADDENDUM)[ \t]*$", re.IGNORECASE | re.MULTILINE
)

_PARAGRAPH = "\n\n"


def _find_headers(text: str) -> list[tuple[int, int, str]]:
    """All section labels in ``text`` as sorted, non-overlapping ``(start, end, lowercase name)``."""
    found: dict[int, tuple[int, int, str]] = {}
    for pattern in (_LINE_HEADER, _INLINE_HEADER, _AFTER_SENTENCE_HEADER, _GENERIC_HEADER):
        for match in pattern.finditer(text):
            start = match.start("name")
            name = re.sub(r"\s+", " ", match.group("name").strip().lower())
            if start not in found:
                found[start] = (start, match.end(), name)
    headers: list[tuple[int, int, str]] = []
    for start, end, name in sorted(found.values()):
        if headers and start < headers[-1][1]:
            continue
        headers.append((start, end, name))
    return headers


def extract_sections(text: str) -> str:
    """Return the FINDINGS and IMPRESSION text of a report, or the whole report if it has neither.

    Headers are recognised case-insensitively at a line start ("Findings:") or after a sentence
    end ("... clear. Impression: ..."), and in capitals anywhere. Any other label (INDICATION,
    COMPARISON, TECHNIQUE, HISTORY, ...) ends the section before it. The kept sections are joined
    with a blank line, findings first. A report with the headers but nothing under them gives "".
    Without FINDINGS/IMPRESSION the whole text is returned with section labels ("INDICATION:", a
    bare "FINAL REPORT" line) removed, since a label is not part of any sentence.
    """
    if not text:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    headers = _find_headers(text)
    kept: dict[str, list[str]] = {"findings": [], "impression": []}
    has_section = False
    for index, (_, end, name) in enumerate(headers):
        kind = _SECTION_KIND.get(name)
        if kind is None:
            continue
        has_section = True
        stop = headers[index + 1][0] if index + 1 < len(headers) else len(text)
        body = _BARE_HEADER_LINE.sub("", text[end:stop]).strip()
        if body:
            kept[kind].append(body)
    if has_section:
        return _PARAGRAPH.join(kept["findings"] + kept["impression"])

    # No findings/impression: drop only the labels, keep what follows them.
    bounds = [0] + [i for start, end, _ in headers for i in (start, end)] + [len(text)]
    pieces = (_BARE_HEADER_LINE.sub("", text[a:b]).strip() for a, b in zip(bounds[::2], bounds[1::2]))
    return _PARAGRAPH.join(piece for piece in pieces if piece)


# --- sentence splitting ---------------------------------------------------------------------------

# Words that end with a period without ending the sentence (compared lowercase, without the dot).
_ABBREVIATIONS = frozenset(
    {
        "e.g", "i.e", "eg", "ie", "cf", "vs", "approx", "incl", "esp", "resp",
        "dr", "mr", "mrs", "ms", "prof", "st", "fig", "figs", "no", "nos", "pt", "pts",
        "a.m", "p.m", "ca", "max", "min", "dept", "ref", "vol", "sq",
    }
)
# "No." ends a sentence ("Effusion: no.") unless a number follows ("No. 2 lead").
_ABBREVIATION_NEEDS_NUMBER = frozenset({"no", "nos", "fig", "figs", "ref", "vol"})
# A line ending in one of these continues on the next line even when that line is capitalised.
_CONTINUATION_WORDS = frozenset(
    {
        "a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "with", "from", "and", "or",
        "is", "are", "was", "were", "be", "as", "than", "into", "over", "under", "within", "left",
        "right", "new", "small", "large", "mild", "moderate", "severe", "no",
    }
)
_BREAK = "\x00"
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*\u2022\u2023\u25e6\u2043])\s+")
# Candidate numbered-item markers inside a line: "1. ", "(2) ", "3) " before a word.
_NUMBER_MARKER = re.compile(r"(?:^|(?<=\s))\(?(\d{1,2})[.)]\s+(?=\S)")
_STRAY_LIST_NUMBER = re.compile(r"\(?\d{1,2}[.)]?")
_SENTENCE_END = re.compile(r"[.!?]+(?=[\s\"')\]]|$)")


def _joins_next_line(line: str, next_line: str) -> bool:
    """Whether a single line break between ``line`` and ``next_line`` is only a wrap."""
    if _LIST_MARKER.match(next_line):
        return False
    stripped = line.rstrip()
    if not stripped:
        return False
    first = next_line.lstrip()[:1]
    if not first.isalpha() or first.islower():
        return True  # "... the\nright lung", "... measuring\n12 mm": wrapped prose
    if stripped[-1] in ",-/(":
        return True
    last_word = re.sub(r"[^a-z]", "", stripped.split()[-1].lower())
    return last_word in _CONTINUATION_WORDS


def _mark_line_breaks(paragraph: str) -> str:
    """Join wrapped lines with a space and mark real item breaks with ``_BREAK``."""
    lines = [line for line in paragraph.split("\n") if line.strip()]
    if not lines:
        return ""
    out = [lines[0].strip()]
    for previous, line in zip(lines, lines[1:]):
        out.append(" " if _joins_next_line(previous, line) else _BREAK)
        out.append(line.strip())
    return "".join(out)


def _split_numbered(line: str) -> list[str]:
    """Split a line at numbered-item markers, dropping the markers.

    A marker counts when it starts the line or follows a colon or sentence end ("...: 1. Foo"),
    or when it carries the next number of a list already started ("1. Foo 2. Bar"): this
    splits unpunctuated lists without breaking "the nodule measures 2. Next ...".
    """
    cuts: list[tuple[int, int]] = []
    expected: Optional[int] = None
    for match in _NUMBER_MARKER.finditer(line):
        number = int(match.group(1))
        before = line[: match.start()].rstrip()
        if not before or before[-1] in ".:;!?":
            expected = number + 1
        elif number == expected:
            expected += 1
        else:
            continue
        cuts.append((match.start(), match.end()))
    if not cuts:
        return [line]
    bounds = [0] + [i for cut in cuts for i in cut] + [len(line)]
    return [line[a:b] for a, b in zip(bounds[::2], bounds[1::2])]


def _ends_sentence(chunk: str, following: str) -> bool:
    """Whether the period closing ``chunk`` ends a sentence, given the text ``following`` it."""
    words = chunk.split()
    if not words:
        return False
    word = words[-1].lower().lstrip("([\"'")
    if word in _ABBREVIATIONS:
        if word in _ABBREVIATION_NEEDS_NUMBER:
            return not re.match(r"\s*\d", following)
        return False
    # Initials such as "J." in "Dr. J. Smith"; a lone lowercase letter is more often a list end.
    return not (len(word) == 1 and word.isupper() and re.match(r"\s*[A-Z]", following))


def _split_item(item: str) -> list[str]:
    """Split one list item / paragraph (no line breaks left) at sentence-ending punctuation."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(item):
        chunk = item[start : match.start()]
        if match.group().startswith(".") and not _ends_sentence(chunk, item[match.end() :]):
            continue
        sentences.append(item[start : match.end()])
        start = match.end()
    sentences.append(item[start:])
    return [s.strip() for s in sentences if s.strip()]


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences, in order, stripped, list markers removed.

    Splits at ``.``/``!``/``?`` followed by whitespace (not inside decimals such as ``3.5`` or
    after abbreviations such as ``e.g.``), at blank lines, before numbered or bulleted items
    (``1. ``, ``2) ``, ``- ``), and at a single line break when the next line looks like a new item.
    A single line break inside a wrapped sentence (MIMIC wraps at about 80 columns) is a space.
    Terminal punctuation stays on each sentence.
    """
    if not text:
        return []
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    paragraphs = re.split(r"\n[ \t]*\n", text)
    items: list[str] = []
    for paragraph in paragraphs:
        marked = _mark_line_breaks(paragraph)
        for line in marked.split(_BREAK):
            for item in _split_numbered(line):
                item = _LIST_MARKER.sub("", item, count=1)
                items.extend(_split_item(item))
    # Drop pieces that are only punctuation or a stray list number ("2." at a paragraph end).
    return [s for s in items if re.search(r"\w", s) and not _STRAY_LIST_NUMBER.fullmatch(s)]


# --- normalisation --------------------------------------------------------------------------------

def normalise_sentence(sentence: str) -> str:
    """Lowercase words and numbers; see :func:`afloc_models.text_normalization.normalize_text`,
    which prompts go through too, so a prompt looks like a training sentence."""
    return normalize_text(sentence)


# --- pipeline -------------------------------------------------------------------------------------

# Whole-report values that mean "no report" (a missing cell read from a CSV, say).
_NULL_REPORTS = frozenset({"", "none", "nan", "null", "n/a", "na", "-"})


def _as_text(text: object) -> Optional[str]:
    """The report as ``str``, or None for None / NaN / bytes that are not text / null markers."""
    if text is None:
        return None
    if isinstance(text, float) and math.isnan(text):
        return None
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return None
    if text.strip().lower() in _NULL_REPORTS:
        return None
    return text


def parse_report(text: object, min_words: int = 1) -> list[str]:
    """Report text -> normalised sentences with at least ``min_words`` words each.

    Runs :func:`extract_sections`, :func:`split_sentences` and :func:`normalise_sentence`.
    Returns ``[]`` for None, NaN, empty or whitespace-only text, null markers ("nan", "None"),
    and reports that hold only headers or placeholders; callers count and skip those.
    """
    if min_words < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words}")
    report = _as_text(text)
    if report is None:
        return []
    sentences = (normalise_sentence(s) for s in split_sentences(extract_sections(report)))
    return [s for s in sentences if len(s.split()) >= min_words]


def report_or_raise(text: object, min_words: int = 1) -> list[str]:
    """Like :func:`parse_report`, but raise :class:`EmptyReportError` when no sentence is left."""
    sentences = parse_report(text, min_words=min_words)
    if not sentences:
        shown = text if not isinstance(text, str) else " ".join(text.split())
        if isinstance(shown, str) and len(shown) > 80:
            shown = shown[:77] + "..."
        raise EmptyReportError(
            f"report {shown!r} has no usable sentence after parsing (empty, only section headers "
            f"or placeholders, or every sentence shorter than {min_words} word(s))"
        )
    return sentences
