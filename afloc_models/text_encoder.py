"""BERT-family text encoder with AFLoc's word, sentence and report levels.

Token embeddings are the sum of the last N hidden layers. Sub-word pieces are summed into
words and words averaged into sentences with ``scatter_add`` (no Python loop over tokens or
batch items, so no GPU synchronisation per token); the report embedding is the mean of its
words. Each level has its own projection to the joint width D, or none when the encoder is
already D wide (the published Bio_ClinicalBERT model, D = 768).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from afloc_models.config import TextEncoderConfig
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
        if random_init:
            model = AutoModel.from_config(AutoConfig.from_pretrained(str(folder), local_files_only=True))
        else:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
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
    ):
        super().__init__()
        folder = folder if folder is not None else resolve_model_path(config.model_path)
        random_init = config.random_init if random_init is None else random_init
        self.model, hf_tokenizer = load_hf_text_model(folder, random_init)
        self.tokenizer = ReportTokenizer(hf_tokenizer, config.max_tokens)
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

    def forward(self, tokens: TokenizedReports) -> TextFeatures:
        token_emb = self.token_embeddings(tokens)  # [B, T, H]
        words = merge_words(token_emb, tokens.token_word, int(tokens.word_sentence.shape[1]))  # [B, W, H]
        sentences = pool_sentences(words, tokens.word_sentence, int(tokens.n_sentences.max()))  # [B, S, H]
        report = masked_mean(words, tokens.word_sentence >= 0)  # [B, H]
        return TextFeatures(
            words=self.word_proj(words).transpose(1, 2),
            n_words=tokens.n_words,
            sentences=self.sentence_proj(sentences).transpose(1, 2),
            n_sentences=tokens.n_sentences,
            report=self.report_proj(report),
        )

    def token_embeddings(self, tokens: TokenizedReports) -> torch.Tensor:
        """Sum of the last N hidden layers, ``[B, T, H]``."""
        out = self.model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            output_hidden_states=True,
            return_dict=True,
        )
        return torch.stack(out.hidden_states[-self.last_n_layers :], dim=0).sum(dim=0)


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


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[B, N, H]`` over positions where ``mask`` ``[B, N]`` is true -> ``[B, H]``."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
