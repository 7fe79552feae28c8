"""Location-swapped reports: the hard negatives a report gives for free.

A report that says "small right upper lobe nodule" is wrong for its own image once "right" reads
"left" (or "upper" reads "lower"). Scored as an extra negative for the image, such a copy can only
be told apart from the true report by *where* the finding is, so the model has to look at the
finding itself rather than at what the image looks like overall. Nothing but the report's words is
used: no mask, no box (``loss.swap_negatives``; :meth:`afloc_models.model.AFLoc.compute_loss`).

Reports reach the training loader as normalised sentences (lowercase, no punctuation;
:mod:`afloc_training.reports`), so whole words are swapped. A report with no side or zone word
(e.g. "cardiomegaly", "bilateral pleural effusions") has no swapped copy.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from afloc_models.text_normalization import SIDE_WORDS

__all__ = ["SWAPS", "swap_location"]

#: Word exchanges by kind; each map is its own inverse.
SWAPS: dict[str, dict[str, str]] = {
    "side": dict(SIDE_WORDS),
    "zone": {
        "upper": "lower",
        "lower": "upper",
        "apical": "basilar",
        "basilar": "apical",
        "apex": "base",
        "base": "apex",
        "apices": "bases",
        "bases": "apices",
    },
}


def swap_location(sentences: Sequence[str], rng: np.random.Generator) -> Optional[tuple[str, ...]]:
    """The report with its sides (or its zones) exchanged, or None when it names neither.

    When both kinds occur, ``rng`` picks one, so a copy differs from the report in one way only.
    """
    words = [sentence.split() for sentence in sentences]
    present = [kind for kind, table in SWAPS.items() if any(w in table for sentence in words for w in sentence)]
    if not present:
        return None
    table = SWAPS[present[int(rng.integers(len(present)))]]
    return tuple(" ".join(table.get(w, w) for w in sentence) for sentence in words)
