"""BERT-family text encoder with AFLoc's word, sentence and report levels.

Token embeddings are the sum of the last N hidden layers. Sub-word pieces are summed into
words and words averaged into sentences with ``scatter_add`` (no Python loop over tokens or
batch items, so no GPU synchronisation per token); the report embedding is the mean of its
words (``compat: project``). With ``compat: published`` the levels follow the published code:
the [CLS] token is the first unit of the word and the sentence levels, periods between
sentences are words, and the report embedding is the sum of every token from [CLS] to [SEP]
divided by the token budget (the mean over all 97 positions of the published padded window,
whose padding positions hold zeros). Each level has its own projection to the joint width D, or none when the encoder is
already D wide (the published Bio_ClinicalBERT model, D = 768).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from afloc_models.config import COMPAT_MODES, TextEncoderConfig
from afloc_models.errors import CheckpointError, ConfigError
from afloc_models.tokenization import ReportTokenizer, TokenizedReports


@dataclass
class TextFeatures:
    """Text features at AFLoc's three levels, all of width D.

    Attributes:
        words: ``[B, D, W]`` word embeddings (sub-words summed); padded beyond ``n_words``.
        n_words: ``[B]`` valid words per report.
        sentences: ``[B, D, S]`` sentence embeddings (mean of their words); padded beyond ``n_sentences``.
        n_sentences: ``[B]`` valid sentences per report.
        report: ``[B, D]`` whole-report embedding.
    """

    words: torch.Tensor
    n_words: torch.Tensor
    sentences: torch.Tensor
    n_sentences: torch.Tensor
    report: torch.Tensor


def resolve_model_path(model_path: str) -> Path:
    """A local folder, or ``package:<module>`` for a model shipped inside a Python package."""
    if model_path.startswith("package:"):
        module_name = model_path.split(":", 1)[1]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ConfigError(
                f"text encoder package '{module_name}' is not installed (pip install {module_name.replace('_', '-')})"
            ) from None
        return Path(module.get_model_path())
    path = Path(model_path).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"text encoder folder '{path}' has no config.json; point text.model_path at a local "
            "Hugging Face BERT-family model folder (models are never downloaded)"
        )
    return path


def load_hf_text_model(folder: Path, random_init: bool):
    """Load a BERT-family model and tokenizer from ``folder`` without network access."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        # float32 whatever the folder stores (fp16 / bf16 exports are common): training and the
        # heads expect it, and the predictor converts on its own when asked for bfloat16.
        if random_init:
            config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
            model = AutoModel.from_config(config, dtype=torch.float32)
        else:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the text encoder from '{folder}': {exc}") from None
    return model, tokenizer


class TextEncoder(nn.Module):
    """Encodes :class:`TokenizedReports` into :class:`TextFeatures`.

    Args:
        config: which model folder and how many layers to sum.
        embed_dim: joint width D.
        folder: load from this folder instead of ``config.model_path`` (used by checkpoints).
        random_init: build the architecture only; weights come from a checkpoint or stay random.
    """

    def __init__(
        self,
        config: TextEncoderConfig,
        embed_dim: int,
        folder: Optional[Path] = None,
        random_init: Optional[bool] = None,
        compat: str = "project",
    ):
        super().__init__()
        if compat not in COMPAT_MODES:
            raise ConfigError(f"compat must be one of {', '.join(COMPAT_MODES)}, got {compat!r}")
        folder = folder if folder is not None else resolve_model_path(config.model_path)
        random_init = config.random_init if random_init is None else random_init
        self.model, hf_tokenizer = load_hf_text_model(folder, random_init)
        self.compat = compat
        self.max_tokens = int(config.max_tokens)
        self.tokenizer = ReportTokenizer(hf_tokenizer, config.max_tokens, period_units=compat == "published")
        layers = int(self.model.config.num_hidden_layers)
        if not 1 <= config.last_n_layers <= layers:
            raise ConfigError(f"text.last_n_layers must be in 1..{layers} for this model, got {config.last_n_layers}")
        self.last_n_layers = config.last_n_layers
        hidden = int(self.model.config.hidden_size)
        self.hidden_size = hidden

        def projection() -> nn.Module:
            return nn.Identity() if hidden == embed_dim else nn.Linear(hidden, embed_dim)

        self.word_proj = projection()
        self.sentence_proj = projection()
        self.report_proj = projection()
        self._token_cache: Optional[TokenCache] = None

    def cache_frozen_tokens(self, max_bytes: int, batched: bool = False) -> None:
        """Remember the body's token embeddings per report (only valid while the body is frozen).

        A frozen body (no gradients, eval mode) maps the same tokens to the same embeddings, so
        a training run that revisits its reports each epoch can skip the body's forward pass
        after the first epoch. ``max_bytes`` bounds the memory; reports beyond it are recomputed.
        ``batched``: reports not cached yet go through the body together (see :class:`TokenCache`).
        """
        if any(p.requires_grad for p in self.model.parameters()):
            raise ConfigError("the token cache needs a frozen text body (optim.text_lr_scale: 0)")
        self._token_cache = TokenCache(max_bytes, batched=batched)

    def forward(self, tokens: TokenizedReports) -> TextFeatures:
        token_emb = self.token_embeddings(tokens)  # [B, T, H]
        words = merge_words(token_emb, tokens.token_word, int(tokens.word_sentence.shape[1]))  # [B, W, H]
        sentences = pool_sentences(words, tokens.word_sentence, int(tokens.n_sentences.max()))  # [B, S, H]
        n_words, n_sentences = tokens.n_words, tokens.n_sentences
        if self.compat == "published":
            cls = token_emb[:, :1]  # [B, 1, H]
            words, sentences = torch.cat([cls, words], dim=1), torch.cat([cls, sentences], dim=1)
            n_words, n_sentences = n_words + 1, n_sentences + 1
            report = published_report(token_emb, tokens.attention_mask, self.max_tokens)
        else:
            report = masked_mean(words, tokens.word_sentence >= 0)  # [B, H]
        return TextFeatures(
            words=self.word_proj(words).transpose(1, 2),
            n_words=n_words,
            sentences=self.sentence_proj(sentences).transpose(1, 2),
            n_sentences=n_sentences,
            report=self.report_proj(report),
        )

    def token_embeddings(self, tokens: TokenizedReports) -> torch.Tensor:
        """Sum of the last N hidden layers, ``[B, T, H]`` (from the cache where one is on)."""
        if self._token_cache is not None and not self.model.training:
            return self._token_cache.lookup(tokens, self._body)
        return self._body(tokens)

    def _body(self, tokens: TokenizedReports) -> torch.Tensor:
        out = self.model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            output_hidden_states=True,
            return_dict=True,
        )
        return torch.stack(out.hidden_states[-self.last_n_layers :], dim=0).sum(dim=0)


class TokenCache:
    """Token embeddings ``[T_i, H]`` of a frozen text body, keyed by each report's token ids.

    Reports not cached yet go through the body one at a time, unpadded, by default: a row is then
    the same bits whichever reports share its batch, so runs with and without the cache train
    identically (the CPU recipe's reproducibility rests on it). ``batched=True`` sends them
    through the body in one padded batch instead. That is several times faster (on a 2-core CPU,
    13.3 against 3.4 ms a report for the ``small`` preset's MiniLM; a GPU pays a kernel launch per
    layer and report). Rows then agree with the one-at-a-time ones only to rounding. The trainer
    uses it on CUDA, where a first epoch over 16,000 reports otherwise makes 15,200 single-report
    passes (docs/quality-log.md, fifteenth session; the gain there is not measured yet).
    """

    def __init__(self, max_bytes: int, batched: bool = False):
        self.max_bytes = int(max_bytes)
        self.batched = bool(batched)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, torch.Tensor] = {}

    def lookup(self, tokens: TokenizedReports, body: Callable[[TokenizedReports], torch.Tensor]) -> torch.Tensor:
        """Embeddings ``[B, T, H]`` of ``tokens``; rows not cached yet go through ``body`` one report at a
        time (or, ``batched``, together).

        One at a time, every row, cached or not, is computed the same way (alone, unpadded), so a
        run with the cache and one without (``max_bytes=0``) feed the model bit-identical embeddings.
        """
        lengths = tokens.attention_mask.sum(dim=1).tolist()
        ids = tokens.input_ids.cpu().numpy()
        keys = [ids[i, :n].tobytes() for i, n in enumerate(lengths)]
        missing = [i for i, key in enumerate(keys) if key not in self._rows]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[int, torch.Tensor] = {}
        if self.batched and missing:
            rows = body(tokens.select(torch.tensor(missing, device=tokens.input_ids.device)))  # [M, T, H]
            fresh = {i: rows[j, : lengths[i]] for j, i in enumerate(missing)}
        for i in missing:
            if i not in fresh:
                # Each report alone, at its own length: its embeddings then do not depend on which
                # reports share its batch or how far they pad it (batched matrix products round
                # differently with the shapes), so cached and recomputed rows are bit-identical.
                fresh[i] = body(_one_report(tokens, i, lengths[i]))[0]  # [T_i, H]
            size = fresh[i].numel() * fresh[i].element_size()
            if self.bytes + size <= self.max_bytes:
                self._rows[keys[i]] = fresh[i].detach().clone()
                self.bytes += size
        first = fresh[missing[0]] if missing else self._rows[keys[0]]
        out = first.new_zeros(len(keys), tokens.input_ids.shape[1], first.shape[-1])
        # Pad positions stay zero: no word takes tokens from them (token_word is -1 there).
        for i, key in enumerate(keys):
            out[i, : lengths[i]] = fresh[i] if i in fresh else self._rows[key]
        return out


def _one_report(tokens: TokenizedReports, row: int, length: int) -> TokenizedReports:
    """Report ``row`` of ``tokens`` as a batch of one, its padding cut off (``length`` real tokens)."""
    index = torch.tensor([row], device=tokens.input_ids.device)
    single = tokens.select(index)
    return TokenizedReports(
        input_ids=single.input_ids[:, :length],
        attention_mask=single.attention_mask[:, :length],
        token_word=single.token_word[:, :length],
        word_sentence=single.word_sentence,
        n_words=single.n_words,
        n_sentences=single.n_sentences,
        words=single.words,
    )


def merge_words(token_emb: torch.Tensor, token_word: torch.Tensor, n_words: int) -> torch.Tensor:
    """Sum sub-word token embeddings into words.

    Args:
        token_emb: ``[B, T, H]``.
        token_word: ``[B, T]`` word index per token, -1 for tokens that belong to no word.
        n_words: W, the padded word count.

    Returns:
        ``[B, W, H]``; rows of words with no tokens are zero.
    """
    batch, _, hidden = token_emb.shape
    valid = (token_word >= 0).unsqueeze(-1).to(token_emb.dtype)
    index = token_word.clamp(min=0).unsqueeze(-1).expand(-1, -1, hidden)
    words = token_emb.new_zeros(batch, n_words, hidden)
    return words.scatter_add(1, index, token_emb * valid)


def pool_sentences(words: torch.Tensor, word_sentence: torch.Tensor, n_sentences: int) -> torch.Tensor:
    """Average word embeddings ``[B, W, H]`` into sentences ``[B, S, H]`` by ``word_sentence`` ``[B, W]``."""
    batch, _, hidden = words.shape
    valid = (word_sentence >= 0).to(words.dtype)
    index = word_sentence.clamp(min=0)
    sums = words.new_zeros(batch, n_sentences, hidden).scatter_add(
        1, index.unsqueeze(-1).expand(-1, -1, hidden), words * valid.unsqueeze(-1)
    )
    counts = words.new_zeros(batch, n_sentences).scatter_add(1, index, valid)
    return sums / counts.clamp(min=1).unsqueeze(-1)


def published_report(token_emb: torch.Tensor, attention_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Published report embedding: tokens ``[B, T, H]`` from [CLS] to [SEP] summed, over ``window``.

    The published encoder averages its word units ([CLS], words, [SEP], then zero rows) over the
    whole padded window of ``window`` positions; the units add up to the sum of the real tokens.
    """
    weights = attention_mask.to(token_emb.dtype).unsqueeze(-1)
    return (token_emb * weights).sum(dim=1) / float(window)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[B, N, H]`` over positions where ``mask`` ``[B, N]`` is true -> ``[B, H]``."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
