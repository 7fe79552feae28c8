"""Import the published AFLoc checkpoint (PyTorch Lightning ``.ckpt``) into an :class:`AFLoc`.

The published file stores a ``state_dict`` whose keys are::

    model.img_encoder.[model.]<torchvision ResNet-50 name>     backbone
    model.img_encoder.global_embedder.{weight,bias}             pooled stage 4 -> D
    model.img_encoder.local_embedder.weight                     stage 3 -> D (1x1 conv)
    model.img_encoder.local2_embedder.weight                    stage 2 -> D (1x1 conv)
    model.text_encoder.model.<BERT name>                        text encoder (Bio_ClinicalBERT)

The text encoder's architecture and tokenizer come from a local folder holding the same BERT
model (the checkpoint has weights only). Every tensor must land: a key that fits nowhere, a
model parameter left without a value, or a shape that disagrees raises :class:`CheckpointError`
naming it. The only keys dropped on purpose are listed in :data:`IGNORED_SUFFIXES`.

Command line::

    python -m afloc_models.published --ckpt afloc.ckpt --text-model /models/Bio_ClinicalBERT --out ckpt_dir
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Union

import torch

from afloc_models.config import AFLocConfig, preset
from afloc_models.errors import AFLocError, CheckpointError
from afloc_models.model import AFLoc, load_exact

IMAGE_PREFIX = "model.img_encoder."
TEXT_PREFIX = "model.text_encoder.model."
#: Keys that carry nothing AFLoc uses: the backbone's ImageNet classifier and BERT's
#: position-id buffer (recomputed by transformers).
IGNORED_SUFFIXES = ("fc.weight", "fc.bias", "embeddings.position_ids")
_HEADS = ("global_embedder.", "local_embedder.", "local2_embedder.")


def read_lightning_state(path: Union[str, Path], trust: bool = False) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict) on the CPU.

    Loads with ``weights_only=True`` unless ``trust`` is set: a pickle from an unknown source can
    run code, so arbitrary objects in the file (e.g. hyper-parameters) need explicit consent.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file '{path}' does not exist")
    try:
        blob = torch.load(str(path), map_location="cpu", weights_only=not trust)
    except Exception as exc:  # torch raises many types for bad pickles
        hint = "" if trust else " (if you trust this file and it holds extra objects, pass --trust)"
        raise CheckpointError(f"cannot read checkpoint '{path}': {str(exc).splitlines()[0]}{hint}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"'{path}' holds no state_dict of tensors")
    return state


def convert_state(
    published: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], dict[str, str]]:
    """Rename published keys to this package's names.

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
        if key.endswith(IGNORED_SUFFIXES):
            ignored.append(key)
            continue
        if key.startswith(IMAGE_PREFIX):
            rest = key[len(IMAGE_PREFIX) :]
            if rest.startswith(_HEADS):
                new = f"image_encoder.{rest}"
            else:
                rest = rest[len("model.") :] if rest.startswith("model.") else rest
                new = f"image_encoder.backbone.{rest}"
        elif key.startswith(TEXT_PREFIX):
            new = f"text_encoder.model.{key[len(TEXT_PREFIX):]}"
        else:
            foreign.append(key)
            continue
        state[new] = tensor
        origin[new] = key
    if foreign:
        shown = ", ".join(foreign[:10]) + (f" ... (+{len(foreign) - 10} more)" if len(foreign) > 10 else "")
        raise CheckpointError(f"{len(foreign)} checkpoint keys belong to no AFLoc encoder: {shown}")
    if "image_encoder.global_embedder.weight" not in state:
        raise CheckpointError("checkpoint has no 'model.img_encoder.global_embedder.weight': not an AFLoc checkpoint")
    return state, ignored, origin


def import_published(
    ckpt: Union[str, Path], text_model: Union[str, Path], trust: bool = False
) -> tuple[AFLoc, list[str]]:
    """Build the publication-config :class:`AFLoc` and load the published weights into it.

    Args:
        ckpt: the Lightning ``.ckpt`` file.
        text_model: local folder of the BERT model the checkpoint was trained with.
        trust: allow non-tensor pickled objects in the file.

    Returns:
        ``(model, ignored_keys)``.
    """
    state, ignored, origin = convert_state(read_lightning_state(ckpt, trust=trust))
    config: AFLocConfig = preset("publication")
    config.embed_dim = int(state["image_encoder.global_embedder.weight"].shape[0])
    config.text.model_path = str(text_model)
    model = AFLoc(config, text_random_init=True)
    # Published 1x1 embedders may be stored as Conv1d ([D, C, 1]); ours are Conv2d ([D, C, 1, 1]).
    expected = model.state_dict()
    for key, tensor in state.items():
        target = expected.get(key)
        if target is not None and tensor.shape != target.shape and tensor.numel() == target.numel():
            if tensor.squeeze().shape == target.squeeze().shape:
                state[key] = tensor.reshape(target.shape)
    # Buffers the published file may lack because its libraries did not persist them.
    for key in expected:
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    load_exact(model, state, source=str(ckpt), source_names=origin)
    model.meta = {"version": f"published:{Path(ckpt).name}", "source": str(ckpt)}
    return model, ignored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert the published AFLoc .ckpt into an AFLoc checkpoint folder")
    parser.add_argument("--ckpt", required=True, help="published Lightning checkpoint (.ckpt)")
    parser.add_argument("--text-model", required=True, help="local folder of its BERT model (e.g. Bio_ClinicalBERT)")
    parser.add_argument("--out", required=True, help="checkpoint folder to write")
    parser.add_argument("--trust", action="store_true", help="allow pickled non-tensor objects in the file")
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
