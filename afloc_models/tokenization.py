"""Reports (lists of sentences) to token tensors with word and sentence indices.

AFLoc matches image regions to *words* and *sentences*, but a WordPiece tokenizer emits
sub-words ("pneumothorax" -> 6 pieces in MiniLM's vocabulary). Tokenization therefore also
returns, per token, the index of the word it belongs to, and per word, the index of its
sentence, so the text encoder can pool pieces into words and words into sentences with
tensor operations alone.

Truncation keeps whole words: when the token budget ends inside a word, that word is dropped
rather than kept as a fragment.

With ``period_units`` (the published definition) a "." word stands between consecutive
sentences, as the published training text joins sentences with ". ". Such a period is a word
of its own (``word_sentence`` :data:`PERIOD`) that belongs to no sentence, except when it ends
the kept text, where the published pooling counts it into the last sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from afloc_models.errors import EmptyReportError

#: ``word_sentence`` of a period word that separates two sentences (``period_units``).
PERIOD = -2

#: One report: a list of sentences, or a single string treated as one sentence (a prompt).
ReportInput = Union[str, Sequence[str]]


@dataclass
class TokenizedReports:
    """A tokenized batch of reports.

    Attributes:
        input_ids: ``[B, T]`` token ids with the tokenizer's special tokens.
        attention_mask: ``[B, T]`` 1 for real tokens.
        token_word: ``[B, T]`` index of the word each token belongs to; -1 for special and pad tokens.
        word_sentence: ``[B, W]`` index of the sentence each word belongs to; -1 for padding,
            :data:`PERIOD` for a separating period word (``period_units`` only).
        n_words: ``[B]`` words kept per report (>= 1).
        n_sentences: ``[B]`` sentences kept per report (>= 1).
        words: the kept words of each report, for display (not used by the model).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_word: torch.Tensor
    word_sentence: torch.Tensor
    n_words: torch.Tensor
    n_sentences: torch.Tensor
    words: list[list[str]]

    _TENSORS = ("input_ids", "attention_mask", "token_word", "word_sentence", "n_words", "n_sentences")

    def to(self, device: Union[str, torch.device]) -> "TokenizedReports":
        moved = {name: getattr(self, name).to(device) for name in self._TENSORS}
        return TokenizedReports(words=self.words, **moved)

    def select(self, index: torch.Tensor) -> "TokenizedReports":
        """The reports at ``index`` ``[M]`` (same device, same padded lengths)."""
        picked = {name: getattr(self, name).index_select(0, index) for name in self._TENSORS}
        return TokenizedReports(words=[self.words[i] for i in index.tolist()], **picked)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class ReportTokenizer:
    """Wraps a Hugging Face BERT-family tokenizer; see the module docstring."""

    def __init__(self, hf_tokenizer, max_tokens: int, period_units: bool = False):
        if max_tokens < 3:
            raise ValueError(f"max_tokens must leave room for text between special tokens, got {max_tokens}")
        self.hf_tokenizer = hf_tokenizer
        self.max_tokens = max_tokens
        self.period_units = bool(period_units)
        self.cls_id = hf_tokenizer.cls_token_id
        self.sep_id = hf_tokenizer.sep_token_id
        self.pad_id = hf_tokenizer.pad_token_id if hf_tokenizer.pad_token_id is not None else 0
        if self.cls_id is None or self.sep_id is None:
            raise ValueError("the text encoder's tokenizer has no [CLS]/[SEP] tokens; a BERT-family model is required")

    def __call__(self, reports: Sequence[ReportInput]) -> TokenizedReports:
        """Tokenize ``reports``; each is a list of sentences or one string (one sentence)."""
        if isinstance(reports, str):
            raise TypeError("pass a list of reports; wrap a single prompt as [prompt]")
        budget = self.max_tokens - 2  # [CLS] and [SEP]
        rows: list[tuple[list[int], list[int], list[int], list[str]]] = []
        for index, report in enumerate(reports):
            sentences = [report] if isinstance(report, str) else list(report)
            words, word_sentence_raw = [], []
            for s_index, sentence in enumerate(sentences):
                split = str(sentence).split()
                if self.period_units and split and words:
                    words.append(".")
                    word_sentence_raw.append(PERIOD)
                for word in split:
                    words.append(word)
                    word_sentence_raw.append(s_index)
            if not words:
                raise EmptyReportError(f"report {index} has no words (empty text or empty prompt)")
            encoding = self.hf_tokenizer(
                words, is_split_into_words=True, add_special_tokens=False, truncation=False
            )
            ids = encoding["input_ids"]
            word_ids = encoding.word_ids()
            ids, word_ids = _cut_at_word_boundary(ids, word_ids, budget)
            if not ids:
                raise EmptyReportError(
                    f"report {index} has no tokens the text encoder knows "
                    f"(first word: {words[0][:40]!r}) or its first word alone exceeds {budget} tokens"
                )
            # Renumber kept words 0..n-1 (words that produced no tokens disappear).
            kept = sorted(set(word_ids))
            renumber = {old: new for new, old in enumerate(kept)}
            token_word = [renumber[w] for w in word_ids]
            sentence_raw = [word_sentence_raw[w] for w in kept]
            sentence_renumber = {old: new for new, old in enumerate(sorted(set(sentence_raw) - {PERIOD}))}
            sentence_renumber[PERIOD] = PERIOD
            word_sentence = [sentence_renumber[s] for s in sentence_raw]
            if word_sentence[-1] == PERIOD:  # a period ending the kept text joins the last sentence
                word_sentence[-1] = max(word_sentence)
            rows.append((ids, token_word, word_sentence, [words[w] for w in kept]))
        return self._pad(rows)

    def _pad(self, rows) -> TokenizedReports:
        batch = len(rows)
        max_tokens = max(len(ids) for ids, *_ in rows) + 2
        max_words = max(len(ws) for _, _, ws, _ in rows)
        input_ids = torch.full((batch, max_tokens), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, max_tokens), dtype=torch.long)
        token_word = torch.full((batch, max_tokens), -1, dtype=torch.long)
        word_sentence = torch.full((batch, max_words), -1, dtype=torch.long)
        n_words = torch.zeros(batch, dtype=torch.long)
        n_sentences = torch.zeros(batch, dtype=torch.long)
        for b, (ids, tw, ws, _) in enumerate(rows):
            length = len(ids) + 2
            input_ids[b, :length] = torch.tensor([self.cls_id, *ids, self.sep_id])
            attention_mask[b, :length] = 1
            token_word[b, 1 : length - 1] = torch.tensor(tw)
            word_sentence[b, : len(ws)] = torch.tensor(ws)
            n_words[b] = len(ws)
            n_sentences[b] = max(ws) + 1
        return TokenizedReports(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_word=token_word,
            word_sentence=word_sentence,
            n_words=n_words,
            n_sentences=n_sentences,
            words=[row[3] for row in rows],
        )


def _cut_at_word_boundary(ids: list[int], word_ids: list, budget: int) -> tuple[list[int], list[int]]:
    """Keep at most ``budget`` tokens, dropping a word whose pieces would be cut."""
    if len(ids) <= budget:
        return list(ids), list(word_ids)
    cut = budget
    # ids[cut] is the first dropped token; if it continues the word of ids[cut - 1], back off.
    while cut > 0 and word_ids[cut] == word_ids[cut - 1]:
        cut -= 1
    return list(ids[:cut]), list(word_ids[:cut])
