"""``AFLocPredictor``: text-prompted localization and zero-shot classification on one or many images.

Typical use::

    predictor = AFLocPredictor.load("checkpoints/afloc")
    result = predictor.localize("chest.dcm", ["left pleural effusion", "cardiomegaly"])
    result["left pleural effusion"].mask      # bool [H, W] on the DICOM's own pixel grid
    predictor.classify("chest.dcm", ["pneumothorax"])   # {"pneumothorax": 0.08}

Images are letterboxed to the model's input square (the whole image stays visible), so maps
come back on the original pixel grid exactly (see :mod:`afloc_models.inference.heatmap`).

Prompts are normalised like report sentences in training (lowercase ASCII words and numbers,
punctuation dropped). A prompt that is empty after that raises :class:`PromptError`, and so does
one longer than :data:`MAX_PROMPT_CHARS` characters; a shorter prompt that still exceeds the
text encoder's token budget is cut at a word boundary with a :class:`PromptTruncatedWarning`.

Negation: a prompt that starts with a negation ("no pleural effusion", "there is no
pneumothorax", "without ...") is flagged ``negated``. A region cannot show an absence, so its
heatmap is the map of the finding it negates and its mask and boxes are empty; its
``probability`` is the probability that the finding is absent.

Caching: encoded images live in a bounded LRU cache keyed by a hash of the model-input pixels
and the preprocessing settings, encoded prompts in another keyed by their normalised text, and
files are remembered by (path, size, modification time) so a second prompt on the same file
skips decoding it. All caches are thread-safe; the model is only read, never modified, so
several threads may call one predictor at once.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from afloc_models.attended_cells import hold_border
from afloc_models.errors import ConfigError, EmptyReportError, ImageReadError, PromptError
from afloc_models.imaging import (
    MAX_IMAGE_PIXELS,
    MAX_IMAGE_SIDE,
    MIN_IMAGE_SIDE,
    Letterbox,
    LoadedImage,
    letterbox,
    letterbox_published,
    read_image,
    to_grayscale,
)
from afloc_models.inference.cache import LRUCache, array_key
from afloc_models.intensity import equalize_content
from afloc_models.inference.heatmap import (
    Box,
    HeatmapSettings,
    check_level,
    check_threshold,
    deep_similarity,
    mask_boxes,
    mirror_average,
    render_heatmaps,
    resolved_mirror,
    resolved_refine,
    shallow_similarity,
    square_heatmaps,
    threshold_mask,
    trained_similarity,
)
from afloc_models.model import AFLoc
from afloc_models.text_normalization import counterpart, is_negated, mirror_sides, normalize_text

__all__ = [
    "MAX_HEATMAP_PIXELS",
    "MAX_PROMPT_CHARS",
    "AFLocPredictor",
    "EncoderCounts",
    "ImageInput",
    "Localization",
    "PromptResult",
    "PromptTruncatedWarning",
    "counterpart",
    "is_negated",
    "normalize_prompt",
]

#: Full-resolution heatmap pixels one localize call may produce (prompts x image pixels): 2**27,
#: i.e. 8 prompts on a 4096 x 4096 image, 512 MiB of float32 heatmaps. Bounds a request's memory.
MAX_HEATMAP_PIXELS = 2**27

#: Prompts longer than this (in characters, before normalisation) raise :class:`PromptError`.
#: A prompt names a finding; 1,000 characters is several times the 97-token budget.
MAX_PROMPT_CHARS = 1000

#: Weight and activation types of the encoders.
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: An image given as an array ``[H, W]`` / ``[H, W, 3]``, a file path, or an already read image.
ImageInput = Union[np.ndarray, str, Path, LoadedImage]


class PromptTruncatedWarning(UserWarning):
    """A prompt exceeded the text encoder's token budget and lost its last words."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class PromptResult:
    """Localization of one prompt on one image.

    Attributes:
        prompt: the prompt as given (surrounding whitespace removed).
        heatmap: float32 ``[H, W]`` in ``[-1, 1]`` on the original pixel grid.
        mask: bool ``[H, W]``, ``heatmap >= threshold`` (empty for a negated prompt).
        boxes: connected components of ``mask``, highest score first.
        score: cosine similarity of the global image and prompt embeddings.
        probability: zero-shot probability that the prompt's statement holds (prompt vs its
            negated / un-negated counterpart, softmax over ``temp3``-scaled global similarities);
            ``None`` when the call asked for no probabilities.
        negated: the prompt states an absence ("no pleural effusion").
        threshold: the threshold the mask was cut at.
        level: ``deep``, ``shallow`` or ``fused``.
    """

    prompt: str
    heatmap: np.ndarray
    mask: np.ndarray
    boxes: list[Box]
    score: float
    probability: Optional[float]
    negated: bool
    threshold: float
    level: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary without the arrays."""
        return {
            "prompt": self.prompt,
            "score": self.score,
            "probability": self.probability,
            "negated": self.negated,
            "threshold": self.threshold,
            "level": self.level,
            "mask_pixels": int(self.mask.sum()),
            "boxes": [b.to_dict() for b in self.boxes],
        }


@dataclass
class Localization:
    """All prompts' results on one image.

    Attributes:
        image_shape: ``(H, W)`` of the original image (the grid of every heatmap and mask).
        spacing: ``(row, column)`` pixel spacing in mm, or ``None`` when unknown.
        model_version: the checkpoint's ``meta["version"]``.
        results: one :class:`PromptResult` per prompt, in the order given.
    """

    image_shape: tuple[int, int]
    spacing: Optional[tuple[float, float]]
    model_version: str
    results: list[PromptResult] = field(default_factory=list)

    def __getitem__(self, key: Union[int, str]) -> PromptResult:
        """A result by position or by prompt text (first match)."""
        if isinstance(key, int):
            return self.results[key]
        for result in self.results:
            if result.prompt == key or result.prompt == str(key).strip():
                return result
        raise KeyError(f"no result for prompt {key!r} (prompts: {[r.prompt for r in self.results]})")

    def __iter__(self) -> Iterator[PromptResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def prompts(self) -> list[str]:
        return [r.prompt for r in self.results]

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_shape": list(self.image_shape),
            "spacing": list(self.spacing) if self.spacing else None,
            "model_version": self.model_version,
            "results": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class EncoderCounts:
    """How often the encoders ran: forward calls and items encoded."""

    image_calls: int = 0
    images: int = 0  #: with ``mirror: on`` an image and its mirror, encoded together, count once
    text_calls: int = 0
    texts: int = 0


# --------------------------------------------------------------------------------------------
# Prompt text
# --------------------------------------------------------------------------------------------


def normalize_prompt(prompt: object) -> str:
    """Validate a prompt and normalise it the way training normalises report sentences
    (:func:`afloc_models.text_normalization.normalize_text`).

    Raises:
        PromptError: not a string, longer than :data:`MAX_PROMPT_CHARS`, or no words left.
    """
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be text, got {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"prompt is {len(prompt)} characters long; the limit is {MAX_PROMPT_CHARS} "
            f"(a prompt names a finding, e.g. 'left pleural effusion'): {prompt[:40]!r}..."
        )
    if not prompt.strip():
        raise PromptError("prompt is empty; name a finding, e.g. 'left pleural effusion'")
    text = normalize_text(prompt)
    if not text:
        raise PromptError(f"prompt {prompt[:60]!r} has no words (only punctuation or symbols)")
    return text


@dataclass(frozen=True)
class _Prompt:
    """A validated prompt: what the user wrote, what the encoder sees, and what is mapped."""

    given: str
    text: str  #: normalised prompt
    negated: bool
    opposite: str  #: normalised counterpart (for the probability)

    @property
    def mapped(self) -> str:
        """The text whose heatmap is shown: the finding itself for a negated prompt."""
        return self.opposite if self.negated else self.text

    @property
    def mirrored(self) -> str:
        """:attr:`mapped` as it reads on the left-right mirror of the image (sides exchanged)."""
        return mirror_sides(self.mapped)

    @classmethod
    def parse(cls, prompt: object) -> "_Prompt":
        text = normalize_prompt(prompt)
        return cls(given=str(prompt).strip(), text=text, negated=is_negated(text), opposite=counterpart(text))


def _prompt_list(prompts: Union[str, Sequence[str]]) -> list[_Prompt]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence):
        raise PromptError(f"a prompt must be text (or a list of texts), got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise PromptError("no prompt given; pass a prompt or a list of prompts")
    return [_Prompt.parse(p) for p in prompts]


# --------------------------------------------------------------------------------------------
# Cached encodings
# --------------------------------------------------------------------------------------------


def _gray_square(square: np.ndarray) -> np.ndarray:
    """The input square ``[S, S]`` or ``[S, S, 3]`` in [0, 1] as gray float32 ``[S, S]``."""
    gray = square.mean(axis=-1) if square.ndim == 3 else square
    return np.ascontiguousarray(gray, dtype=np.float32)


def _averaged_rows(maps: torch.Tensor, mirrored: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """``maps`` ``[P, h, w]`` with rows ``rows`` averaged with ``mirrored`` ``[len(rows), h, w]``."""
    if len(rows) == maps.shape[0]:
        return mirror_average(maps, mirrored)
    out = maps.clone()
    out[rows] = mirror_average(maps[rows], mirrored)
    return out


@dataclass(frozen=True)
class _ImageEntry:
    """Encoded image: features of one image and where it sits in the input square."""

    shallow: torch.Tensor  #: [D, h2, w2]
    deep: torch.Tensor  #: [D, h3, w3]
    global_: torch.Tensor  #: [D]
    box: Letterbox
    spacing: Optional[tuple[float, float]]
    #: Local features of the left-right mirrored input square (``mirror: on`` or ``sides`` only).
    mirror_shallow: Optional[torch.Tensor] = None  #: [D, h2, w2]
    mirror_deep: Optional[torch.Tensor] = None  #: [D, h3, w3]
    #: The gray input square in [0, 1] that guides the maps (``refine: guided`` only).
    guide: Optional[np.ndarray] = None  #: [S, S] float32


@dataclass(frozen=True)
class _TextEntry:
    """Encoded prompt: word, sentence and report embeddings of one normalised prompt."""

    words: torch.Tensor  #: [D, W] valid words only
    sentence: torch.Tensor  #: [D]
    report: torch.Tensor  #: [D]


@dataclass(frozen=True)
class _FileEntry:
    key: str
    box: Letterbox
    spacing: Optional[tuple[float, float]]


@dataclass
class _Prepared:
    """An image ready for the encoder (or already found in the cache)."""

    key: str
    box: Letterbox
    spacing: Optional[tuple[float, float]]
    square: Optional[np.ndarray] = None  #: [S, S] or [S, S, 3] float32 in [0, 1]
    entry: Optional[_ImageEntry] = None  #: the cached encoding, when there is one


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------


class AFLocPredictor:
    """Localize text prompts in images and classify findings zero-shot with a trained AFLoc model.

    Args:
        model: a trained :class:`AFLoc`; it is moved to ``device`` (and ``precision``), put in
            eval mode and its image encoder switched to channels-last memory format, in place.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        cache_size: images kept in the feature cache (0 disables caching).
        settings: heatmap settings (level, smoothing, threshold, similarity, recipe, mirror,
            refine). A recipe of ``auto`` becomes the checkpoint's ``compat``: ``published`` for
            imported checkpoints (the published map and preprocessing), ``project`` otherwise; a
            mirror of ``auto`` becomes ``sides`` for the project recipe (each image is encoded
            twice, as is and mirrored; prompts that name a side are averaged) and ``off`` for the
            published one; a refine of ``auto`` becomes ``guided`` for the project recipe and
            ``off`` for the published one.
        text_cache_size: prompts kept in the text-embedding cache.
        batch_size: images per encoder call in :meth:`localize_batch`.
        precision: ``float32`` (default) or ``bfloat16``: the model's weights are converted and
            the encoders run in bfloat16 (about 2x faster on CPUs with AMX / AVX-512 BF16 and on
            GPUs; embeddings agree with float32 to a cosine of ~0.9999). Similarities, heatmaps
            and probabilities are always computed in float32.
        input_size: side of the square images are letterboxed to (default: the checkpoint's
            ``data.inference_size``). Larger reads the heatmap on a finer grid, at more cost.
    """

    def __init__(
        self,
        model: AFLoc,
        device: Union[str, torch.device] = "auto",
        cache_size: int = 32,
        settings: Optional[HeatmapSettings] = None,
        text_cache_size: int = 1024,
        batch_size: int = 8,
        precision: str = "float32",
        input_size: Optional[int] = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if cache_size < 0 or text_cache_size < 0:
            raise ConfigError("cache sizes must be >= 0")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = resolve_device(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.model = model.to(self.device, dtype=self.dtype).eval()
        # NHWC convolutions run 2-3x faster on CPU (oneDNN) and use tensor cores on GPU.
        self.model.image_encoder.to(memory_format=torch.channels_last)
        self.config = model.config
        self.compat = str(self.config.compat)
        settings = settings or HeatmapSettings()
        if settings.recipe == "auto":
            settings = dataclasses.replace(settings, recipe=self.compat)
        if settings.similarity == "auto":
            settings = dataclasses.replace(settings, similarity=trained_similarity(self.config.loss.local_attention))
        settings = dataclasses.replace(
            settings,
            mirror=resolved_mirror(settings.mirror, settings.recipe),
            refine=resolved_refine(settings.refine, settings.recipe),
        )
        self.settings = settings
        #: Whether images are also encoded mirrored (``mirror: on`` or ``sides``).
        self.mirror = settings.mirror in ("on", "sides")
        self.batch_size = int(batch_size)
        self.model_version = str(model.meta.get("version", "unknown"))
        self.input_size = int(input_size or self.config.data.inference_size)
        if not 32 <= self.input_size <= 4096:
            raise ConfigError(
                f"input_size must be between 32 and 4096 pixels, got {self.input_size} "
                "(argument input_size, or the checkpoint's data.crop x data.infer_scale)"
            )
        self.in_channels = int(self.config.image.in_channels)
        self.equalize = bool(self.config.data.equalize) and self.compat != "published"
        self._images: LRUCache[str, _ImageEntry] = LRUCache(cache_size)
        self._files: LRUCache[tuple, _FileEntry] = LRUCache(max(4 * cache_size, 0))
        self._texts: LRUCache[str, _TextEntry] = LRUCache(text_cache_size)
        # Hugging Face fast tokenizers are not safe to call from several threads at once.
        self._tokenizer_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._counts = EncoderCounts()
        self._preprocessing = (
            self.input_size,
            float(self.config.data.mean),
            float(self.config.data.std),
            self.in_channels,
            self.model_version,
            precision,
            self.compat,
            self.equalize,
            self.mirror,
        )

    @classmethod
    def load(
        cls,
        checkpoint_dir: Union[str, Path],
        device: Union[str, torch.device] = "auto",
        cache_size: int = 32,
        **options: Any,
    ) -> "AFLocPredictor":
        """Load a checkpoint folder written by :meth:`AFLoc.save_pretrained`.

        ``options`` go to the constructor (``settings``, ``text_cache_size``, ``batch_size``,
        ``precision``, ``input_size``).

        Raises:
            CheckpointError: the folder is missing or not an AFLoc checkpoint.
        """
        target = resolve_device(device)
        model = AFLoc.from_pretrained(checkpoint_dir, map_location=target)
        return cls(model, device=target, cache_size=cache_size, **options)

    # ------------------------------------------------------------------------- public API
    def localize(
        self,
        image: ImageInput,
        prompts: Union[str, Sequence[str]],
        threshold: Optional[float] = None,
        level: Optional[str] = None,
        probability: bool = True,
    ) -> Localization:
        """Localize each prompt in one image.

        Args:
            image: ``[H, W]`` / ``[H, W, 3]`` array, a file path (DICOM, PNG, JPEG, NIfTI,
                .npy) or a :class:`LoadedImage`.
            prompts: one prompt or a list.
            threshold: mask threshold on the ``[-1, 1]`` heatmap (default: the settings').
            level: ``deep`` (default), ``shallow`` or ``fused``.
            probability: also compute each prompt's zero-shot probability; False skips encoding
                the counterpart prompts (about half the text-encoder time for a new prompt).

        Raises:
            PromptError: a prompt is empty, too long, or has no words.
            ImageReadError: the image is unreadable, too small or too large.
        """
        return self.localize_batch([image], prompts, threshold=threshold, level=level, probability=probability)[0]

    def localize_batch(
        self,
        images: Sequence[ImageInput],
        prompts: Union[str, Sequence[str]],
        threshold: Optional[float] = None,
        level: Optional[str] = None,
        probability: bool = True,
    ) -> list[Localization]:
        """Localize every prompt in every image; images are encoded ``batch_size`` at a time.

        Prompts are validated before any image is read. Images and prompts already seen are
        taken from the caches.
        """
        parsed = _prompt_list(prompts)
        threshold = check_threshold(self.settings.threshold if threshold is None else threshold)
        level = self._trained_level(level or self.settings.level)
        if isinstance(images, (str, Path, np.ndarray, LoadedImage)):
            raise TypeError("localize_batch takes a sequence of images; use localize for one image")
        entries = self._encode_images(list(images))
        needed = [t for p in parsed for t in ((p.text, p.opposite) if probability else (p.text, p.mapped))]
        texts = self._encode_texts(needed + self._mirrored_texts(parsed))
        return [self._localize_one(entry, parsed, texts, threshold, level, probability) for entry in entries]

    def classify(
        self, image: ImageInput, findings: Union[str, Sequence[str]]
    ) -> dict[str, float]:
        """Zero-shot probability of each finding, as in the AFLoc publication.

        For each finding, the global image embedding is compared (cosine) with the finding's
        prompt and its negation ("no <finding>"); the two similarities, scaled by the model's
        ``temp3``, go through a softmax and the positive share is returned.

        Returns:
            ``{finding as given: probability in [0, 1]}``.
        """
        parsed = _prompt_list(findings)
        (entry,) = self._encode_images([image])
        texts = self._encode_texts([t for p in parsed for t in (p.text, p.opposite)])
        return {p.given: self._probability(entry, texts[p.text], texts[p.opposite]) for p in parsed}

    def square_heatmaps(
        self, image: ImageInput, prompts: Union[str, Sequence[str]], level: Optional[str] = None
    ) -> tuple[np.ndarray, Letterbox]:
        """Raw maps over the model's letterboxed input square, before going back to the image.

        These are what the published ``inference.py`` returns (for a ``published`` checkpoint
        the same numbers) and what ``afloc-eval --protocol published`` scores: ``[P, S, S]``
        float32, padding included, not normalised. A negated prompt maps its finding, as in
        :meth:`localize`.

        Returns:
            ``(maps, letterbox)``: the maps and where the image sits in the square.
        """
        parsed = _prompt_list(prompts)
        level = self._trained_level(level or self.settings.level)
        (entry,) = self._encode_images([image])
        texts = self._encode_texts([p.mapped for p in parsed] + self._mirrored_texts(parsed))
        deep_maps, shallow_maps = self._similarity_maps(entry, parsed, texts, level)
        squares = square_heatmaps(entry.box, self.settings, deep_maps, shallow_maps, level=level, guide=entry.guide)
        return squares, entry.box

    def _trained_level(self, level: str) -> str:
        """``level`` if this checkpoint trained the features it reads, else a ConfigError."""
        level = check_level(level)
        if level != "deep" and self.config.loss.weight_word == 0:
            raise ConfigError(
                f"heatmap level '{level}' reads the word-level features, which this checkpoint never "
                "trained (its loss.weight_word is 0); use level 'deep'"
            )
        return level

    @property
    def encoder_counts(self) -> EncoderCounts:
        """Encoder calls so far (the feature caches' effect shows here, not in timings)."""
        with self._count_lock:
            return self._counts

    def cache_info(self) -> dict[str, Any]:
        """Hits, misses and sizes of the image, file and text caches."""
        return {name: cache.stats() for name, cache in (("images", self._images), ("files", self._files), ("texts", self._texts))}

    def clear_cache(self) -> None:
        for cache in (self._images, self._files, self._texts):
            cache.clear()

    # ------------------------------------------------------------------------- images
    def _encode_images(self, images: list[ImageInput]) -> list[_ImageEntry]:
        """Entries for ``images`` in order; those not cached are encoded in batches."""
        prepared = [self._prepare(image) for image in images]
        pending: dict[str, _Prepared] = {}
        for item in prepared:
            if item.entry is None:
                item.entry = self._images.get(item.key)
            if item.entry is None:
                pending.setdefault(item.key, item)
        todo = list(pending.values())
        fresh: dict[str, _ImageEntry] = {}
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for item, entry in zip(chunk, self._run_image_encoder(chunk)):
                fresh[item.key] = entry
                self._images.put(item.key, entry)
        return [item.entry or fresh[item.key] for item in prepared]

    def _prepare(self, image: ImageInput) -> _Prepared:
        """Read and validate an image, then letterbox it unless its features are cached."""
        if isinstance(image, (str, Path)):
            path = Path(image)
            file_key = _file_key(path)
            known = self._files.get(file_key) if file_key is not None else None
            if known is not None:
                entry = self._images.get(known.key)
                if entry is not None:
                    return _Prepared(key=known.key, box=known.box, spacing=known.spacing, entry=entry)
            loaded = read_image(path)
            item = self._prepare_pixels(loaded.pixels, loaded.spacing)
            if file_key is not None:
                self._files.put(file_key, _FileEntry(item.key, item.box, item.spacing))
            return item
        if isinstance(image, LoadedImage):
            return self._prepare_pixels(image.pixels, image.spacing)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray):
            return self._prepare_pixels(array_to_unit(image), None)
        raise ImageReadError(
            f"<{type(image).__name__}>", "expected a file path, a numpy array [H, W] or [H, W, 3], or a LoadedImage"
        )

    def _prepare_pixels(self, pixels: np.ndarray, spacing: Optional[tuple[float, float]]) -> _Prepared:
        if self.compat == "published":
            # 8-bit grayscale, area-averaged letterbox: the published preprocessing.
            square, box = letterbox_published(pixels, self.input_size)
        else:
            # Colour to gray before resizing, gray to colour after: resample as few planes as possible.
            if self.in_channels == 1 and pixels.ndim == 3:
                pixels = to_grayscale(pixels)
            square, box = letterbox(pixels, self.input_size)
            if self.equalize:
                square = equalize_content(square, box.pad_top, box.pad_left, *box.resized_shape)
        if self.in_channels == 3 and square.ndim == 2:
            square = np.repeat(square[:, :, None], 3, axis=2)
        key = array_key(square, box.original_shape, self._preprocessing)
        return _Prepared(key=key, box=box, spacing=spacing, square=square)

    def _run_image_encoder(self, items: list[_Prepared]) -> list[_ImageEntry]:
        squares = np.stack([item.square for item in items])  # [B, S, S] or [B, S, S, 3]
        batch = torch.from_numpy(squares)
        batch = batch[:, None] if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
        batch = (batch.to(self.device) - float(self.config.data.mean)) / float(self.config.data.std)
        batch = batch.to(self.dtype)
        if self.mirror:
            # The mirrored squares ride in the same encoder call, after the originals.
            batch = torch.cat([batch, batch.flip(-1)])
        with torch.inference_mode():
            features = self.model.encode_image(batch.contiguous(memory_format=torch.channels_last))
        self._count(image_calls=1, images=len(items))
        n = len(items)
        return [
            _ImageEntry(
                shallow=features.shallow[i].float().contiguous(),
                deep=features.deep[i].float().contiguous(),
                global_=features.global_[i].float(),
                box=item.box,
                spacing=item.spacing,
                mirror_shallow=features.shallow[n + i].float().contiguous() if self.mirror else None,
                mirror_deep=features.deep[n + i].float().contiguous() if self.mirror else None,
                guide=_gray_square(item.square) if self.settings.refine == "guided" else None,
            )
            for i, item in enumerate(items)
        ]

    # ------------------------------------------------------------------------- text
    def _encode_texts(self, texts: list[str]) -> dict[str, _TextEntry]:
        """Entries for normalised ``texts``; those not cached are encoded in one batch."""
        found: dict[str, _TextEntry] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            entry = self._texts.get(text)
            if entry is None:
                missing.append(text)
            else:
                found[text] = entry
        if missing:
            with self._tokenizer_lock:
                try:
                    tokens = self.model.tokenize(missing)
                except EmptyReportError as exc:
                    raise PromptError(f"prompt has no words the text encoder knows: {exc}") from None
            for text, kept in zip(missing, tokens.words):
                if len(kept) < len(text.split()):
                    warnings.warn(
                        f"prompt {text[:40]!r}... exceeds the text encoder's budget of "
                        f"{self.config.text.max_tokens} tokens: only its first {len(kept)} of "
                        f"{len(text.split())} words are used",
                        PromptTruncatedWarning,
                        stacklevel=4,
                    )
            with torch.inference_mode():
                features = self.model.encode_text(tokens)
            self._count(text_calls=1, texts=len(missing))
            # Published text levels start with the [CLS] unit; a prompt's words and sentence follow it.
            first = 1 if self.compat == "published" else 0
            for i, text in enumerate(missing):
                n_words = int(features.n_words[i])
                entry = _TextEntry(
                    words=features.words[i, :, first:n_words].float().contiguous(),
                    sentence=features.sentences[i, :, first].float(),
                    report=features.report[i].float(),
                )
                self._texts.put(text, entry)
                found[text] = entry
        return found

    # ------------------------------------------------------------------------- maps
    def _localize_one(
        self,
        image: _ImageEntry,
        prompts: list[_Prompt],
        texts: dict[str, _TextEntry],
        threshold: float,
        level: str,
        probability: bool,
    ) -> Localization:
        height, width = image.box.original_shape
        if len(prompts) * height * width > MAX_HEATMAP_PIXELS:
            raise PromptError(
                f"{len(prompts)} prompts on a {height}x{width} image need {len(prompts) * height * width} heatmap "
                f"pixels; one request may have at most {MAX_HEATMAP_PIXELS} (MAX_HEATMAP_PIXELS, 4 bytes each): "
                "send fewer prompts per request"
            )
        deep_maps, shallow_maps = self._similarity_maps(image, prompts, texts, level)
        heatmaps = render_heatmaps(image.box, self.settings, deep_maps, shallow_maps, level=level, guide=image.guide)
        results = []
        for prompt, heatmap in zip(prompts, heatmaps):
            if prompt.negated:
                mask = np.zeros(heatmap.shape, dtype=bool)
                boxes: list[Box] = []
            else:
                mask = threshold_mask(heatmap, threshold)
                boxes = mask_boxes(mask, heatmap, self.settings.box_score)
            results.append(
                PromptResult(
                    prompt=prompt.given,
                    heatmap=heatmap,
                    mask=mask,
                    boxes=boxes,
                    score=_cosine(image.global_, texts[prompt.text].report),
                    probability=(
                        self._probability(image, texts[prompt.text], texts[prompt.opposite]) if probability else None
                    ),
                    negated=prompt.negated,
                    threshold=threshold,
                    level=level,
                )
            )
        return Localization(
            image_shape=image.box.original_shape,
            spacing=image.spacing,
            model_version=self.model_version,
            results=results,
        )

    def _averaged(self, prompt: _Prompt) -> bool:
        """Whether ``prompt``'s map is averaged with its mirror read (``mirror: on``; with
        ``sides``, only a prompt that names a side)."""
        if self.settings.mirror == "sides":
            return prompt.mirrored != prompt.mapped
        return self.mirror

    def _mirrored_texts(self, prompts: list[_Prompt]) -> list[str]:
        """The texts :meth:`_similarity_maps` maps on the mirrored image (none with ``mirror: off``)."""
        return [p.mirrored for p in prompts if self._averaged(p)]

    def _similarity_maps(
        self, image: _ImageEntry, prompts: list[_Prompt], texts: dict[str, _TextEntry], level: str
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Grid maps ``[P, h, w]`` of the deep and/or shallow level for the prompts' mapped texts.

        With ``mirror: on`` each map is averaged with the map of the prompt's mirrored text on the
        mirrored image, mirrored back (:func:`~afloc_models.inference.heatmap.mirror_average`);
        with ``sides`` only the maps of prompts that name a side are.
        """
        deep_maps, shallow_maps = self._grid_maps(image.deep, image.shallow, [texts[p.mapped] for p in prompts], level)
        rows = [i for i, p in enumerate(prompts) if self._averaged(p)]
        if not rows:
            return self._held(deep_maps), shallow_maps
        if image.mirror_deep is None or image.mirror_shallow is None:
            raise RuntimeError("image features without their mirror while mirror is on")  # a cache-key bug
        mirror_deep, mirror_shallow = self._grid_maps(
            image.mirror_deep, image.mirror_shallow, [texts[prompts[i].mirrored] for i in rows], level
        )
        return (
            None if deep_maps is None else self._held(_averaged_rows(deep_maps, mirror_deep, rows)),
            None if shallow_maps is None else _averaged_rows(shallow_maps, mirror_shallow, rows),
        )

    def _held(self, deep_maps: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Deep maps with the rings the model was trained not to attend (``loss.border_cells``)
        held at each map's interior minimum (:func:`~afloc_models.attended_cells.hold_border`)."""
        if deep_maps is None:
            return None
        return hold_border(deep_maps, self.config.loss.border_cells)

    def _grid_maps(
        self, deep: torch.Tensor, shallow: torch.Tensor, mapped: list[_TextEntry], level: str
    ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Grid maps ``[P, h, w]`` of one image's deep ``[D, h3, w3]`` / shallow ``[D, h2, w2]`` features."""
        similarity = self.settings.similarity
        deep_maps = shallow_maps = None
        if level in ("deep", "fused"):
            if self.settings.recipe == "published" and level == "deep":
                # The published map: deep features . report embedding, raw inner product.
                deep_maps = deep_similarity(deep, torch.stack([t.report for t in mapped]), "dot")
            else:
                deep_maps = deep_similarity(deep, torch.stack([t.sentence for t in mapped]), similarity)
        if level in ("shallow", "fused"):
            width = max(t.words.shape[1] for t in mapped)
            words = torch.zeros(len(mapped), shallow.shape[0], width, device=shallow.device)
            for i, t in enumerate(mapped):
                words[i, :, : t.words.shape[1]] = t.words
            n_words = torch.tensor([t.words.shape[1] for t in mapped])
            shallow_maps = shallow_similarity(shallow, words, n_words, similarity)
        return deep_maps, shallow_maps

    def _probability(self, image: _ImageEntry, statement: _TextEntry, opposite: _TextEntry) -> float:
        scale = float(self.config.loss.temp3)
        logits = torch.tensor(
            [_cosine(image.global_, statement.report), _cosine(image.global_, opposite.report)]
        ) * scale
        return float(torch.softmax(logits, dim=0)[0])

    def _count(self, **increments: int) -> None:
        with self._count_lock:
            current = self._counts
            self._counts = EncoderCounts(
                **{name: getattr(current, name) + increments.get(name, 0) for name in EncoderCounts.__dataclass_fields__}
            )


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA device is a ConfigError."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return resolved


def _file_key(path: Path) -> Optional[tuple]:
    try:
        stat = path.stat()
    except OSError:
        return None  # read_image reports the problem
    if not path.is_file():
        return None
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[None], b[None], dim=1, eps=1e-8)[0])


def array_to_unit(image: np.ndarray) -> np.ndarray:
    """Validate an in-memory image and bring it to float32 ``[0, 1]`` pixels.

    The shape is checked before any copy, so a huge array is refused without allocating.
    ``[H, W]``, ``[H, W, 1]``, ``[H, W, 3]`` and ``[H, W, 4]`` (alpha dropped) are accepted.
    Intensities: ``bool`` as 0/1, ``uint8`` / 255, floats already in ``[0, 1]`` kept, anything
    else stretched between its 0.5th and 99.5th percentiles (NaN -> 0), like ``.npy`` files.

    Raises:
        ImageReadError: wrong number of dimensions or channels, too small, too large, or not
            numeric.
    """
    name = f"<array {list(image.shape)}>"
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        channels = image.shape[2]
    elif image.ndim == 2:
        channels = 1
    else:
        raise ImageReadError(name, "expected a 2D image [H, W] or [H, W, 3]; got another shape")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    if rows < MIN_IMAGE_SIDE or cols < MIN_IMAGE_SIDE:
        raise ImageReadError(name, f"image is {rows}x{cols} pixels; at least {MIN_IMAGE_SIDE} pixels a side are needed")
    if max(rows, cols) > MAX_IMAGE_SIDE or rows * cols > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            name, f"image is {rows}x{cols} pixels; the limit is {MAX_IMAGE_SIDE} pixels a side and {MAX_IMAGE_PIXELS} pixels"
        )
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == np.bool_):
        raise ImageReadError(name, f"pixels must be numeric, got dtype {image.dtype}")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise ImageReadError(name, "pixels must be real numbers, got complex values")
    if channels == 1 and image.ndim == 3:
        image = image[:, :, 0]
    elif channels == 4:
        image = image[:, :, :3]
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    values = image.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    all_finite = bool(finite.all())
    if all_finite and values.min() >= 0.0 and values.max() <= 1.0:
        return np.array(values, dtype=np.float32, copy=True)
    data = values[finite] if not all_finite else values
    if data.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = np.percentile(data, (0.5, 99.5))
    if high <= low:
        low, high = float(data.min()), float(data.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    out = (np.where(finite, values, low) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0).astype(np.float32)
