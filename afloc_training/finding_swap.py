"""Finding-swapped reports: hard negatives that differ from the truth only in *what* is seen.

A report that says "small right lower lobe nodule" is wrong for its own image once "nodule" reads
"effusion", and wrong for no other reason: the side, the zone and the rest of the report are the
image's own. Scored as an extra negative for the image (``loss.swap_negatives`` with
``loss.swap_kind: finding``; :meth:`afloc_models.model.AFLoc.compute_loss`), such a copy can only
be told apart from the true report by the kind of finding at that place, which is what the maps of
the phantom-trained models were measured to lack: on one image the map of "right nodule" and the
map of "right pleural effusion" correlate at about 0.8 (docs/quality-log.md, twenty-first session).
Nothing but the report's words is used: no mask, no box.

The replacement is a finding the report does not mention, so the copy is never true of the image.
Reports reach the training loader as normalised sentences (lowercase, no punctuation;
:mod:`afloc_training.reports`), so whole words are swapped. A report that names none of
:data:`FINDING_TERMS` (e.g. "the heart is enlarged") has no swapped copy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

__all__ = ["FINDING_CUES", "FINDING_TERMS", "REPLACEMENTS", "findings_named", "swap_finding"]

#: The words that name each finding in a normalised report (singular and plural, common synonyms);
#: the first is the word a swapped report uses for the finding.
FINDING_TERMS: dict[str, tuple[str, ...]] = {
    "opacity": ("consolidation", "consolidations", "opacity", "opacities", "pneumonia", "infiltrate", "infiltrates"),
    "nodule": ("nodule", "nodules", "nodular", "mass", "masses"),
    "effusion": ("effusion", "effusions"),
    "pneumothorax": ("pneumothorax", "pneumothoraces"),
    "atelectasis": ("atelectasis",),
    "edema": ("edema", "oedema"),
    "cardiomegaly": ("cardiomegaly",),
}

#: The word a swapped report uses for each finding.
REPLACEMENTS: dict[str, str] = {finding: terms[0] for finding, terms in FINDING_TERMS.items()}

#: Wordings that state a finding without one of its terms ("the heart is enlarged"): all the
#: words of one tuple in one sentence. They are never renamed, but a report that states a
#: finding this way is never given that finding as a replacement.
FINDING_CUES: dict[str, tuple[tuple[str, ...], ...]] = {
    "cardiomegaly": (("heart", "enlarged"), ("cardiac", "enlarged")),
    "opacity": (("airspace",),),
    "effusion": (("pleural", "fluid"),),
}

_FINDING_OF = {word: finding for finding, words in FINDING_TERMS.items() for word in words}


def _termed_and_cued(sentences: Sequence[str]) -> tuple[set[str], set[str]]:
    """The findings ``sentences`` name by a term, and those they state by a cue, each sentence
    split once."""
    termed: set[str] = set()
    cued: set[str] = set()
    for sentence in sentences:
        words = set(sentence.split())
        termed.update(_FINDING_OF[w] for w in words if w in _FINDING_OF)
        cued.update(f for f, cues in FINDING_CUES.items() if any(all(w in words for w in cue) for cue in cues))
    return termed, cued


def findings_named(sentences: Sequence[str]) -> list[str]:
    """The findings that ``sentences`` state, by a term of :data:`FINDING_TERMS` or a wording of
    :data:`FINDING_CUES`, in table order."""
    termed, cued = _termed_and_cued(sentences)
    return [finding for finding in FINDING_TERMS if finding in termed | cued]


def swap_finding(sentences: Sequence[str], rng: np.random.Generator) -> Optional[tuple[str, ...]]:
    """The report with one of its findings renamed as a finding it does not state, or None.

    ``rng`` picks the finding to rename (among those named by a term) and its replacement (among
    those the report does not state, :func:`findings_named`); every term of the renamed finding
    is replaced, in every sentence, so the copy does not also state it by name. None when no
    finding is named by a term or the report states every finding.
    """
    termed, cued = _termed_and_cued(sentences)
    renamable = [finding for finding in FINDING_TERMS if finding in termed]
    unnamed = [finding for finding in FINDING_TERMS if finding not in termed | cued]
    if not renamable or not unnamed:
        return None
    source = renamable[int(rng.integers(len(renamable)))]
    target = REPLACEMENTS[unnamed[int(rng.integers(len(unnamed)))]]
    words = FINDING_TERMS[source]
    return tuple(" ".join(target if w in words else w for w in sentence.split()) for sentence in sentences)
