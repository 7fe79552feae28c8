"""Parsing of the request fields the AFLoc tasks accept.

Clients send values in whatever form their UI holds them: the stock Slicer module sends the
options table as strings (``"0.3"``, ``"true"``), OHIF sends JSON numbers and booleans, curl users
send either, and a client that echoes the task's ``config`` back sends a choice list as a list.
Every parser here accepts all of these and raises :class:`~lib.errors.BadRequestError` (or
:class:`~afloc_models.errors.PromptError` for prompts) with a message naming the field.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any, Optional, Sequence

from afloc_models.errors import PromptError

from lib.errors import BadRequestError

__all__ = [
    "LABEL_DTYPES",
    "LABEL_EXTENSIONS",
    "MAX_FINDINGS",
    "MAX_PROMPTS",
    "MAX_PROMPT_CHARS",
    "first_choice",
    "parse_bool",
    "parse_dtype",
    "parse_extension",
    "parse_findings",
    "parse_prompts",
    "parse_threshold",
]

#: Prompts one request may carry (each becomes one segment of one uint8 label).
MAX_PROMPTS = 8
#: Characters one prompt may have; the text encoder reads under 100 tokens anyway.
MAX_PROMPT_CHARS = 300
#: Findings one classification request may score.
MAX_FINDINGS = 32
#: Label file types the localize task writes (``.dcm`` is DICOM-SEG, for DICOM sources only).
LABEL_EXTENSIONS = (".nrrd", ".seg.nrrd", ".nii.gz", ".nii", ".dcm")
#: Label voxel types accepted in ``result_dtype``.
LABEL_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def first_choice(value: Any) -> Any:
    """A choice list echoed back from ``config`` means its first (default) entry."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def parse_bool(value: Any, name: str, default: bool) -> bool:
    value = first_choice(value)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise BadRequestError(f"'{name}' must be true or false, got {value!r}")


def _split_list(value: Any, name: str) -> list[str]:
    """A string, a JSON list in a string, or a list of strings -> list of stripped strings (unsplit)."""
    if value is None:
        return []
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRequestError(f"'{name}' looks like a JSON list but is not valid JSON: {exc}") from None
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise BadRequestError(f"'{name}' must be a list of strings, got {value!r}")
        return [v.strip() for v in value]
    if isinstance(value, str):
        return [value]
    raise BadRequestError(f"'{name}' must be a string or a list of strings, got {type(value).__name__}")


def _clean(text: str) -> str:
    """Control and other invisible characters become spaces; runs of whitespace one space."""
    return " ".join("".join(" " if unicodedata.category(c)[0] == "C" else c for c in text).split())


def _dedupe(items: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    kept = []
    for item in items:
        key = " ".join(item.lower().split())
        if item and key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def parse_prompts(value: Any) -> list[str]:
    """``prompt`` -> up to :data:`MAX_PROMPTS` prompts; ``;`` separates prompts in one string.

    Commas stay inside a prompt ("small, left apical pneumothorax" is one finding). Control
    characters become spaces (they must never reach a label file's header). Blank and repeated
    prompts are dropped; nothing left raises :class:`PromptError`.
    """
    parts: list[str] = []
    for item in _split_list(value, "prompt"):
        parts.extend(p.strip() for p in item.split(";"))
    prompts = _dedupe([_clean(p) for p in parts])
    if not prompts:
        raise PromptError(
            "prompt is empty: describe the finding to localize, e.g. 'pneumothorax'; "
            "separate several findings with ';'"
        )
    if len(prompts) > MAX_PROMPTS:
        raise PromptError(f"{len(prompts)} prompts given; at most {MAX_PROMPTS} are allowed in one request")
    for prompt in prompts:
        if len(prompt) > MAX_PROMPT_CHARS:
            raise PromptError(
                f"prompt '{prompt[:40]}...' is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS}"
            )
    return prompts


def parse_findings(value: Any) -> list[str]:
    """``findings`` -> finding names; commas or semicolons separate them in a string."""
    parts: list[str] = []
    for item in _split_list(value, "findings"):
        parts.extend(p.strip() for chunk in item.split(";") for p in chunk.split(","))
    findings = _dedupe([_clean(p) for p in parts])
    if not findings:
        raise PromptError("findings is empty: list findings to score, e.g. 'pneumonia, pleural effusion'")
    if len(findings) > MAX_FINDINGS:
        raise PromptError(f"{len(findings)} findings given; at most {MAX_FINDINGS} are allowed in one request")
    for finding in findings:
        if len(finding) > MAX_PROMPT_CHARS:
            raise PromptError(
                f"finding '{finding[:40]}...' is {len(finding)} characters long; the limit is {MAX_PROMPT_CHARS}"
            )
    return findings


def parse_threshold(value: Any) -> Optional[float]:
    """``threshold`` -> a float in ``[-1, 1]`` (the heatmap's range), or None for the model default."""
    value = first_choice(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise BadRequestError(f"'threshold' must be a number in [-1, 1], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequestError(f"'threshold' must be a number in [-1, 1], got {value!r}") from None
    if not math.isfinite(number) or not -1.0 <= number <= 1.0:
        raise BadRequestError(f"'threshold' must be a number in [-1, 1] (the heatmap's range), got {value!r}")
    return number


def parse_extension(value: Any, default: str = ".nrrd") -> str:
    """``result_extension`` -> one of :data:`LABEL_EXTENSIONS` (leading dot optional)."""
    value = first_choice(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str):
        raise BadRequestError(f"'result_extension' must be a string, got {value!r}")
    ext = value.strip().lower()
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext not in LABEL_EXTENSIONS:
        raise BadRequestError(f"'result_extension' {value!r} is not supported; use one of {', '.join(LABEL_EXTENSIONS)}")
    return ext


def parse_dtype(value: Any, default: str = "uint8") -> str:
    """``result_dtype`` -> one of :data:`LABEL_DTYPES`."""
    value = first_choice(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str) or value.strip().lower() not in LABEL_DTYPES:
        raise BadRequestError(f"'result_dtype' {value!r} is not supported; use one of {', '.join(LABEL_DTYPES)}")
    return value.strip().lower()
