"""Prompt text: splitting several findings, quick picks, and a small persistent history.

A prompt field may hold several findings separated by ``;`` (or line breaks), e.g.
``"right pleural effusion; cardiomegaly"``; each becomes one segment. The server receives them
joined with ``"; "`` in its ``prompt`` option, which is also how the stock MONAI Label Slicer
module passes them (one free-text box).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from .errors import PromptInputError

#: Common chest X-ray findings offered as one-click picks (each has a standard code in
#: :mod:`AFLocLib.terminology`).
QUICK_PICKS: tuple[str, ...] = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "atelectasis",
    "cardiomegaly",
    "pulmonary edema",
    "lung nodule",
    "pneumonia",
    "emphysema",
    "mass",
)

#: Longest single prompt, in characters. The text encoder truncates long input anyway; a prompt
#: this long is almost always a pasted report, which belongs in training, not in a prompt.
MAX_PROMPT_CHARS = 200
#: Most prompts per run: each prompt is one segment and one heatmap sent back.
MAX_PROMPTS = 8

_SEPARATORS = re.compile(r"[;\n\r]+")
_SPACES = re.compile(r"\s+")


def split_prompts(text: str) -> list[str]:
    """``"a; b;; A"`` -> ``["a", "b"]``: split on ``;`` and line breaks, trim, drop repeats.

    Repeats are compared case-insensitively; the first spelling is kept.

    Raises:
        PromptInputError: no finding is left, one is too long, or there are too many.
    """
    prompts: list[str] = []
    seen: set[str] = set()
    for raw in _SEPARATORS.split(text or ""):
        prompt = _SPACES.sub(" ", raw).strip(" ,.")
        if not prompt:
            continue
        if len(prompt) > MAX_PROMPT_CHARS:
            raise PromptInputError(
                f"prompt '{prompt[:40]}...' is {len(prompt)} characters long; "
                f"keep each finding under {MAX_PROMPT_CHARS} characters"
            )
        key = prompt.lower()
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    if not prompts:
        raise PromptInputError("enter at least one finding, e.g. 'pleural effusion' (separate several with ';')")
    if len(prompts) > MAX_PROMPTS:
        raise PromptInputError(f"{len(prompts)} findings given; run at most {MAX_PROMPTS} at once")
    return prompts


def join_prompts(prompts: Iterable[str]) -> str:
    """Inverse of :func:`split_prompts` for display and for the server's ``prompt`` option."""
    return "; ".join(p.strip() for p in prompts if p.strip())


def add_quick_pick(text: str, pick: str) -> str:
    """Append ``pick`` to the prompt field's ``text`` unless it is already there."""
    current = [p.strip() for p in _SEPARATORS.split(text or "") if p.strip()]
    if pick.lower() in (p.lower() for p in current):
        return join_prompts(current)
    return join_prompts([*current, pick])


class PromptHistory:
    """Most-recent-first list of prompt texts, stored as a JSON string (e.g. in QSettings)."""

    def __init__(self, entries: Iterable[str] = (), max_entries: int = 20):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: list[str] = []
        for entry in reversed(list(entries)):
            self.add(entry)

    @property
    def entries(self) -> list[str]:
        return list(self._entries)

    def add(self, text: str) -> None:
        """Put ``text`` (normalised) first; an equal older entry moves up instead of repeating."""
        try:
            normalized = join_prompts(split_prompts(text))
        except PromptInputError:
            return
        self._entries = [e for e in self._entries if e.lower() != normalized.lower()]
        self._entries.insert(0, normalized)
        del self._entries[self.max_entries :]

    def to_json(self) -> str:
        return json.dumps(self._entries)

    @classmethod
    def from_json(cls, text: str | None, max_entries: int = 20) -> "PromptHistory":
        """Restore from :meth:`to_json`; anything unreadable gives an empty history."""
        try:
            entries = json.loads(text) if text else []
        except json.JSONDecodeError:
            entries = []
        if not isinstance(entries, list):
            entries = []
        return cls([e for e in entries if isinstance(e, str)], max_entries=max_entries)
