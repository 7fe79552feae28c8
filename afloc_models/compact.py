"""Compact checkpoints: a trained model without the text body that training never changed.

A model trained with a frozen text body (``optim.text_lr_scale: 0``, the ``small`` preset) keeps
an exact copy of the installed text model's weights in its ``model.safetensors`` (~90 MB of
MiniLM beside ~12 MB that training changed). A compact folder holds only what training changed,
plus a digest of the body it was trained with, so a trained model fits in a repository::

    compact/
      config.yaml           # AFLocConfig, as in a full checkpoint
      meta.json             # the checkpoint's meta.json + "compact": body and weights digests
      weights.safetensors   # every weight except text_encoder.model.*

:func:`export_compact` writes one from a full checkpoint; :func:`expand_compact` rebuilds the
full checkpoint from the installed text body and refuses, naming the reason, when that body or
the weights file is not the one recorded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch

from afloc_models.atomic import replace_dir
from afloc_models.config import AFLocConfig
from afloc_models.errors import CheckpointError
from afloc_models.model import CONFIG_FILE, META_FILE, AFLoc, load_exact

#: State-dict prefix of the (frozen) text body; everything else is stored in a compact folder.
BODY_PREFIX = "text_encoder.model."
COMPACT_WEIGHTS = "weights.safetensors"
COMPACT_FORMAT = "afloc-compact/1"
#: meta.json key of an expanded checkpoint: the SHA-256 of the compact weights it was built from.
EXPANDED_FROM = "expanded_from_weights_sha256"

PathLike = Union[str, Path]


def body_digest(model: AFLoc) -> str:
    """SHA-256 over the text body's state (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if not name.startswith(BODY_PREFIX):
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_compact(checkpoint: PathLike, out: PathLike, meta: Optional[dict[str, Any]] = None) -> Path:
    """Write the compact form of the full checkpoint folder ``checkpoint`` to ``out`` (atomically).

    ``meta``: top-level ``meta.json`` entries that replace the checkpoint's own (e.g. a ``training``
    section that describes the data by its recipe instead of a local path).

    Raises:
        CheckpointError: the checkpoint trained its text body, or its body is not the installed
            text model's (then the body cannot be rebuilt from the installation).
    """
    from safetensors.torch import save_file

    model = AFLoc.from_pretrained(checkpoint)
    config = model.config
    if config.optim.text_lr_scale != 0:
        raise CheckpointError(
            f"'{checkpoint}' trained its text body (optim.text_lr_scale {config.optim.text_lr_scale}): "
            "a compact checkpoint leaves the body out, so it needs a model trained with a frozen body"
        )
    stored = body_digest(model)
    installed = body_digest(AFLoc(_installed_body_config(config)))
    if stored != installed:
        raise CheckpointError(
            f"the text body in '{checkpoint}' differs from the installed '{config.text.model_path}': "
            "it cannot be rebuilt from this installation, so it cannot be left out"
        )
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith(BODY_PREFIX)}
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        config.to_yaml(staging / CONFIG_FILE)
        save_file(state, str(staging / COMPACT_WEIGHTS), metadata={"format": COMPACT_FORMAT})
        info = {k: v for k, v in {**model.meta, **(meta or {})}.items() if k != "compact"}
        info["compact"] = {
            "format": COMPACT_FORMAT,
            "text_body": config.text.model_path,
            "text_body_sha256": stored,
            "weights_sha256": file_digest(staging / COMPACT_WEIGHTS),
        }
        (staging / META_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_compact_meta(compact: PathLike) -> dict[str, Any]:
    """The compact folder's ``meta.json``, checked for the fields :func:`expand_compact` needs."""
    folder = Path(compact)
    for name in (CONFIG_FILE, META_FILE, COMPACT_WEIGHTS):
        if not (folder / name).is_file():
            raise CheckpointError(f"'{folder}' is not a compact AFLoc checkpoint: '{name}' is missing")
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{folder / META_FILE}' is unreadable: {exc}") from None
    info = meta.get("compact") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or info.get("format") != COMPACT_FORMAT:
        raise CheckpointError(f"'{folder / META_FILE}' has no '{COMPACT_FORMAT}' section: not a compact checkpoint")
    for key in ("text_body_sha256", "weights_sha256"):
        if not isinstance(info.get(key), str):
            raise CheckpointError(f"'{folder / META_FILE}' lacks compact.{key}")
    return meta


def expand_compact(compact: PathLike, out: PathLike) -> Path:
    """Rebuild the full checkpoint folder ``out`` from ``compact`` and the installed text body.

    Raises:
        CheckpointError: the folder is incomplete, its weights file is not the recorded one
            (corrupted or replaced), or the installed text body differs from the trained one.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(compact)
    meta = read_compact_meta(folder)
    info = meta["compact"]
    weights = folder / COMPACT_WEIGHTS
    if file_digest(weights) != info["weights_sha256"]:
        raise CheckpointError(
            f"'{weights}' is not the file this compact checkpoint recorded (SHA-256 differs): "
            "it is damaged or was replaced; restore it (e.g. git checkout) before expanding"
        )
    config = AFLocConfig.from_yaml(folder / CONFIG_FILE)
    model = AFLoc(_installed_body_config(config))
    if body_digest(model) != info["text_body_sha256"]:
        raise CheckpointError(
            f"the installed text model '{config.text.model_path}' is not the one '{folder}' was trained "
            "with (its weights digest differs): install the version the checkpoint names, or retrain"
        )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"weights in '{weights}' are unreadable: {exc}") from None
    body = {k: v for k, v in model.state_dict().items() if k.startswith(BODY_PREFIX)}
    clash = sorted(k for k in state if k.startswith(BODY_PREFIX))
    if clash:
        raise CheckpointError(f"'{weights}' holds text-body weights ({clash[0]}, ...): not a compact checkpoint")
    load_exact(model, {**state, **body}, source=str(weights))
    model.config = config
    model.meta = {k: v for k, v in meta.items() if k not in ("compact", "format")}
    model.meta[EXPANDED_FROM] = info["weights_sha256"]  # provenance: which compact weights these are
    return model.save_pretrained(out)


def _installed_body_config(config: AFLocConfig) -> AFLocConfig:
    """``config`` with the text body loaded from the installation (never randomly initialised)."""
    from dataclasses import replace

    return replace(config, text=replace(config.text, random_init=False))
