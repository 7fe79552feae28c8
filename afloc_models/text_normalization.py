"""Text normalisation and negation shared by training (report sentences) and inference (prompts).

A prompt must look like the sentences the model was trained on, so both sides use
:func:`normalize_text`. Negation helpers let zero-shot classification pair a finding with its
absence ("pleural effusion" <-> "no pleural effusion") and let localization recognise a prompt
that names an absence.

Public API:
    normalize_text(text) -> str
    is_negated(normalized) -> bool
    counterpart(normalized) -> str
    mirror_sides(normalized) -> str
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["SIDE_WORDS", "counterpart", "is_negated", "mirror_sides", "normalize_text"]

# De-identification placeholders: MIMIC-CXR "___", MIMIC-II "[**Hospital1 18**]".
_PLACEHOLDER = re.compile(r"_{2,}|\[\*\*.*?\*\*\]")
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_DECIMAL_SENTINEL = "\x01"
_NON_WORD = re.compile(r"[^\w\x01]+")

# Negation cues at the start of a normalised text; group "lead" keeps "there is" for the counterpart.
_NEGATION = re.compile(
    r"^(?P<lead>there (?:is|are) )?"
    r"(?:no evidence of|negative for|absence of|free of|without|no|not|none of)\s+(?P<rest>.+)$"
)
_THERE_IS = re.compile(r"^(?P<lead>there (?:is|are)) (?P<rest>.+)$")


def normalize_text(text: str) -> str:
    """Lowercase words (letters and digits of any script) separated by single spaces.

    Accented letters lose their accent ("é" -> "e"), letters of other scripts are kept as they are
    ("右側胸水"), control and other invisible characters become spaces, de-identification
    placeholders (``___``) are removed, apostrophes are dropped ("patient's" -> "patients"), every
    other punctuation mark or symbol becomes a space, except the point of a decimal number ("3.5"),
    which carries meaning a tokeniser can keep.
    """
    if not text:
        return ""
    text = _PLACEHOLDER.sub(" ", text)
    text = unicodedata.normalize("NFKD", text)
    # Combining marks (accents) go; control, format and unassigned code points become spaces, so
    # the decimal sentinel below can never come from the input.
    text = "".join(
        " " if unicodedata.category(c)[0] == "C" else c for c in text if not unicodedata.combining(c)
    )
    text = text.lower().replace("'", "").replace("`", "")
    text = _DECIMAL_POINT.sub(_DECIMAL_SENTINEL, text)
    text = _NON_WORD.sub(" ", text.replace("_", " ")).replace(_DECIMAL_SENTINEL, ".")
    return " ".join(text.split())


def is_negated(normalized: str) -> bool:
    """Whether a normalised text states an absence ("no pleural effusion", "without edema")."""
    return _NEGATION.match(normalized) is not None


def counterpart(normalized: str) -> str:
    """The opposite statement of a normalised text, for zero-shot classification.

    "pleural effusion" <-> "no pleural effusion"; "there is pneumothorax" <-> "there is no
    pneumothorax".
    """
    negation = _NEGATION.match(normalized)
    if negation:
        return f"{negation.group('lead') or ''}{negation.group('rest')}"
    there = _THERE_IS.match(normalized)
    if there:
        return f"{there.group('lead')} no {there.group('rest')}"
    return f"no {normalized}"


#: The side words a left-right mirror exchanges (each maps to the other).
SIDE_WORDS: dict[str, str] = {"right": "left", "left": "right"}


def mirror_sides(normalized: str) -> str:
    """A normalised text as it reads on the left-right mirror of its image.

    "right lower lobe consolidation" -> "left lower lobe consolidation"; a text without a side
    word ("cardiomegaly", "bilateral pleural effusions") is returned unchanged.
    """
    return " ".join(SIDE_WORDS.get(word, word) for word in normalized.split())
