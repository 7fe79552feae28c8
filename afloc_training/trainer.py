"""Train AFLoc on image-report pairs: one process, or several under ``torchrun``.

:func:`train` runs the loop: Adam (``optim.betas``) with a warm-up + cosine schedule or the
published per-epoch step schedule (``optim.scheduler: step``), a smaller learning rate for the
pretrained text body, gradient clipping, bf16 autocast on GPU (on CPU fp32 unless
``optim.cpu_precision`` says otherwise; either way bit-for-bit reproducible on one machine given the
seed), a validation loss after every epoch, TensorBoard
scalars and a tqdm progress bar.

The output folder is an ordinary checkpoint (``AFLoc.from_pretrained(out)`` loads it at any time)
that also holds ``train_state.pt``: optimiser moments, step, position inside the epoch, every
rank's RNG state and the loss history. Each save writes weights and state together in one atomic
rename, so a run killed at any moment resumes (``resume=True``) from its last save and ends with
the same weights as an uninterrupted run on CPU.

Positions are counted in *global batches*: batch ``k`` of epoch ``e`` is the ``k``-th slice of
``global_batch`` indices of that epoch's seeded permutation, whatever the number of processes,
so a run may be resumed with a different ``--nproc_per_node`` (same data, same batch size).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from afloc_models.attended_cells import interior
from afloc_models.config import CPU_PRECISIONS, AFLocConfig, load_config
from afloc_models.errors import AFLocError, CheckpointError, ConfigError
from afloc_models.image_encoder import ImageFeatures
from afloc_models.map_regularizers import appearance_consistency_loss, attention_entropy, mirror_consistency_loss
from afloc_models.model import CONFIG_FILE, WEIGHTS_FILE, AFLoc, AFLocLosses
from afloc_models.text_encoder import TextFeatures
from afloc_models.tokenization import TokenizedReports
from afloc_training import distributed as D
from afloc_training.appearance import perturb_appearance
from afloc_training.data import (
    Batch,
    ImageReportPair,
    PairDataset,
    PairList,
    ReportCollate,
    describe_skipped,
    load_pairs,
    split_pairs,
)
from afloc_training.weight_average import WeightAverage, averaged_tensors

logger = logging.getLogger("afloc.training")

STATE_FILE = "train_state.pt"
STATE_FORMAT = "afloc-train-state/1"
#: Seed of the train/validation split: fixed, so runs with different seeds validate on the same pairs.
SPLIT_SEED = 0
#: Consecutive non-finite losses tolerated (update skipped each time) before giving up.
MAX_BAD_STEPS = 20
#: On CUDA, step statistics stay on the device and are read this many steps at a time.
DEVICE_STATS_EVERY = 25
#: Memory for the frozen text body's token embeddings (2,000 phantom reports take ~0.15 GiB).
TOKEN_CACHE_BYTES = 2 << 30
#: On a GPU the cache may take up to a tenth of the card's memory, at most this much: 16,000
#: reports with their mirrored copies (``data.hflip``) outgrew 2 GiB on an H200.
TOKEN_CACHE_GPU_MAX_BYTES = 8 << 30

ConfigLike = Union[str, Path, AFLocConfig, None]


def token_cache_bytes(device: torch.device) -> int:
    """The frozen text body's cache budget: :data:`TOKEN_CACHE_BYTES`, or on a GPU a tenth of its
    memory (at most :data:`TOKEN_CACHE_GPU_MAX_BYTES`) when that is more."""
    if device.type != "cuda" or TOKEN_CACHE_BYTES <= 0:
        return TOKEN_CACHE_BYTES
    total = torch.cuda.get_device_properties(device).total_memory
    return max(TOKEN_CACHE_BYTES, min(TOKEN_CACHE_GPU_MAX_BYTES, total // 10))


@dataclass
class TrainResult:
    """What a :func:`train` call did.

    Attributes:
        checkpoint: the output folder (loadable with ``AFLoc.from_pretrained``).
        steps: global batches trained in total, earlier (resumed) calls included.
        epochs: completed epochs in total.
        stopped: ``completed`` (planned epochs or ``max_steps`` done), ``max_minutes`` or ``stop_check``.
        train_loss: mean training loss of the last (possibly partial) epoch of this call.
        val_loss: validation loss after the last completed epoch (None without a validation set).
        history: one dict per completed epoch (losses, time, images/s).
        seconds: wall time of this call.
        train_pairs / val_pairs: pairs on each side of the split.
        skipped: pairs left out, by reason (listing: ``empty_report``, ``missing_image``, ...;
            load time: ``unreadable``).
        unreadable: images that failed to decode during this call.
        resumed_from_step: the step this call started from (0 for a fresh run).
        warnings: things the user should act on, in words (e.g. a time budget that ended the run
            before the recipe's ``optim.min_useful_steps``).
    """

    checkpoint: Path
    steps: int
    epochs: int
    stopped: str
    train_loss: Optional[float]
    val_loss: Optional[float]
    history: list[dict[str, Any]]
    seconds: float
    train_pairs: int
    val_pairs: int
    skipped: dict[str, int] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    resumed_from_step: int = 0
    #: Images per second over this call's training steps (data loading included; start-up,
    #: validation and saving excluded), and the share of that time the loop waited for data.
    images_per_s: Optional[float] = None
    data_wait_fraction: Optional[float] = None
    warnings: list[str] = field(default_factory=list)


def _budget_warnings(stopped: Optional[str], steps: int, min_useful_steps: int) -> list[str]:
    """A warning when the time budget ended the run before the recipe's maps were measured to form."""
    if stopped != "max_minutes" or steps >= min_useful_steps:
        return []
    return [
        f"the time budget stopped training at step {steps}, before the {min_useful_steps} steps this "
        "recipe's maps were measured to need (optim.min_useful_steps): the heatmaps may not have "
        "formed. This machine is slower or busier than the one the recipe was timed on; give it "
        f"more minutes or a budget of {min_useful_steps} steps or more (afloc-train --max-minutes / "
        f"--max-steps {min_useful_steps}; the MONAI Label training task's max_minutes / max_steps)"
    ]


# ------------------------------------------------------------------------------- public API
def train(
    data: Union[str, Path, PairList],
    out: Union[str, Path],
    config: ConfigLike = None,
    epochs: Optional[int] = None,
    max_steps: Optional[int] = None,
    max_minutes: Optional[float] = None,
    resume: bool = False,
    seed: int = 0,
    init_from: Union[str, Path, None] = None,
    progress: bool = True,
    stop_check: Optional[Callable[[], bool]] = None,
    log_dir: Union[str, Path, None] = None,
    save_every: int = 500,
    device: Optional[str] = None,
    reports_root: Union[str, Path, None] = None,
    views: Sequence[str] = ("PA", "AP"),
    trained_on: Optional[str] = None,
) -> TrainResult:
    """Train (or continue training) AFLoc and write the checkpoint folder ``out``.

    Args:
        data: a datastore folder, a CSV manifest, a MIMIC-CXR-JPG root (see :mod:`afloc_training.data`)
            or an already loaded :class:`PairList`.
        out: checkpoint folder. Must not hold anything yet unless ``resume`` is set.
        config: preset name, YAML path or :class:`AFLocConfig`. None means ``small`` for a fresh
            run, the checkpoint's own config with ``init_from`` or ``resume``.
        epochs: total epochs (default ``config.optim.epochs``, raised to reach
            ``optim.min_useful_steps`` when ``max_steps`` is not given either).
        max_steps: total global batches; the cosine schedule then ends there.
        max_minutes: stop (and save) after this much training time in this call; the cosine
            schedule then also ends at this deadline (or at the planned steps, if sooner).
        resume: continue the run saved in ``out`` (optimiser, schedule, epoch position, RNG).
            When ``out`` holds no checkpoint yet, training starts fresh (from ``init_from`` if given).
        seed: seeds weights, data order, crops and dropout.
        init_from: checkpoint folder whose weights start a fresh run (fine-tuning).
        progress: show a tqdm bar (loss, images/s, ETA) on rank 0.
        stop_check: called after every step; returning True saves and stops cleanly.
        log_dir: TensorBoard folder (default ``<out's parent>/logs/<out's name>``).
        save_every: also save every this many steps (0: only at epoch ends and at the stop).
        device: ``cpu`` or ``cuda`` (default: CUDA when available).
        reports_root, views: MIMIC-CXR options, see :func:`afloc_training.data.load_pairs`.
        trained_on: what the model is trained on, in words, stored as ``trained_on`` in the
            checkpoint's ``meta.json`` (servers and viewers show it). Default: described from the
            data (synthetic phantoms are marked "not for clinical images"); a resumed run keeps
            its own.

    Raises:
        AFLocError: unusable data, config or checkpoint (message names the problem).
    """
    for name, value in (("epochs", epochs), ("max_steps", max_steps), ("max_minutes", max_minutes)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if save_every < 0:
        raise ConfigError(f"save_every must be >= 0, got {save_every}")
    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    ctx = D.init_distributed(device)
    try:
        run = _Run(ctx, Path(out).expanduser().resolve(), seed, save_every, progress, stop_check)
        run.setup(data, config, resume, init_from, log_dir, reports_root, views, epochs, max_steps)
        run.trained_on = run.describe_data(trained_on)
        return run.loop(max_minutes)
    finally:
        if not already:
            D.shutdown(ctx)


def read_train_state(folder: Union[str, Path]) -> dict[str, Any]:
    """The ``train_state.pt`` of a checkpoint folder, checked for format.

    Raises:
        CheckpointError: missing, corrupt, or not an AFLoc training state.
    """
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(
            f"'{folder}' holds no training state ('{STATE_FILE}' is missing): it cannot be resumed; "
            "use init_from / --init-from to fine-tune from it instead"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a damaged or foreign file
        raise CheckpointError(f"training state '{path}' is corrupt or unreadable: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"'{path}' is not an AFLoc training state (expected format '{STATE_FORMAT}')")
    return state


def describe_training_data(pairs: PairList) -> str:
    """What a model trained on ``pairs`` has seen, in words, for ``meta.json``'s ``trained_on``.

    A datastore written by ``afloc-phantoms`` (its ``ground_truth/manifest.json`` says so) reads
    "synthetic phantoms (...): not for clinical images"; one that also holds other images (the demo
    datastore) names how many of its pairs are phantoms.
    """
    import json

    count = len(pairs.pairs)
    manifest = Path(pairs.source) / "ground_truth" / "manifest.json"
    generator, settings = None, {}
    if pairs.kind == "datastore" and manifest.is_file():
        try:
            settings = json.loads(manifest.read_text(encoding="utf-8"))
            generator = settings.get("generator")
        except (OSError, ValueError, AttributeError):
            generator, settings = None, {}
    synthetic = sum(pair.id.startswith("phantom_") for pair in pairs.pairs) if generator == "afloc-phantoms" else 0
    if synthetic and synthetic == count:
        style = settings.get("style", "plain")
        real = float(settings.get("real_fraction", 0.0) or 0.0)
        kind = "varied-style " if style == "varied" else ""
        drawn = f", about {real:.0%} of them findings drawn on real radiographs" if real > 0 else ""
        return f"synthetic {kind}phantoms (afloc-phantoms, {count} image-report pairs{drawn}): not for clinical images"
    kinds = {"datastore": "datastore", "csv": "CSV manifest", "mimic": "MIMIC-CXR-JPG", "dicomweb": "DICOMweb PACS"}
    name = _public_url(str(pairs.source)) if pairs.kind == "dicomweb" else Path(pairs.source).name
    text = f"{kinds.get(pairs.kind, pairs.kind)} '{name}' ({count} image-report pairs"
    if synthetic:
        return f"{text}, {synthetic} of them synthetic phantoms): not for clinical images"
    return text + ")"


def _public_url(url: str) -> str:
    """``url`` without user name, password, query or fragment (it is stored in checkpoints and shown in /info)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# ------------------------------------------------------------------------------ internals
class _Encoders(nn.Module):
    """Both encoders behind one ``forward`` so DistributedDataParallel can wrap them."""

    def __init__(self, model: AFLoc):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: TokenizedReports) -> tuple[ImageFeatures, TextFeatures]:
        images = images.contiguous(memory_format=torch.channels_last)
        return self.model.encode_image(images), self.model.encode_text(tokens)


def uses_bf16(device: torch.device, cpu_precision: str) -> bool:
    """Whether the encoders run under bf16 autocast: always on CUDA; on a CPU per ``optim.cpu_precision``."""
    if cpu_precision not in CPU_PRECISIONS:
        raise ConfigError(f"optim.cpu_precision must be one of {', '.join(CPU_PRECISIONS)}, got {cpu_precision!r}")
    if device.type == "cuda":
        return True
    if cpu_precision == "auto":
        return native_cpu_bf16()
    return cpu_precision == "bf16"


def native_cpu_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without the check: assume emulation
        return False


def _defers_stats(device: torch.device) -> bool:
    """Whether a step keeps its statistics on the device (no host sync): on CUDA."""
    return device.type == "cuda"


@dataclass
class _DeviceStats:
    """A CUDA step's ``[loss, word, sentence, global, grad_norm, mirror, appearance, entropy]``, still on the device."""

    values: torch.Tensor
    lr: float


class _ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch ``skip`` indices in (a resumed position)."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.skip = 0

    def start_epoch(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


def lr_factor(
    step: int,
    total: int,
    warmup: int,
    scheduler: str,
    time_fraction: Optional[float] = None,
    steps_per_epoch: int = 1,
    gamma: float = 0.9,
) -> float:
    """Multiplier of the base learning rate before update ``step`` (0-based).

    Linear warm-up over ``warmup`` steps, then a cosine from 1 to 0 at step ``total``. With a time
    budget, ``time_fraction`` (share of it used so far) advances the cosine too, so the rate
    reaches 0 at whichever comes first, the planned steps or the deadline. ``step``: the
    published schedule (``StepLR(step_size=1, gamma)`` stepped once per epoch), ``gamma`` to the
    power of the completed epochs.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if scheduler == "constant":
        return 1.0
    if scheduler == "step":
        return float(gamma ** (step // max(1, steps_per_epoch)))
    span = max(1, total - warmup)
    progress = min(1.0, max((step - warmup) / span, time_fraction or 0.0))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _fingerprint(pairs: Sequence[ImageReportPair]) -> str:
    digest = hashlib.sha1()
    for pair in pairs:
        digest.update(f"{pair.id}\0{pair.image}\n".encode())
    return f"{len(pairs)}:{digest.hexdigest()[:16]}"


def _architecture(config: AFLocConfig) -> dict[str, Any]:
    """The parts of a config that decide the weights' shapes."""
    text = dataclasses.asdict(config.text)
    for volatile in ("model_path", "random_init"):
        text.pop(volatile)
    return {"embed_dim": config.embed_dim, "image": dataclasses.asdict(config.image), "text": text}


def freeze_unused(model: AFLoc) -> None:
    """Freeze parameters that never reach the loss: BERT's pooler, and what only a loss level
    weighted 0 reads (``compute_loss`` skips such levels): without the word level the shallow
    image head and the word projection, without the sentence level the deep image head and the
    sentence projection, without the global level stage 4, the global image head and the report
    projection.

    DistributedDataParallel then need not search the graph for unused parameters every step,
    and no gradient bucket waits forever for them.
    """
    pooler = getattr(model.text_encoder.model, "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)
    loss, image, text = model.config.loss, model.image_encoder, model.text_encoder
    heads = (  # (level weight, the modules only that level reads)
        (loss.weight_word, (image.local2_embedder, text.word_proj)),
        (loss.weight_sentence, (image.local_embedder, text.sentence_proj)),
        (loss.weight_global, (image.global_embedder, image.backbone.layer4, text.report_proj)),
    )
    for weight, modules in heads:
        if weight == 0:
            for module in modules:
                module.requires_grad_(False)


def _checkpoint_exists(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or (folder / WEIGHTS_FILE).is_file()


class _Run:
    """State of one :func:`train` call (kept in an object so the loop reads top to bottom)."""

    def __init__(
        self,
        ctx: D.DistContext,
        out: Path,
        seed: int,
        save_every: int,
        progress: bool,
        stop_check: Optional[Callable[[], bool]],
    ):
        self.ctx = ctx
        self.out = out
        self.seed = seed
        self.save_every = save_every
        self.progress = progress and ctx.is_main
        self.stop_check = stop_check
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.images_seen = 0
        self.loop_seconds = 0.0  # wall time of this call's training steps, data waits included
        self.data_wait_seconds = 0.0  # of which the loop was blocked on the data loader
        self.loop_images = 0
        self.unreadable: list[str] = []
        self.bad_steps = 0
        self.pending: list[tuple[int, _DeviceStats, float]] = []  # CUDA step statistics not read yet
        self.resumed_from = 0
        self.saved_step = -1
        self.started = time.monotonic()
        self.writer = None

    # ------------------------------------------------------------------------------- setup
    def setup(self, data, config, resume, init_from, log_dir, reports_root, views, epochs, max_steps) -> None:
        ctx = self.ctx
        state = None
        if self.out.exists() and not self.out.is_dir():
            raise AFLocError(f"output '{self.out}' is a file; --out must be a checkpoint folder")
        occupied = self.out.is_dir() and any(self.out.iterdir())
        if occupied and not resume:
            raise AFLocError(
                f"output folder '{self.out}' is not empty: pass resume (--resume) to continue "
                "the checkpoint there, or choose a new folder"
            )
        if occupied and not _checkpoint_exists(self.out):
            # Saving replaces the whole folder: never do that to files that are not ours.
            raise CheckpointError(f"cannot resume '{self.out}': it holds files but no AFLoc checkpoint")
        resuming = occupied
        if resuming:
            state = read_train_state(self.out)
        # Listing the data is cheap next to building the model: fail on bad data first.
        self.pairs = self._load_data(data, reports_root, views)
        if resuming:
            model = AFLoc.from_pretrained(self.out)
            if config is not None and load_config(config).to_dict() != model.config.to_dict():
                raise ConfigError(
                    f"'{self.out}' was trained with another config; resume it without a config "
                    "(its own config.yaml is used) or start a new output folder"
                )
            logger.info("resuming '%s' from step %d (epoch %d)", self.out, state["step"], state["epoch"])
        else:
            _seed_all(self.seed)
            model = self._fresh_model(config, init_from)
        self.config = model.config
        self.model = model
        train_pairs, val_pairs = split_pairs(self.pairs.pairs, self.config.data.val_fraction, SPLIT_SEED)
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        self._plan_batches(len(train_pairs))

        channels = self.config.image.in_channels
        negatives = self.config.loss.swap_kind if self.config.loss.swap_negatives else None
        self.train_set = PairDataset(
            train_pairs, self.config.data, channels, train=True, seed=self.seed, negatives=negatives
        )
        self.val_set = PairDataset(val_pairs, self.config.data, channels, train=False, seed=self.seed)
        self.sampler = _ResumableSampler(self.train_set, ctx.world_size, ctx.rank, self.seed)
        # The mirror consistency also encodes the first K images of each rank's batch mirrored.
        loss = self.config.loss
        self.mirror_rows = max(1, round(loss.mirror_share * self.per_rank)) if loss.mirror_consistency > 0 else 0
        # The appearance consistency encodes the first K' images again with another look.
        self.appearance_rows = (
            max(1, round(loss.appearance_share * self.per_rank)) if loss.appearance_consistency > 0 else 0
        )
        self.collate = ReportCollate(model.tokenizer, channels, self.config.data.crop, mirror_rows=self.mirror_rows)
        self.val_collate = ReportCollate(model.tokenizer, channels, self.config.data.crop)
        self.steps_per_epoch = len(self.sampler) // self.per_rank
        self.epochs_target, self.total_steps = self._plan_length(epochs, max_steps)

        model.to(ctx.device)
        # NHWC convolutions: oneDNN on CPU (~15% faster per step here) and tensor cores on GPU.
        model.image_encoder.to(memory_format=torch.channels_last)
        self._freeze_unused()
        self.optimizer = self._optimizer()
        ema = self.config.optim.ema
        self.average = WeightAverage(averaged_tensors(model), ema) if ema > 0 else None
        if state is not None:
            self._restore(state)
        elif ctx.is_distributed:
            # Same initial weights everywhere (DDP also broadcasts them); different dropout per rank.
            torch.manual_seed(self.seed + 1_000_003 * ctx.rank)
        self.encoders: nn.Module = _Encoders(model)
        if ctx.is_distributed:
            # Gradients are all-reduced in 25 MB buckets while backward still runs (DDP's
            # default); bucket views avoid a second copy of every gradient.
            self.encoders = nn.parallel.DistributedDataParallel(
                self.encoders, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        self.bf16 = uses_bf16(ctx.device, self.config.optim.cpu_precision)
        if ctx.is_main:
            self._open_writer(log_dir)
            logger.info("%s", self.pairs.summary())
            logger.info(
                "training %d pairs (validation %d) on %d process(es), %s (%s): batch %d, %d steps/epoch, "
                "%d epochs, %d steps planned",
                len(train_pairs), len(val_pairs), ctx.world_size, ctx.device, "bf16 autocast" if self.bf16 else "fp32",
                self.global_batch, self.steps_per_epoch, self.epochs_target, self.total_steps,
            )

    def describe_data(self, given: Optional[str]) -> str:
        """The checkpoint's ``trained_on`` text (see :func:`train`)."""
        if given is not None and given.strip():
            return " ".join(given.split())
        previous = self.model.meta.get("trained_on")
        if self.resumed_from and previous:
            return str(previous)
        text = describe_training_data(self.pairs)
        parent = self.model.meta.get("parent_trained_on")
        return f"{text}; fine-tuned from a model trained on {parent}" if parent else text

    def _fresh_model(self, config: ConfigLike, init_from) -> AFLoc:
        if init_from is None:
            return AFLoc(load_config(config if config is not None else "small"))
        model = AFLoc.from_pretrained(Path(init_from).expanduser())
        parent = dict(model.meta)
        if config is not None:
            wanted = load_config(config)
            if _architecture(wanted) != _architecture(model.config):
                raise CheckpointError(
                    f"--init-from checkpoint '{init_from}' has another architecture than config "
                    f"'{wanted.name}' (embed_dim/image/text differ); omit the config to fine-tune with the "
                    "checkpoint's own, or give a config with the same architecture"
                )
            model.config = dataclasses.replace(
                model.config, name=wanted.name, loss=wanted.loss, optim=wanted.optim, data=wanted.data
            )
        model.meta = {"init_from": str(init_from), "parent_version": parent.get("version"),
                      "parent_trained_on": parent.get("trained_on")}
        return model

    def _load_data(self, data, reports_root, views) -> PairList:
        if isinstance(data, PairList):
            return data
        # Rank 0 lists the source (one set of warnings); the others receive the list or the error.
        payload: tuple[Optional[PairList], Optional[str]] = (None, None)
        if self.ctx.is_main:
            try:
                payload = (load_pairs(data, reports_root=reports_root, views=views), None)
            except AFLocError as exc:
                payload = (None, str(exc))
        pairs, error = D.broadcast_object(self.ctx, payload)
        if error is not None:
            raise AFLocError(error)
        return pairs

    def _plan_batches(self, n_train: int) -> None:
        world = self.ctx.world_size
        wanted = self.config.optim.batch_size
        batch = min(wanted, n_train)
        batch -= batch % world
        if batch < 2 or batch < world:
            raise AFLocError(
                f"{n_train} training pairs cannot fill a contrastive batch of at least 2 "
                f"across {world} process(es): add data"
            )
        if batch != wanted:
            logger.warning(
                "batch size %d reduced to %d (%d training pairs, %d processes)", wanted, batch, n_train, world
            )
        self.global_batch = batch
        self.per_rank = batch // world

    def _plan_length(self, epochs: Optional[int], max_steps: Optional[int]) -> tuple[int, int]:
        """(epochs, steps) the run plans; the cosine schedule ends at the steps (or a deadline).

        With neither ``epochs`` nor ``max_steps`` given, the config's epochs are planned, but never
        fewer steps than ``optim.min_useful_steps``: ``small``'s 12 epochs of 2,000 phantoms are
        708 steps, short of the 1,300 its maps were measured to need.
        """
        if max_steps is not None and epochs is None:
            return math.ceil(max_steps / self.steps_per_epoch), max_steps
        n_epochs = epochs if epochs is not None else self.config.optim.epochs
        total = n_epochs * self.steps_per_epoch
        floor = self.config.optim.min_useful_steps
        if epochs is None and max_steps is None and total < floor:
            if self.ctx.is_main:
                logger.info(
                    "planning %d steps (optim.min_useful_steps, where this recipe's maps were measured to "
                    "form) rather than the config's %d epochs (%d steps); --epochs or --max-steps set the "
                    "length", floor, n_epochs, total,
                )
            return math.ceil(floor / self.steps_per_epoch), floor
        return n_epochs, total if max_steps is None else min(total, max_steps)

    def _freeze_unused(self) -> None:
        text = self.model.text_encoder
        freeze_unused(self.model)
        self.text_frozen = self.config.optim.text_lr_scale == 0
        if self.text_frozen:
            text.model.requires_grad_(False)
            # Each epoch revisits the same reports: a frozen body needs to read each one once. On
            # a GPU the reports a batch has not seen go through the body together (TokenCache).
            device = self.ctx.device
            text.cache_frozen_tokens(token_cache_bytes(device), batched=device.type == "cuda")

    def _optimizer(self) -> torch.optim.Optimizer:
        optim = self.config.optim
        if optim.scheduler not in ("cosine", "constant", "step"):
            raise ConfigError(f"optim.scheduler must be 'cosine', 'constant' or 'step', got '{optim.scheduler}'")
        body = {id(p) for p in self.model.text_encoder.model.parameters()}
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in trainable if id(p) not in body], "base_lr": optim.lr},
            {"params": [p for _, p in trainable if id(p) in body], "base_lr": optim.lr * optim.text_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
        for group in groups:
            group["lr"] = group["base_lr"]
        self.trainable = [p for g in groups for p in g["params"]]
        # The fused kernel updates all tensors in one pass: ~10x faster than the per-tensor loop on CPU.
        fused = True if self.ctx.device.type in ("cpu", "cuda") else None
        return torch.optim.Adam(
            groups, lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas), fused=fused
        )

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            for group, base in zip(self.optimizer.param_groups, state["base_lrs"]):
                group["base_lr"] = base
            self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            self.history = list(state["history"])
            self.images_seen = int(state["images_seen"])
            rngs = state["rng"]
            if state["seed"] != self.seed:
                logger.warning("resuming a run started with seed %d; its seed is kept", state["seed"])
                self.seed = int(state["seed"])
                self.train_set.seed = self.seed
                self.sampler.seed = self.seed
            saved_batch = state["global_batch"]
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointError(f"training state in '{self.out}' does not fit this run: {exc}") from None
        if saved_batch != self.global_batch:
            logger.warning(
                "global batch changed from %d to %d: the interrupted epoch restarts from its beginning",
                saved_batch, self.global_batch,
            )
            self.batch_in_epoch = 0
        if state["data"] != _fingerprint(self.train_pairs):
            logger.warning("the training pairs changed since the checkpoint; the epoch position is kept")
        if len(rngs) == self.ctx.world_size:
            _set_rng_state(rngs[self.ctx.rank])
        else:
            logger.warning("resumed with another number of processes: dropout RNG streams are re-seeded")
            torch.manual_seed(self.seed + 1_000_003 * self.ctx.rank + self.step)
        if self.average is not None:
            if "average" not in state:
                raise CheckpointError(f"training state in '{self.out}' has no weight average (optim.ema) to resume")
            try:
                self.average.restore(state["average"])
            except (KeyError, ValueError, TypeError) as exc:
                raise CheckpointError(f"weight average in '{self.out}' does not fit this run: {exc}") from None
        self.resumed_from = self.step

    def _open_writer(self, log_dir) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = Path(log_dir) if log_dir is not None else self.out.parent / "logs" / self.out.name
        folder.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(folder), purge_step=self.step if self.step else None)

    # -------------------------------------------------------------------------------- loop
    def loop(self, max_minutes: Optional[float]) -> TrainResult:
        from tqdm.auto import tqdm

        start = self.started = time.monotonic()
        deadline = start + 60 * max_minutes if max_minutes is not None else None
        stopped: Optional[str] = None
        losses: list[float] = []
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=not self.progress, unit="step", dynamic_ncols=True
        )
        self.saved_step = self.step if self.resumed_from else -1
        try:
            while stopped is None and self.epoch < self.epochs_target and self.step < self.total_steps:
                if self.batch_in_epoch < self.steps_per_epoch:
                    stopped = self._run_epoch(losses, deadline, bar)
                if self.batch_in_epoch >= self.steps_per_epoch:
                    self._end_epoch(losses, start)
                    losses = []
                    stopped = stopped or self._should_stop(deadline)
            if self.saved_step != self.step:
                self._save()
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        last = self.history[-1] if self.history else {}
        train_loss = float(np.mean(losses)) if losses else last.get("train_loss")
        skipped = dict(self.pairs.skipped)
        if self.unreadable:
            skipped["unreadable"] = len(self.unreadable)
        warnings = _budget_warnings(stopped, self.step, self.config.optim.min_useful_steps)
        for text in warnings:
            logger.warning("%s", text)
        return TrainResult(
            checkpoint=self.out,
            steps=self.step,
            epochs=self.epoch,
            stopped=stopped or "completed",
            train_loss=train_loss,
            val_loss=last.get("val_loss"),
            history=list(self.history),
            seconds=time.monotonic() - start,
            train_pairs=len(self.train_pairs),
            val_pairs=len(self.val_pairs),
            skipped=skipped,
            unreadable=list(self.unreadable),
            resumed_from_step=self.resumed_from,
            images_per_s=self.loop_images / self.loop_seconds if self.loop_seconds > 0 else None,
            data_wait_fraction=self.data_wait_seconds / self.loop_seconds if self.loop_seconds > 0 else None,
            warnings=warnings,
        )

    def _run_epoch(self, losses: list[float], deadline: Optional[float], bar) -> Optional[str]:
        """Train from the current position to the epoch's end or a stop; returns the stop reason."""
        self.sampler.start_epoch(self.epoch, self.batch_in_epoch * self.per_rank)
        self.train_set.set_epoch(self.epoch)
        tick = time.monotonic()
        produced = False
        waiting_since = time.monotonic()
        for batch in self._loader():
            self.data_wait_seconds += time.monotonic() - waiting_since
            produced = True
            # Rows per rank, and the slowest rank's clock so every rank uses the same learning rate.
            table = D.gather_sizes(self.ctx, len(batch), int(1000 * (time.monotonic() - self.started)))
            sizes = table[:, 0]
            time_fraction = None
            if deadline is not None:
                time_fraction = float(table[:, 1].max()) / 1000 / max(deadline - self.started, 1e-9)
            values = self._train_step(batch, sizes, time_fraction)
            self.step += 1
            self.batch_in_epoch += 1
            self.images_seen += int(sizes.sum())
            now = time.monotonic()  # images/s over the whole step, data loading included
            rate, tick = int(sizes.sum()) / max(now - tick, 1e-9), now
            self.loop_seconds += now - waiting_since
            self.loop_images += int(sizes.sum())
            if isinstance(values, _DeviceStats):
                self.pending.append((self.step, values, rate))
                if len(self.pending) >= DEVICE_STATS_EVERY:
                    self._drain_pending(losses, bar)
            elif values is not None:
                self._record_step(values, rate, losses, bar)
            bar.update(1)
            if self.batch_in_epoch >= self.steps_per_epoch:
                self._drain_pending(losses, bar)
                return None  # the epoch end validates, saves and checks for a stop
            stopped = self._should_stop(deadline)
            if stopped or (self.save_every and self.step % self.save_every == 0):
                self._drain_pending(losses, bar)
                self._save()
            if stopped:
                return stopped
            waiting_since = time.monotonic()  # logging and saving above count as neither
        self._drain_pending(losses, bar)
        if not produced:  # nothing left in this epoch (e.g. the data shrank since the checkpoint)
            self.batch_in_epoch = self.steps_per_epoch
        return None

    def _record_step(self, values: dict[str, float], rate: float, losses: list[float], bar) -> None:
        losses.append(values["loss"])
        self._log_step(values, rate)
        bar.set_postfix(loss=f"{values['loss']:.3f}", img_s=f"{rate:.1f}", epoch=self.epoch + 1)

    def _drain_pending(self, losses: list[float], bar) -> None:
        """Read the device-side statistics of the last steps in one transfer (one host sync)."""
        if not self.pending:
            return
        table = torch.stack([stats.values for _, stats, _ in self.pending]).cpu().tolist()
        pending, self.pending = self.pending, []
        for (step, stats, rate), row in zip(pending, table):
            loss, word, sentence, glob, grad_norm, mirror, appearance, entropy = row
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                # The fused optimiser already skipped this update on the device (found_inf).
                self.bad_steps += 1
                logger.warning("step %d skipped: non-finite loss or gradient", step)
                if self.bad_steps >= MAX_BAD_STEPS:
                    raise AFLocError(
                        f"training diverged: {MAX_BAD_STEPS} consecutive non-finite losses at step {step}; "
                        "lower optim.lr or raise optim.warmup_steps"
                    )
                continue
            self.bad_steps = 0
            values = {"loss": loss, "loss_word": word, "loss_sentence": sentence, "loss_global": glob,
                      "grad_norm": grad_norm, "lr": stats.lr}
            if self.mirror_rows:
                values["loss_mirror"] = mirror
            if self.appearance_rows:
                values["loss_appearance"] = appearance
            if self.config.loss.attention_entropy > 0:
                values["loss_entropy"] = entropy
            self._record_step(values, rate, losses, bar)

    def _loader(self) -> DataLoader:
        workers = self.config.data.num_workers
        return DataLoader(
            self.train_set,
            batch_size=self.per_rank,
            sampler=self.sampler,
            drop_last=True,
            num_workers=workers,
            collate_fn=self.collate,
            pin_memory=self.ctx.device.type == "cuda",
            # An explicit generator keeps worker seeding off the global RNG, so dropout draws
            # (and therefore resumed runs) do not depend on when loaders are created.
            generator=torch.Generator().manual_seed(self.seed),
            prefetch_factor=4 if workers > 0 else None,
        )

    def _train_step(
        self, batch: Batch, sizes: torch.Tensor, time_fraction: Optional[float]
    ) -> Union[dict[str, float], _DeviceStats, None]:
        """One optimiser update on the global batch (``sizes``: rows per rank); None when skipped.

        On CUDA the statistics stay on the device (:class:`_DeviceStats`) so the step never waits
        for the GPU.
        """
        self._note_skipped(batch)
        if int(sizes.min()) == 0 or int(sizes.sum()) < 2:
            logger.warning("step %d skipped: too few readable images in the batch", self.step)
            return None
        self.encoders.train()
        if self.text_frozen:
            self.model.text_encoder.model.eval()  # frozen body: no dropout either
        device = self.ctx.device
        images = batch.images.to(device, non_blocking=True)
        rows, k = images.shape[0], batch.mirror_rows
        looks = min(self.appearance_rows, rows)
        if k:
            # The first K images mirrored ride in the same encoder call, after the B originals.
            images = torch.cat([images, images[:k].flip(-1)])
        if looks:
            # ... and the first K' with another look after those.
            images = torch.cat([images, self._perturbed(images[:looks])])
        tokens = batch.tokens.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16):
            image, text = self.encoders(images, tokens)
        image, text = _to_float(image), _to_float(text)
        appearance = None
        if looks:
            image, perturbed_image = _split_rows(image, rows + k)
            appearance = self._appearance_consistency(image, text, perturbed_image)
        mirror = None
        if k:
            image, mirror_image = _split_rows(image, rows)
            text, mirror_text = _split_rows(text, text.report.shape[0] - k)
            mirror = self._mirror_consistency(image, text, mirror_image, mirror_text)
        entropy = self._attention_entropy(image, text) if self.config.loss.attention_entropy > 0 else None
        negatives, valid = None, batch.negative_valid
        if valid is not None:
            # The collate put the B swapped reports after the B true ones.
            text, negatives = _split_rows(text, rows)
        elif self.train_set.negatives and self.ctx.is_distributed:
            # No report of this rank's rows names a side or zone, but the other ranks' may: join
            # their gather with placeholder rows that the loss leaves out.
            negatives, valid = text, torch.zeros(images.shape[0], dtype=torch.bool)
        image, text = D.gather_features(self.ctx, image, text)
        if negatives is None:
            losses = self.model.compute_loss(image, text)
        else:
            negatives, valid = D.gather_negatives(self.ctx, negatives, valid)
            losses = self.model.compute_loss(image, text, negatives, valid)
        losses = self._with_map_terms(losses, mirror=mirror, appearance=appearance, entropy=entropy)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_factor(
                self.step, self.total_steps, self.config.optim.warmup_steps, self.config.optim.scheduler,
                time_fraction, steps_per_epoch=self.steps_per_epoch, gamma=self.config.optim.step_gamma,
            )
        self.optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        if _defers_stats(device):
            return self._update_on_device(losses)
        grad_clip = self.config.optim.grad_clip
        if grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([
                p.grad.detach().norm() for p in self.trainable if p.grad is not None
            ])))
        values = losses.as_floats()
        if not math.isfinite(values["loss"]) or not math.isfinite(grad_norm):
            self.bad_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            logger.warning("step %d skipped: non-finite loss or gradient", self.step)
            if self.bad_steps >= MAX_BAD_STEPS:
                raise AFLocError(
                    f"training diverged: {MAX_BAD_STEPS} consecutive non-finite losses at step {self.step}; "
                    "lower optim.lr or raise optim.warmup_steps"
                )
            return None
        self.bad_steps = 0
        self.optimizer.step()
        if self.average is not None:
            self.average.update()
        values["grad_norm"] = grad_norm
        values["lr"] = self.optimizer.param_groups[0]["lr"]
        return values

    def _region_scoring(self) -> dict[str, Any]:
        """How the map terms score regions: as the local loss's attention does (``cosine`` for
        ``loss.local_attention: regions_cosine``, the scaled inner product otherwise)."""
        loss = self.config.loss
        return {"cosine": loss.local_attention == "regions_cosine", "temp1": loss.temp1}

    def _attended(self, deep: torch.Tensor) -> torch.Tensor:
        """The deep cells the sentence attention covers (``loss.border_cells``, :mod:`afloc_models.attended_cells`)."""
        return interior(deep, self.config.loss.border_cells)

    def _mirror_consistency(
        self, image: ImageFeatures, text: TextFeatures, mirror_image: ImageFeatures, mirror_text: TextFeatures
    ) -> torch.Tensor:
        """The mirror-consistency term of this rank's first K images (:mod:`afloc_models.map_regularizers`)."""
        k = mirror_image.deep.shape[0]
        return mirror_consistency_loss(
            self._attended(image.deep[:k]), text.sentences[:k], text.n_sentences[:k],
            self._attended(mirror_image.deep), mirror_text.sentences, mirror_text.n_sentences,
            **self._region_scoring(),
        )

    def _with_map_terms(self, losses: AFLocLosses, **terms: Optional[torch.Tensor]) -> AFLocLosses:
        """``losses`` with each map term that ran (:mod:`afloc_models.map_regularizers`) recorded
        and added to the total with its weight."""
        loss = self.config.loss
        weights = {"mirror": loss.mirror_consistency, "appearance": loss.appearance_consistency,
                   "entropy": loss.attention_entropy}
        for name, value in terms.items():
            if value is not None:
                losses = dataclasses.replace(losses, total=losses.total + weights[name] * value, **{name: value})
        return losses

    def _perturbed(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` with another look (:func:`afloc_training.appearance.perturb_appearance`),
        drawn from the run's seed and the step, so a resumed run draws the same."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        data = self.config.data
        return perturb_appearance(images, generator, mean=float(data.mean), std=float(data.std))

    def _appearance_consistency(
        self, image: ImageFeatures, text: TextFeatures, perturbed_image: ImageFeatures
    ) -> torch.Tensor:
        """The appearance-consistency term of this rank's first K' images (:mod:`afloc_models.map_regularizers`)."""
        k = perturbed_image.deep.shape[0]
        return appearance_consistency_loss(
            self._attended(image.deep[:k]), text.sentences[:k], text.n_sentences[:k],
            self._attended(perturbed_image.deep),
            **self._region_scoring(),
        )

    def _attention_entropy(self, image: ImageFeatures, text: TextFeatures) -> torch.Tensor:
        """Mean entropy of the sentence maps of this rank's images (:mod:`afloc_models.map_regularizers`)."""
        rows = image.deep.shape[0]  # the true reports come first; swapped negatives follow
        return attention_entropy(
            self._attended(image.deep), text.sentences[:rows], text.n_sentences[:rows],
            **self._region_scoring(),
        )

    def _update_on_device(self, losses: AFLocLosses) -> "_DeviceStats":
        """Clip, check and step without a host-device sync (CUDA).

        The fused Adam kernel reads ``found_inf`` on the device and leaves weights, moments and
        its step count untouched when the loss or the gradient norm is not finite; the trainer
        learns about such steps when it next reads the statistics (:meth:`_drain_pending`).
        """
        grad_clip = self.config.optim.grad_clip
        if grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, grad_clip)
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([
                p.grad.detach().norm() for p in self.trainable if p.grad is not None
            ]))
        mirror = losses.mirror if losses.mirror is not None else torch.zeros_like(losses.total)
        appearance = losses.appearance if losses.appearance is not None else torch.zeros_like(losses.total)
        entropy = losses.entropy if losses.entropy is not None else torch.zeros_like(losses.total)
        values = torch.stack([
            losses.total.detach().float(), losses.word.detach().float(), losses.sentence.detach().float(),
            losses.global_.detach().float(), grad_norm.detach().float(), mirror.detach().float(),
            appearance.detach().float(), entropy.detach().float(),
        ])
        self.optimizer.found_inf = (~torch.isfinite(values[[0, 4]]).all()).float()
        self.optimizer.step()
        if self.average is not None:
            self.average.update()  # a skipped update folds in unchanged weights: no host sync to know
        return _DeviceStats(values=values, lr=float(self.optimizer.param_groups[0]["lr"]))

    def _note_skipped(self, batch: Batch) -> None:
        for skipped in batch.skipped:
            path = skipped.path or str(self.train_set.pairs[skipped.index].image)
            if path not in self.unreadable:
                self.unreadable.append(path)
                logger.warning("%s", describe_skipped(self.train_set.pairs, skipped))

    def _should_stop(self, deadline: Optional[float]) -> Optional[str]:
        """``stop_check`` / ``max_minutes`` / planned total reached, agreed on by every rank."""
        reason = None
        if self.stop_check is not None and self.stop_check():
            reason = "stop_check"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = "max_minutes"
        # Every rank must leave the loop at the same step; a peer's reason is not known here.
        if D.any_rank(self.ctx, reason is not None):
            return reason or "stop_check"
        if self.step >= self.total_steps:
            return "completed"
        return None

    def _end_epoch(self, losses: list[float], start: float) -> None:
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "minutes": (time.monotonic() - start) / 60,
        }
        if self.ctx.is_main:
            record.update(self._validate())
            if self.writer is not None:
                for key, value in record.items():
                    if key.startswith("val_") and value is not None:
                        self.writer.add_scalar(f"val/{key[4:]}", value, self.step)
            shown = f"{record['val_loss']:.4f}" if record.get("val_loss") is not None else "n/a"
            logger.info("epoch %d done at step %d: train loss %s, val loss %s", self.epoch + 1, self.step,
                        f"{record['train_loss']:.4f}" if record["train_loss"] is not None else "n/a", shown)
        record = D.broadcast_object(self.ctx, record)
        self.history.append(record)
        self.epoch += 1
        self.batch_in_epoch = 0
        self._save()

    def _averaged(self):
        """Context in which the model holds the averaged weights (``optim.ema``), if any."""
        return self.average.swapped_in() if self.average is not None else contextlib.nullcontext()

    @torch.no_grad()
    def _validate(self) -> dict[str, Optional[float]]:
        """Mean validation losses over batches of the global batch size (rank 0 only), read with
        the weights the checkpoint stores (the average under ``optim.ema``)."""
        if len(self.val_set) < 2:
            return {"val_loss": None}
        with self._averaged():
            return self._validation_losses()

    def _validation_losses(self) -> dict[str, Optional[float]]:
        loader = DataLoader(
            self.val_set,
            batch_size=self.global_batch,
            shuffle=False,
            num_workers=self.config.data.num_workers,
            collate_fn=self.val_collate,
        )
        self.model.eval()
        sums: Counter = Counter()
        batches = 0
        device = self.ctx.device
        try:
            for batch in loader:
                if len(batch) < 2:
                    continue
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    image = self.model.encode_image(batch.images.to(device))
                    text = self.model.encode_text(batch.tokens.to(device))
                losses = self.model.compute_loss(_to_float(image), _to_float(text)).as_floats()
                sums.update(losses)
                batches += 1
        finally:
            self.model.train()
        if not batches:
            return {"val_loss": None}
        return {f"val_{key[5:] if key.startswith('loss_') else 'loss'}": value / batches for key, value in sums.items()}

    def _log_step(self, values: dict[str, float], rate: float) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, self.step)
        self.writer.add_scalar("train/images_per_s", rate, self.step)

    # ---------------------------------------------------------------------------- saving
    def _save(self) -> None:
        """Weights + training state in one atomic rename (collective: every rank calls it).

        Under ``optim.ema`` the weights saved are the average, and the trained ones go into the
        training state for a resume.
        """
        with self._averaged():
            self._write_checkpoint()
        self.saved_step = self.step
        D.barrier(self.ctx)

    def _write_checkpoint(self) -> None:
        rngs = D.gather_objects(self.ctx, _rng_state())
        if self.ctx.is_main:
            state = {
                "format": STATE_FORMAT,
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "global_batch": self.global_batch,
                "world_size": self.ctx.world_size,
                "seed": self.seed,
                "total_steps": self.total_steps,
                "optimizer": self.optimizer.state_dict(),
                "base_lrs": [g["base_lr"] for g in self.optimizer.param_groups],
                "rng": rngs,
                "history": self.history,
                "images_seen": self.images_seen,
                "data": _fingerprint(self.train_pairs),
            }
            if self.average is not None:
                state["average"] = self.average.trained_state()
            last = self.history[-1] if self.history else {}
            meta = {
                "version": f"{time.strftime('%Y%m%d-%H%M%S')}-step{self.step}",
                "trained_on": self.trained_on,
                "training": {
                    "step": self.step,
                    "epoch": self.epoch,
                    "batch_in_epoch": self.batch_in_epoch,
                    "images_seen": self.images_seen,
                    "train_pairs": len(self.train_pairs),
                    "val_pairs": len(self.val_pairs),
                    "data": str(self.pairs.source),
                    "seed": self.seed,
                    "val_loss": last.get("val_loss"),
                    "world_size": self.ctx.world_size,
                },
            }
            self.model.save_pretrained(self.out, meta=meta, extra_writer=lambda d: torch.save(state, d / STATE_FILE))
            if self.writer is not None:
                self.writer.flush()


def _split_rows(features, rows: int):
    """Text (or image) features -> the first ``rows`` rows and the rest, as two of the same type."""
    head = {f.name: getattr(features, f.name)[:rows] for f in dataclasses.fields(features)}
    tail = {f.name: getattr(features, f.name)[rows:] for f in dataclasses.fields(features)}
    return type(features)(**head), type(features)(**tail)


def _to_float(features):
    """Features cast to float32 (the losses run in fp32 even under bf16 autocast)."""
    return dataclasses.replace(
        features,
        **{
            f.name: getattr(features, f.name).float()
            for f in dataclasses.fields(features)
            if getattr(features, f.name).is_floating_point()
        },
    )


__all__ = ["STATE_FILE", "TrainResult", "describe_training_data", "freeze_unused", "lr_factor", "read_train_state", "train"]
