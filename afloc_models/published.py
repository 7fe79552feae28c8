"""Import the published AFLoc checkpoint (PyTorch Lightning ``.ckpt``) into an :class:`AFLoc`.

The published training code wraps the model in a Lightning module as ``self.afloc``, so the
file's ``state_dict`` keys are::

    afloc.img_encoder.model.<torchvision ResNet-50 name>    backbone (its ``fc`` is an identity: no keys)
    afloc.img_encoder.global_embedder.{weight,bias}         pooled stage 4 -> D (linear)
    afloc.img_encoder.local_embedder.weight                 stage 3 -> D (1x1 conv, [D, 1024, 1, 1])
    afloc.img_encoder.local2_embedder.weight                stage 2 -> D (1x1 conv, [D, 512, 1, 1])
    afloc.text_encoder.model.<BERT name>                    text encoder (Bio_ClinicalBERT, pooler included)

and ``hyper_parameters`` holds the training config as an OmegaConf ``DictConfig``. That config
is read with a restricted unpickler (:func:`read_lightning_checkpoint`): tensors are rebuilt
by torch's own allow-listed functions, the OmegaConf classes become plain dicts and lists, and
any other global in the file is refused by name, so a genuine published file loads without
``--trust``, without ``omegaconf`` installed and without running code from the file.

The config is checked (:func:`published_config`): architecture, embedding width, text pooling,
token window, temperatures and normalisation must be ones this package reproduces; the text
model folder (architecture and tokenizer; the checkpoint has the weights) must be as wide as
the config's embedding and is compared by name with the config's ``bert_type``. The imported
model uses the ``published`` preset (``compat: published``, 299 px working resolution), so its
maps follow the published recipe. Every tensor must land: a key that fits nowhere, a model
parameter left without a value, or a shape that disagrees raises :class:`CheckpointError`
naming it. The only key dropped on purpose is BERT's position-id buffer.

Command line::

    python -m afloc_models.published --ckpt afloc.ckpt --text-model /models/Bio_ClinicalBERT --out ckpt_dir
"""

from __future__ import annotations

import _compat_pickle
import argparse
import json
import logging
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Optional, Union

import torch

from afloc_models.config import AFLocConfig, preset
from afloc_models.errors import AFLocError, CheckpointError
from afloc_models.model import AFLoc, load_exact

logger = logging.getLogger(__name__)

#: The Lightning module's attribute holding the model.
LIGHTNING_PREFIX = "afloc."
IMAGE_PREFIX = "img_encoder."
TEXT_PREFIX = "text_encoder.model."
#: Keys that carry nothing AFLoc uses: BERT's position-id buffer (recomputed by transformers).
IGNORED_SUFFIXES = ("embeddings.position_ids",)
_HEADS = ("global_embedder.", "local_embedder.", "local2_embedder.")
#: Published ``model.vision.model_name`` -> this package's ``image.arch``.
_ARCHS = {"resnet_50": "resnet50"}


# --------------------------------------------------------------------------------------------
# Reading the file without running it
# --------------------------------------------------------------------------------------------


class _OmegaStub:
    """Stand-in for an OmegaConf object: keeps the pickled state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DictConfigStub(_OmegaStub):
    pass


class _ListConfigStub(_OmegaStub):
    pass


class _NodeStub(_OmegaStub):
    pass


class _AnyStub:
    """Stand-in for ``typing.Any`` (only referenced by OmegaConf metadata)."""


_OMEGACONF = {
    ("omegaconf.dictconfig", "DictConfig"): _DictConfigStub,
    ("omegaconf.listconfig", "ListConfig"): _ListConfigStub,
    ("omegaconf.base", "Metadata"): _OmegaStub,
    ("omegaconf.base", "ContainerMetadata"): _OmegaStub,
    ("typing", "Any"): _AnyStub,
}
_OMEGACONF_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode", "EnumNode")
#: Plain data constructors a config or a Lightning state may reference.
_BUILTINS = {
    ("builtins", name): getattr(__import__("builtins"), name)
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool", "bytes", "complex", "bytearray")
}
_COLLECTIONS = {("collections", "defaultdict"), ("collections", "OrderedDict"), ("collections", "Counter")}


def _torch_allowed() -> dict[str, Any]:
    """Globals torch itself allows in ``weights_only`` loads (tensor and storage rebuilders)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        import torch._utils as tu

        return {f"torch._utils.{n}": getattr(tu, n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter")}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor rebuilders, plain containers and the OmegaConf stand-ins."""

    _torch = None

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol-2 names ("__builtin__ long")
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _OMEGACONF:
            return _OMEGACONF[(module, name)]
        if module == "omegaconf.nodes" and name in _OMEGACONF_NODES:
            return _NodeStub
        if (module, name) in _BUILTINS:
            return _BUILTINS[(module, name)]
        if (module, name) in _COLLECTIONS:
            import collections

            return getattr(collections, name)
        if _RestrictedUnpickler._torch is None:
            _RestrictedUnpickler._torch = _torch_allowed()
        found = _RestrictedUnpickler._torch.get(f"{module}.{name}")
        if found is not None:
            return found
        raise pickle.UnpicklingError(f"the file references '{module}.{name}', which a checkpoint has no need for")


#: What ``torch.load(pickle_module=...)`` needs from a pickle module.
_RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="afloc_restricted_pickle",
    Unpickler=_RestrictedUnpickler,
    load=lambda file, **kw: _RestrictedUnpickler(file, **kw).load(),
    UnpicklingError=pickle.UnpicklingError,
)


def plain(value: Any) -> Any:
    """Stand-ins and containers from the restricted unpickler -> plain dicts, lists and scalars."""
    if isinstance(value, _DictConfigStub):
        content = value.state.get("_content") if isinstance(value.state, dict) else None
        return {str(k): plain(v) for k, v in content.items()} if isinstance(content, dict) else content
    if isinstance(value, _ListConfigStub):
        content = value.state.get("_content") if isinstance(value.state, dict) else None
        return [plain(v) for v in content] if isinstance(content, (list, tuple)) else content
    if isinstance(value, _NodeStub):
        return plain(value.state.get("_val")) if isinstance(value.state, dict) else None
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def read_lightning_checkpoint(path: Union[str, Path], trust: bool = False) -> dict[str, Any]:
    """The checkpoint's top-level dict, on the CPU, with ``hyper_parameters`` as plain data.

    Without ``trust`` the restricted unpickler is used (see the module docstring); ``trust``
    runs the full pickle machinery (only for files from a source you trust).

    Raises:
        CheckpointError: missing or unreadable file, a refused global, or no ``state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    try:
        if trust:
            blob = torch.load(str(path), map_location="cpu", weights_only=False)
        else:
            blob = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except Exception as exc:  # torch raises many types for bad pickles
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        hint = "" if trust else " (if you trust this file, pass --trust to load it with the full pickle machinery)"
        raise CheckpointError(f"cannot read checkpoint '{path}': {first}{hint}") from None
    if not isinstance(blob, dict):
        raise CheckpointError(f"'{path}' holds no state_dict of tensors")
    blob = dict(blob)
    if "hyper_parameters" in blob:
        blob["hyper_parameters"] = plain(blob["hyper_parameters"])
    state = blob.get("state_dict", blob)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' holds no state_dict of tensors")
    blob["state_dict"] = state
    return blob


def read_lightning_state(path: Union[str, Path], trust: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or of a bare state dict) on the CPU."""
    return read_lightning_checkpoint(path, trust=trust)["state_dict"]


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def convert_state(
    published: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """Rename published keys (``afloc.`` prefix optional) to this package's names.

    Returns:
        ``(state, ignored, origin)``: the renamed tensors, the keys dropped on purpose, and each
        new key's published name.

    Raises:
        CheckpointError: naming every key that belongs to neither encoder.
    """
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    ignored, foreign = [], []
    for key, tensor in published.items():
        rest = key[len(LIGHTNING_PREFIX) :] if key.startswith(LIGHTNING_PREFIX) else key
        if rest.endswith(IGNORED_SUFFIXES):
            ignored.append(key)
            continue
        if rest.startswith(IMAGE_PREFIX):
            rest = rest[len(IMAGE_PREFIX) :]
            if rest.startswith(_HEADS):
                new = f"image_encoder.{rest}"
            elif rest.startswith("model."):
                new = f"image_encoder.backbone.{rest[len('model.'):]}"
            else:
                foreign.append(key)
                continue
        elif rest.startswith(TEXT_PREFIX):
            new = f"text_encoder.model.{rest[len(TEXT_PREFIX):]}"
        else:
            foreign.append(key)
            continue
        state[new] = tensor
        origin[new] = key
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" ... (+{len(foreign) - 10} more)" if len(foreign) > 10 else "")
        raise CheckpointError(
            f"{len(foreign)} checkpoint keys belong to no AFLoc encoder (expected "
            f"'{LIGHTNING_PREFIX}{IMAGE_PREFIX}...' or '{LIGHTNING_PREFIX}{TEXT_PREFIX}...'): {shown}"
        )
    if "image_encoder.global_embedder.weight" not in state:
        raise CheckpointError(
            f"checkpoint has no '{LIGHTNING_PREFIX}{IMAGE_PREFIX}global_embedder.weight': not an AFLoc checkpoint"
        )
    return state, ignored, origin


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def _get(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def published_config(hparams: Optional[dict], text_model: Union[str, Path]) -> AFLocConfig:
    """The ``published`` preset with the values of the checkpoint's training config.

    Args:
        hparams: the plain ``hyper_parameters`` (None: the published defaults are assumed).
        text_model: the local text model folder (checked against the config).

    Raises:
        CheckpointError: a setting this package does not reproduce, or a text folder that
            cannot be the config's text model.
    """
    config = preset("published")
    config.text.model_path = str(text_model)
    cfg = hparams or {}
    if hparams is not None and not isinstance(hparams, dict):
        raise CheckpointError(f"hyper_parameters is a {type(hparams).__name__}, not a config mapping")
    problems = []

    def expect(key: str, allowed: tuple, default: Any) -> Any:
        value = _get(cfg, key, default)
        if value not in allowed:
            problems.append(f"{key} = {value!r} (supported: {', '.join(repr(a) for a in allowed)})")
        return value

    arch = expect("model.vision.model_name", tuple(_ARCHS), "resnet_50")
    config.image.arch = _ARCHS.get(arch, config.image.arch)
    expect("model.text.aggregate_method", ("sum",), "sum")
    expect("model.text.agg_tokens", (True,), True)
    expect("model.text.take_sent_as_units", (True,), True)
    expect("model.text.norm", (False,), False)
    expect("model.norm", (False,), False)
    expect("model.afloc.use_ce_loss", (False, None), None)
    expect("transforms.norm", ("half",), "half")
    number_keys = {
        "model.text.embedding_dim": ("embed_dim", None),
        "model.text.last_n_layers": ("last_n_layers", config.text),
        "data.text.word_num": ("max_tokens", config.text),
        "model.afloc.temp1": ("temp1", config.loss),
        "model.afloc.temp2": ("temp2", config.loss),
        "model.afloc.temp3": ("temp3", config.loss),
        "model.afloc.local_word_loss_weight": ("weight_word", config.loss),
        "model.afloc.local_sent_loss_weight": ("weight_sentence", config.loss),
        "model.afloc.global_report_loss_weight": ("weight_global", config.loss),
        "lightning.trainer.lr": ("lr", config.optim),
        "train.optimizer.weight_decay": ("weight_decay", config.optim),
        "train.batch_size": ("batch_size", config.optim),
        "train.scheduler.gamma": ("step_gamma", config.optim),
        "lightning.trainer.gradient_clip_val": ("grad_clip", config.optim),
        "lightning.trainer.max_epochs": ("epochs", config.optim),
    }
    for key, (field, target) in number_keys.items():
        value = _get(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key} = {value!r} (a number is expected)")
            continue
        holder = config if target is None else target
        setattr(holder, field, type(getattr(holder, field))(value))
    crop = _get(cfg, "transforms.random_crop.crop_size")
    if isinstance(crop, int) and not isinstance(crop, bool):
        config.data.crop = crop
    imsize = _get(cfg, "data.image.imsize")
    if isinstance(imsize, int) and not isinstance(imsize, bool):
        config.data.resize = imsize
    if problems:
        raise CheckpointError("the checkpoint's training config uses settings this package does not reproduce: " + "; ".join(problems))
    _check_text_folder(Path(text_model), config, _get(cfg, "model.text.bert_type"))
    return config


def _check_text_folder(folder: Path, config: AFLocConfig, bert_type: Optional[str]) -> None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"text model folder '{folder}' has no config.json; pass the local folder of "
            f"{bert_type or 'the BERT model the checkpoint was trained with'}"
        )
    try:
        text_cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"text model folder '{folder}': config.json is unreadable ({exc})") from None
    hidden = text_cfg.get("hidden_size")
    if hidden != config.embed_dim:
        raise CheckpointError(
            f"text model folder '{folder}' is {hidden} wide but the checkpoint's config has "
            f"model.text.embedding_dim = {config.embed_dim}: it is not the model the checkpoint was "
            f"trained with ({bert_type or 'unknown'})"
        )
    layers = text_cfg.get("num_hidden_layers")
    if isinstance(layers, int) and layers < config.text.last_n_layers:
        raise CheckpointError(
            f"text model folder '{folder}' has {layers} layers; the checkpoint sums the last {config.text.last_n_layers}"
        )
    if bert_type:
        wanted = str(bert_type).rstrip("/").rsplit("/", 1)[-1].lower()
        names = {folder.resolve().name.lower(), str(text_cfg.get("_name_or_path", "")).rstrip("/").rsplit("/", 1)[-1].lower()}
        if wanted not in names:
            logger.warning(
                "text model folder '%s' is not named after the checkpoint's bert_type '%s'; its shapes "
                "fit, so it is used, but it must hold the same tokenizer",
                folder,
                bert_type,
            )


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def import_published(
    ckpt: Union[str, Path], text_model: Union[str, Path], trust: bool = False
) -> tuple[AFLoc, list[str]]:
    """Build the ``published``-preset :class:`AFLoc` and load the published weights into it.

    Args:
        ckpt: the Lightning ``.ckpt`` file.
        text_model: local folder of the BERT model the checkpoint was trained with.
        trust: read the file with the full pickle machinery (not needed for a genuine file).

    Returns:
        ``(model, ignored_keys)``.
    """
    blob = read_lightning_checkpoint(ckpt, trust=trust)
    state, ignored, origin = convert_state(blob["state_dict"])
    hparams = blob.get("hyper_parameters")
    if hparams is None:
        logger.warning("'%s' has no hyper_parameters; assuming the published defaults", ckpt)
    config = published_config(hparams, text_model)
    width = int(state["image_encoder.global_embedder.weight"].shape[0])
    if width != config.embed_dim:
        raise CheckpointError(
            f"'{ckpt}': global_embedder is {width} wide but its config says embedding_dim = {config.embed_dim}"
        )
    model = AFLoc(config, text_random_init=True)
    expected = model.state_dict()
    # Buffers the published file may lack because its libraries did not persist them.
    for key in expected:
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    load_exact(model, state, source=str(ckpt), source_names=origin)
    model.meta = {
        "version": f"published:{Path(ckpt).name}",
        "source": str(ckpt),
        "published": {
            "epoch": blob.get("epoch"),
            "global_step": blob.get("global_step"),
            "lightning_version": blob.get("pytorch-lightning_version"),
            "bert_type": _get(hparams or {}, "model.text.bert_type"),
        },
    }
    return model, ignored


def convert_once(ckpt: Union[str, Path], text_model: Union[str, Path, None], cache_dir: Union[str, Path]) -> Path:
    """The checkpoint folder converted from ``ckpt``, made on first use and reused after.

    The folder is ``cache_dir/<file stem>-<key>``, keyed by the file's resolved path, size and
    modification time and the text folder, so a replaced file converts again. It is written
    atomically (:meth:`AFLoc.save_pretrained`), so a crash never leaves a half folder in use.

    Raises:
        CheckpointError: no text model folder given, or the import fails.
    """
    import hashlib

    ckpt = Path(ckpt)
    if text_model is None:
        raise CheckpointError(
            f"'{ckpt}' is a published .ckpt: also give the local folder of its text model "
            "(--conf text_model /models/Bio_ClinicalBERT)"
        )
    if not ckpt.is_file():
        raise CheckpointError(f"checkpoint file '{ckpt}' does not exist")
    stat = ckpt.stat()
    key = f"{ckpt.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{Path(text_model).resolve()}"
    target = Path(cache_dir) / f"{ckpt.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (target / "model.safetensors").is_file() and (target / "config.yaml").is_file():
        return target
    logger.info("converting published checkpoint %s into %s (once)", ckpt, target)
    model, _ = import_published(ckpt, text_model)
    return model.save_pretrained(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert the published AFLoc .ckpt into an AFLoc checkpoint folder")
    parser.add_argument("--ckpt", required=True, help="published Lightning checkpoint (.ckpt)")
    parser.add_argument("--text-model", required=True, help="local folder of its BERT model (e.g. Bio_ClinicalBERT)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument(
        "--trust", action="store_true", help="read the file with the full pickle machinery (not needed for a genuine file)"
    )
    args = parser.parse_args(argv)
    try:
        model, ignored = import_published(args.ckpt, args.text_model, trust=args.trust)
        out = model.save_pretrained(args.out)
    except AFLocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(ignored)} unused keys ignored: {', '.join(ignored) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
