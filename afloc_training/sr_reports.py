"""Radiology reports from DICOM Structured Reports (SR): one SR document -> text, several -> the report.

A study's report lives in its SR instances. :func:`read_sr` turns one SR dataset (Basic Text,
Enhanced, Comprehensive or Comprehensive 3D SR) into an :class:`SRDocument`: its text content
items in document order, grouped under the section headings of their containers ("Findings",
"Impressions", ...), plus the flags that say how final it is. highdicom parses the content
tree: the Enhanced / Comprehensive / Comprehensive 3D classes' ``from_dataset``, and
``ContentSequence.from_sequence`` for Basic Text SR, which highdicom's SR classes do not cover.

:func:`choose_report` picks the study's report from several documents: the latest *final*
document (CompletionFlag COMPLETE and VerificationFlag VERIFIED) wins over earlier finals and
over drafts; without a final one the latest complete, then the latest of any, is used and
marked preliminary. Documents titled as an addendum are appended, in time order, after the
chosen report under an ``ADDENDUM:`` heading.

The report text uses the headings :func:`afloc_training.reports.parse_report` recognises:
``FINDINGS:`` and ``IMPRESSION:`` sections (other containers keep their own name in capitals and
are dropped by the parser, as in a free-text report), each heading on its own line, sections
separated by a blank line. Text outside any section comes first, without a heading.

Documents that are not reports are refused with :class:`SRSkip` and a reason a person can act
on: an SOP class that holds no report (dose reports, CAD, key objects), a document without any
text, or a content tree highdicom cannot parse.

Nothing here does I/O; :mod:`afloc_training.dicomweb` fetches the datasets.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

__all__ = [
    "REPORT_SOP_CLASSES",
    "SRDocument",
    "SRSkip",
    "StudyReport",
    "choose_report",
    "make_report_sr",
    "read_sr",
    "report_sections",
    "report_text",
]

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: SR SOP classes that may hold a narrative report, with the names used in messages.
REPORT_SOP_CLASSES = {
    BASIC_TEXT_SR: "Basic Text SR",
    ENHANCED_SR: "Enhanced SR",
    COMPREHENSIVE_SR: "Comprehensive SR",
    COMPREHENSIVE_3D_SR: "Comprehensive 3D SR",
}
#: Container names (concept meaning, lower case) mapped to the heading written in the text.
_HEADINGS = {
    "findings": "FINDINGS",
    "finding": "FINDINGS",
    "impressions": "IMPRESSION",
    "impression": "IMPRESSION",
    "conclusions": "IMPRESSION",
    "conclusion": "IMPRESSION",
    "summary": "IMPRESSION",
}
#: Code items whose value is a finding name ("Finding" = DCM 121071) count as text.
_FINDING_CODE_NAMES = ("finding",)
_ADDENDUM = "addendum"


class SRSkip(ValueError):
    """An SR instance that gives no report text; ``reason`` says why (shown to users)."""

    def __init__(self, sop_instance_uid: str, reason: str):
        self.sop_instance_uid = sop_instance_uid
        self.reason = reason
        super().__init__(f"SR {sop_instance_uid or '(no SOP instance UID)'}: {reason}")


@dataclass(frozen=True)
class SRDocument:
    """The report content of one SR instance.

    Attributes:
        sop_instance_uid / series_instance_uid / study_instance_uid: where it lives.
        sop_class: the SR SOP class name ("Basic Text SR", ...).
        title: the document title (the root container's concept meaning).
        sections: ``(heading, text)`` pairs in document order; heading "" for text outside any
            section. Consecutive items of one section are joined with a line break.
        completion_flag: ``COMPLETE`` or ``PARTIAL`` (empty when absent).
        verification_flag: ``VERIFIED`` or ``UNVERIFIED`` (empty when absent).
        content_datetime: ContentDate + ContentTime (None when absent).
        is_addendum: the document title names an addendum.
    """

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class: str
    title: str
    sections: tuple[tuple[str, str], ...]
    completion_flag: str = ""
    verification_flag: str = ""
    content_datetime: Optional[_dt.datetime] = None
    is_addendum: bool = False

    @property
    def is_final(self) -> bool:
        """Complete and verified: a signed-off report."""
        return self.completion_flag == "COMPLETE" and self.verification_flag == "VERIFIED"

    @property
    def text(self) -> str:
        """The document's text with its section headings (see the module docstring)."""
        return report_text(self.sections)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no text) for provenance records."""
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_class": self.sop_class,
            "title": self.title,
            "completion_flag": self.completion_flag,
            "verification_flag": self.verification_flag,
            "content_datetime": self.content_datetime.isoformat() if self.content_datetime else None,
            "sections": [heading or "(none)" for heading, _ in self.sections],
        }


@dataclass
class StudyReport:
    """The report chosen for a study, with where it came from and what was left out.

    Attributes:
        text: the report text, or None when no SR of the study gave one.
        source: provenance (``type: "sr"``, the chosen instance's UIDs, flags, ``final``,
            ``addenda``); empty when ``text`` is None.
        skipped: ``{"sop_instance_uid", "reason"}`` for every SR instance not used.
        study_instance_uid: the study looked at.
    """

    text: Optional[str]
    source: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    study_instance_uid: str = ""

    def reason(self) -> str:
        """Why there is no report (for skip messages); "" when there is one."""
        if self.text:
            return ""
        if not self.skipped:
            return f"study {self.study_instance_uid or '?'} has no SR instance"
        return "no usable SR in study {}: {}".format(
            self.study_instance_uid or "?",
            "; ".join(f"{s['sop_instance_uid']}: {s['reason']}" for s in self.skipped),
        )


def report_text(sections: Iterable[tuple[str, str]]) -> str:
    """Join ``(heading, text)`` pairs: ``HEADING:\\ntext`` blocks separated by a blank line."""
    blocks = []
    for heading, text in sections:
        text = text.strip()
        if not text:
            continue
        blocks.append(f"{heading}:\n{text}" if heading else text)
    return "\n\n".join(blocks)


def read_sr(dataset: Any) -> SRDocument:
    """The report content of one SR instance (a pydicom ``Dataset``).

    Raises:
        SRSkip: not an SR that can hold a report, no text in it, or a content tree that
            cannot be parsed (the reason names which).
    """
    uid = str(getattr(dataset, "SOPInstanceUID", "") or "")
    sop_class = str(getattr(dataset, "SOPClassUID", "") or "")
    modality = str(getattr(dataset, "Modality", "") or "")
    if sop_class not in REPORT_SOP_CLASSES:
        name = _uid_name(sop_class)
        if modality and modality != "SR":
            raise SRSkip(uid, f"modality {modality} ({name}) is not a structured report")
        raise SRSkip(uid, f"{name} is not a narrative report (only {', '.join(REPORT_SOP_CLASSES.values())})")
    root = _content_root(dataset, uid, sop_class)
    title = _meaning(root)
    sections = _collect_sections(root)
    if not sections:
        raise SRSkip(uid, f"'{title or 'untitled'}' holds no text content item: not a narrative report")
    return SRDocument(
        sop_instance_uid=uid,
        series_instance_uid=str(getattr(dataset, "SeriesInstanceUID", "") or ""),
        study_instance_uid=str(getattr(dataset, "StudyInstanceUID", "") or ""),
        sop_class=REPORT_SOP_CLASSES[sop_class],
        title=title,
        sections=tuple(sections),
        completion_flag=str(getattr(dataset, "CompletionFlag", "") or "").upper(),
        verification_flag=str(getattr(dataset, "VerificationFlag", "") or "").upper(),
        content_datetime=_content_datetime(dataset),
        is_addendum=_ADDENDUM in title.lower(),
    )


def choose_report(
    documents: Sequence[SRDocument], skipped: Sequence[dict[str, str]] = (), study_instance_uid: str = ""
) -> StudyReport:
    """The study's report from its readable SR documents (see the module docstring).

    ``skipped`` (instances already refused) is carried into the result; documents not chosen
    are added to it with the reason.
    """
    skipped = list(skipped)
    reports = [d for d in documents if not d.is_addendum]
    addenda = [d for d in documents if d.is_addendum]
    if not reports:
        for doc in addenda:
            skipped.append({"sop_instance_uid": doc.sop_instance_uid, "reason": "addendum without a report to append to"})
        return StudyReport(None, {}, skipped, study_instance_uid)

    def latest(candidates: list[SRDocument]) -> SRDocument:
        # Oldest first, so max() keeps the last on ties (documents without a time sort first).
        return max(candidates, key=lambda d: (d.content_datetime or _dt.datetime.min, d.sop_instance_uid))

    finals = [d for d in reports if d.is_final]
    complete = [d for d in reports if d.completion_flag == "COMPLETE"]
    chosen = latest(finals or complete or reports)
    for doc in reports:
        if doc is not chosen:
            why = "an earlier final report" if doc.is_final else "not the final version"
            skipped.append({"sop_instance_uid": doc.sop_instance_uid, "reason": f"superseded: {why}"})
    appended = []
    for doc in sorted(addenda, key=lambda d: (d.content_datetime or _dt.datetime.min, d.sop_instance_uid)):
        if doc.completion_flag == "PARTIAL":
            skipped.append({"sop_instance_uid": doc.sop_instance_uid, "reason": "addendum not complete (PARTIAL)"})
            continue
        appended.append(doc)
    text = chosen.text
    for doc in appended:
        body = doc.text
        text += "\n\n" + (body if any(h for h, _ in doc.sections) else f"ADDENDUM:\n{body}")
    source = {
        "type": "sr",
        "study_instance_uid": chosen.study_instance_uid or study_instance_uid,
        **chosen.summary(),
        "final": chosen.is_final,
        "addenda": [d.sop_instance_uid for d in appended],
    }
    return StudyReport(text, source, skipped, study_instance_uid or chosen.study_instance_uid)


# ------------------------------------------------------------------------------ internals
def _content_root(dataset: Any, uid: str, sop_class: str) -> Any:
    """The document's root CONTAINER as a highdicom content item (children parsed)."""
    import highdicom as hd
    from pydicom.dataset import Dataset

    if not hasattr(dataset, "ContentSequence"):
        raise SRSkip(uid, "the SR has no content (ContentSequence is missing)")
    try:
        if sop_class == BASIC_TEXT_SR:
            # highdicom's SR document classes do not take Basic Text SR; its content items do.
            root = Dataset()
            root.ValueType = getattr(dataset, "ValueType", "CONTAINER")
            root.ConceptNameCodeSequence = dataset.ConceptNameCodeSequence
            root.ContinuityOfContent = getattr(dataset, "ContinuityOfContent", "SEPARATE")
            root.ContentSequence = hd.sr.ContentSequence.from_sequence(dataset.ContentSequence)
            return hd.sr.ContentSequence.from_sequence([root], is_root=True, copy=False)[0]
        cls = {
            ENHANCED_SR: hd.sr.EnhancedSR,
            COMPREHENSIVE_SR: hd.sr.ComprehensiveSR,
            COMPREHENSIVE_3D_SR: hd.sr.Comprehensive3DSR,
        }[sop_class]
        with warnings.catch_warnings():  # pydicom warns when copying a dataset read from a buffer
            warnings.simplefilter("ignore", UserWarning)
            return cls.from_dataset(dataset, copy=True).content[0]
    except SRSkip:
        raise
    except Exception as exc:  # highdicom raises AttributeError/ValueError/TypeError/KeyError on bad trees
        detail = " ".join(str(exc).split())
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise SRSkip(uid, f"corrupt SR content tree ({type(exc).__name__}: {detail})") from None


def _collect_sections(root: Any) -> list[tuple[str, str]]:
    """``(heading, text)`` in document order; consecutive items of one heading merged."""
    found: list[tuple[str, str]] = []

    def visit(items: Iterable[Any], heading: str) -> None:
        for item in items:
            value_type = str(getattr(item, "ValueType", ""))
            name = _meaning(item)
            if value_type == "CONTAINER":
                visit(getattr(item, "ContentSequence", None) or [], _heading(name) or heading)
            elif value_type == "TEXT":
                text = str(getattr(item, "TextValue", "") or "").strip()
                if text:
                    found.append((heading or _HEADINGS.get(name.lower(), ""), text))
            elif value_type == "CODE" and name.lower() in _FINDING_CODE_NAMES:
                codes = getattr(item, "ConceptCodeSequence", None) or []
                meaning = str(getattr(codes[0], "CodeMeaning", "") or "").strip() if codes else ""
                if meaning:
                    found.append((heading, meaning))

    visit(getattr(root, "ContentSequence", None) or [], "")
    merged: list[tuple[str, str]] = []
    for heading, text in found:
        if merged and merged[-1][0] == heading:
            merged[-1] = (heading, f"{merged[-1][1]}\n{text}")
        else:
            merged.append((heading, text))
    return merged


def _heading(name: str) -> str:
    key = name.strip().lower()
    if not key:
        return ""
    return _HEADINGS.get(key, key.upper())


def _meaning(item: Any) -> str:
    names = getattr(item, "ConceptNameCodeSequence", None) or []
    return str(getattr(names[0], "CodeMeaning", "") or "").strip() if names else ""


def _content_datetime(dataset: Any) -> Optional[_dt.datetime]:
    date = str(getattr(dataset, "ContentDate", "") or "").strip()
    time = str(getattr(dataset, "ContentTime", "") or "").strip()
    if not date:
        return None
    try:
        day = _dt.datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return None
    digits = time.split(".")[0]
    hours, minutes, seconds = (int(digits[i : i + 2]) if len(digits) >= i + 2 else 0 for i in (0, 2, 4))
    micro = 0
    if "." in time:
        frac = time.split(".")[1][:6]
        micro = int(frac.ljust(6, "0")) if frac.isdigit() else 0
    try:
        return day.replace(hour=hours, minute=minutes, second=min(seconds, 59), microsecond=micro)
    except ValueError:
        return day


def _uid_name(uid: str) -> str:
    if not uid:
        return "an instance without SOP class"
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:
        name = uid
    return f"{name}" if name != uid else f"SOP class {uid}"


# ------------------------------------------------------------------------------ writing
def report_sections(text: str) -> list[tuple[str, str]]:
    """A free-text report split at its section labels, for writing it as an SR.

    ``(heading, text)`` in order: the label in capitals ("FINDINGS", "IMPRESSION",
    "INDICATION", ...; "IMPRESSIONS"/"CONCLUSION" become "IMPRESSION"), "" for text before the
    first label. A report without labels is one ``("", text)`` section.
    """
    from afloc_training.reports import _find_headers

    text = (text or "").replace("\r\n", "\n").strip()
    headers = _find_headers(text)
    sections = []
    if not headers or headers[0][0] > 0:
        head = text[: headers[0][0] if headers else len(text)].strip()
        if head:
            sections.append(("", head))
    for index, (_, end, name) in enumerate(headers):
        stop = headers[index + 1][0] if index + 1 < len(headers) else len(text)
        body = text[end:stop].strip()
        if body:
            sections.append((_HEADINGS.get(name, name.upper()), body))
    return sections


#: Document titles and section concepts used by :func:`make_report_sr`.
REPORT_TITLE = ("18748-4", "LN", "Diagnostic imaging report")
ADDENDUM_TITLE = ("55107-7", "LN", "Addendum")
_SECTION_CODES = {
    "FINDINGS": (("121070", "DCM", "Findings"), ("121071", "DCM", "Finding")),
    "IMPRESSION": (("121072", "DCM", "Impressions"), ("121073", "DCM", "Impression")),
}
_SR_CLASSES = {"basic": BASIC_TEXT_SR, "enhanced": ENHANCED_SR, "comprehensive": COMPREHENSIVE_SR}


def make_report_sr(
    image: Any,
    sections: Sequence[tuple[str, str]],
    kind: str = "comprehensive",
    final: bool = True,
    addendum: bool = False,
    content_datetime: Optional[_dt.datetime] = None,
    series_instance_uid: Optional[str] = None,
    sop_instance_uid: Optional[str] = None,
    series_number: int = 900,
    observer: str = "Reporting^Radiologist",
) -> Any:
    """A report SR in the study of ``image`` (a pydicom dataset), written with highdicom.

    ``sections`` are ``(heading, text)``: ``FINDINGS`` and ``IMPRESSION`` use the standard
    concepts (DCM 121070 / 121072), another heading becomes a container of that name, ""
    puts the text at the top level. ``kind`` is ``basic`` (Basic Text SR), ``enhanced`` or
    ``comprehensive``. A ``final`` document is COMPLETE and VERIFIED (by ``observer``), else
    PARTIAL and UNVERIFIED. ``content_datetime`` replaces the creation time highdicom stamps.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    if kind not in _SR_CLASSES:
        raise ValueError(f"kind must be one of {', '.join(_SR_CLASSES)}, got {kind!r}")

    def code(triple: tuple[str, str, str]) -> Any:
        return hd.sr.CodedConcept(value=triple[0], scheme_designator=triple[1], meaning=triple[2])

    title = code(ADDENDUM_TITLE if addendum else REPORT_TITLE)
    root = hd.sr.ContainerContentItem(name=title, template_id="2000" if not addendum else None)
    children = []
    for heading, text in sections:
        container_code, item_code = _SECTION_CODES.get(
            heading.upper(), ((heading.lower().replace(" ", "-")[:16] or "text", "99AFLOC", heading.title()),
                              ("121106", "DCM", "Comment"))
        )
        item = hd.sr.TextContentItem(name=code(item_code), value=text, relationship_type="CONTAINS")
        if not heading:
            children.append(item)
            continue
        container = hd.sr.ContainerContentItem(name=code(container_code), relationship_type="CONTAINS")
        container.ContentSequence = hd.sr.ContentSequence([item])
        children.append(container)
    root.ContentSequence = hd.sr.ContentSequence(children)
    content = hd.sr.ContentSequence([root], is_root=True)
    cls = hd.sr.ComprehensiveSR if kind == "comprehensive" else hd.sr.EnhancedSR
    sop_uid = sop_instance_uid or generate_uid()
    document = cls(
        evidence=[image],
        content=content,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer="AFLoc Label",
        is_complete=final,
        is_final=final,
        is_verified=final,
        verifying_observer_name=observer if final else None,
        verifying_organization="AFLoc Label" if final else None,
    )
    if kind == "basic":
        # Same content tree (containers and text only), Basic Text SR storage class.
        document.SOPClassUID = BASIC_TEXT_SR
        document.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    if content_datetime is not None:
        stamp_date, stamp_time = content_datetime.strftime("%Y%m%d"), content_datetime.strftime("%H%M%S")
        document.ContentDate, document.ContentTime = stamp_date, stamp_time
        document.InstanceCreationDate, document.InstanceCreationTime = stamp_date, stamp_time
        if final:
            document.VerifyingObserverSequence[0].VerificationDateTime = stamp_date + stamp_time
    return document
