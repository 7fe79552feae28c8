"""The AFLoc model: image encoder + text encoder + multilevel contrastive objective.

Checkpoints are one folder::

    checkpoint/
      config.yaml          # AFLocConfig
      model.safetensors    # every weight (image encoder, text encoder, projections)
      text_encoder/        # the text model's config.json and tokenizer files (no weights)
      meta.json            # format version, model version string, training summary

``save_pretrained`` writes to a temporary sibling folder and renames it into place, so a
crash never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from afloc_models.atomic import replace_dir
from afloc_models.attended_cells import interior, with_sink
from afloc_models.config import AFLocConfig, load_config
from afloc_models.errors import CheckpointError
from afloc_models.image_encoder import ImageEncoder, ImageFeatures
from afloc_models.losses import global_loss, local_loss
from afloc_models.text_encoder import TextEncoder, TextFeatures, resolve_model_path
from afloc_models.tokenization import ReportInput, TokenizedReports

CHECKPOINT_FORMAT = "afloc-checkpoint/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
META_FILE = "meta.json"
TEXT_DIR = "text_encoder"


@dataclass
class AFLocLosses:
    """Loss terms of one step; ``total`` is the weighted sum that is optimised."""

    total: torch.Tensor
    word: torch.Tensor
    sentence: torch.Tensor
    global_: torch.Tensor
    #: Mirror consistency of the sentence maps (``loss.mirror_consistency``), when trained with it.
    mirror: Optional[torch.Tensor] = None
    #: Appearance consistency of the sentence maps (``loss.appearance_consistency``), when trained with it.
    appearance: Optional[torch.Tensor] = None
    #: Mean entropy of the sentence maps (``loss.attention_entropy``), when trained with it.
    entropy: Optional[torch.Tensor] = None

    def as_floats(self) -> dict[str, float]:
        values = {
            "loss": float(self.total.detach()),
            "loss_word": float(self.word.detach()),
            "loss_sentence": float(self.sentence.detach()),
            "loss_global": float(self.global_.detach()),
        }
        if self.mirror is not None:
            values["loss_mirror"] = float(self.mirror.detach())
        if self.appearance is not None:
            values["loss_appearance"] = float(self.appearance.detach())
        if self.entropy is not None:
            values["loss_entropy"] = float(self.entropy.detach())
        return values


class AFLoc(nn.Module):
    """AFLoc image-text model.

    Args:
        config: an :class:`AFLocConfig`, a preset name or a YAML path.
        text_folder: load the text encoder from here instead of ``config.text.model_path``.
        text_random_init: build the text architecture without loading its weights.
    """

    def __init__(
        self,
        config: Union[AFLocConfig, str, None] = None,
        text_folder: Optional[Path] = None,
        text_random_init: Optional[bool] = None,
    ):
        super().__init__()
        self.config = load_config(config)
        self.image_encoder = ImageEncoder(self.config.image, self.config.embed_dim)
        self.text_encoder = TextEncoder(
            self.config.text,
            self.config.embed_dim,
            folder=text_folder,
            random_init=text_random_init,
            compat=self.config.compat,
        )
        self.meta: dict[str, Any] = {}

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, reports: Sequence[ReportInput]) -> TokenizedReports:
        """Reports (lists of sentences) or prompts (strings) -> tensors on the model's device."""
        return self.tokenizer(reports).to(self.device)

    def encode_image(self, images: torch.Tensor) -> ImageFeatures:
        """``[B, C, H, W]`` normalised images -> :class:`ImageFeatures`."""
        return self.image_encoder(images)

    def encode_text(self, tokens: TokenizedReports) -> TextFeatures:
        return self.text_encoder(tokens)

    def forward(self, images: torch.Tensor, tokens: TokenizedReports) -> AFLocLosses:
        """Loss of a batch of paired images ``[B, C, H, W]`` and reports."""
        return self.compute_loss(self.encode_image(images), self.encode_text(tokens))

    def compute_loss(
        self,
        image: ImageFeatures,
        text: TextFeatures,
        negatives: Optional[TextFeatures] = None,
        negative_valid: Optional[torch.Tensor] = None,
    ) -> AFLocLosses:
        """Multilevel loss from already-encoded features (e.g. gathered across ranks).

        ``negatives`` (``[B]`` rows, e.g. location-swapped reports; ``negative_valid`` ``[B]``
        bool marks the usable ones) are extra texts every image must score below its own report,
        at all three levels.
        """
        cfg = self.config.loss
        temps = dict(temp1=cfg.temp1, temp2=cfg.temp2, temp3=cfg.temp3, chunk_size=cfg.local_chunk_size,
                     impl=cfg.local_impl, attention=cfg.local_attention)
        word_neg = sent_neg = glob_neg = None
        if negatives is not None:
            valid = negative_valid if negative_valid is not None else torch.ones(
                negatives.report.shape[0], dtype=torch.bool, device=negatives.report.device)
            word_neg = (negatives.words, negatives.n_words, valid)
            sent_neg = (negatives.sentences, negatives.n_sentences, valid)
            glob_neg = (negatives.report, valid)
        # A level weighted 0 is not computed at all (it reads 0): the word level is the costliest
        # term on a CPU, and an ablation or a config without it should not pay for it.
        zero = image.global_.new_zeros(())
        word = sentence = glob = zero
        if cfg.weight_word:
            word = sum(local_loss(image.shallow, text.words, text.n_words, negatives=word_neg, **temps))
        if cfg.weight_sentence:
            regions = with_sink(interior(image.deep, cfg.border_cells), self.image_encoder.sink)
            sentence = sum(local_loss(regions, text.sentences, text.n_sentences, negatives=sent_neg, **temps))
        if cfg.weight_global:
            glob = sum(global_loss(image.global_, text.report, temp3=cfg.temp3, negatives=glob_neg))
        total = cfg.weight_word * word + cfg.weight_sentence * sentence + cfg.weight_global * glob
        return AFLocLosses(total=total, word=word, sentence=sentence, global_=glob)

    # ----------------------------------------------------------------- checkpoints
    def save_pretrained(
        self,
        directory: Union[str, Path],
        meta: Optional[dict[str, Any]] = None,
        extra_writer: Optional[Callable[[Path], None]] = None,
    ) -> Path:
        """Write the checkpoint folder atomically (temp folder + rename); returns its path.

        ``extra_writer(staging_dir)`` may add files (e.g. a trainer's resume state) that then
        appear together with the weights in one rename.
        """
        from safetensors.torch import save_file

        directory = Path(directory).resolve()
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.config.to_yaml(staging / CONFIG_FILE)
            state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
            text_dir = staging / TEXT_DIR
            self.text_encoder.model.config.save_pretrained(str(text_dir))
            self.text_encoder.tokenizer.hf_tokenizer.save_pretrained(str(text_dir))
            info = {
                "format": CHECKPOINT_FORMAT,
                "version": self.meta.get("version") or time.strftime("%Y%m%d-%H%M%S"),
                **self.meta,
                **(meta or {}),
            }
            (staging / META_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
            if extra_writer is not None:
                extra_writer(staging)
            replace_dir(staging, directory)  # files fsynced, then one atomic swap
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.meta = info
        return directory

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> "AFLoc":
        """Load a folder written by :meth:`save_pretrained`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint folder '{directory}' does not exist")
        for name in (CONFIG_FILE, WEIGHTS_FILE, TEXT_DIR):
            if not (directory / name).exists():
                raise CheckpointError(f"'{directory}' is not an AFLoc checkpoint: '{name}' is missing")
        config = AFLocConfig.from_yaml(directory / CONFIG_FILE)
        model = cls(config, text_folder=directory / TEXT_DIR, text_random_init=True)
        try:
            state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise CheckpointError(f"weights in '{directory / WEIGHTS_FILE}' are unreadable: {exc}") from None
        load_exact(model, state, source=str(directory / WEIGHTS_FILE))
        meta_path = directory / META_FILE
        model.meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
        return model.to(map_location)


def load_exact(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, source_names: Optional[dict[str, str]] = None
) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in its error.

    ``source_names`` maps a key of ``state`` to its name in the original file, so errors about
    converted checkpoints name the key the user can find in their file.
    """
    names = source_names or {}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(names.get(k, k) for k in set(state) - set(expected))
    mismatched = [
        f"{names.get(k, k)} (checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise CheckpointError(f"weights in '{source}' do not fit this model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def default_text_model_folder() -> Path:
    """The installed MiniLM folder (the default offline text encoder)."""
    from afloc_models.config import DEFAULT_TEXT_MODEL

    return resolve_model_path(DEFAULT_TEXT_MODEL)
