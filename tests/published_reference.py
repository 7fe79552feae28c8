"""The published AFLoc pipeline re-implemented for tests, at tiny size with random weights.

Written from reading the published code (github YH0517/AFLoc: ``afloc/models/*``,
``afloc/lightning/pretrain_model.py``, ``inference.py``, ``eval/*``), not copied from it, and
independent of ``afloc_models``: only torch, torchvision (the published backbone), numpy and a
Hugging Face BERT. What each piece reproduces:

- :class:`Lightning`: the module tree the published training code saves (``afloc`` ->
  ``img_encoder`` {``model`` = torchvision ResNet-50 with an identity ``fc``, ``global_embedder``,
  ``local_embedder``, ``local2_embedder``} and ``text_encoder`` {``model`` = BERT}), so its
  ``state_dict`` has the published key names and shapes;
- :func:`write_checkpoint`: the dict Lightning writes (``state_dict``, an OmegaConf
  ``hyper_parameters`` and its type, loop/optimizer/scheduler/callback states);
- :func:`letterbox_224`, :func:`image_tensor`: ``AFLoc._resize_img`` + the test transform;
- :func:`encode_image`: the 299 px upsampling and the stage outputs with their embedders;
- :func:`process_text`, :func:`encode_text`: prompt cleaning, the 97-token padded window, the
  "##" word-merging loop with [CLS]/[SEP] as units, the sentence units, the report embedding as
  the mean over the window;
- :func:`gaussian_filter`, :func:`heatmap_224`: the smoothed grid map resized to 224 x 224;
- :func:`evaluate`: ``eval/box_transfer.py``, ``eval/utils.py``, ``eval/metric.py`` and the
  threshold / category loop of ``eval/common.py``.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

WINDOW = 97  # data.text.word_num


# --------------------------------------------------------------------------------------------
# Modules with the published names
# --------------------------------------------------------------------------------------------


class _Identity(nn.Module):
    def forward(self, x):
        return x


class ImageEncoder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.model = torchvision.models.resnet50()
        self.model.fc = _Identity()
        self.global_embedder = nn.Linear(2048, dim)
        self.local_embedder = nn.Conv2d(1024, dim, kernel_size=1, bias=False)
        self.local2_embedder = nn.Conv2d(512, dim, kernel_size=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))


class TextEncoder(nn.Module):
    def __init__(self, bert: nn.Module):
        super().__init__()
        self.model = bert


class AFLocRef(nn.Module):
    def __init__(self, bert: nn.Module, dim: int):
        super().__init__()
        self.text_encoder = TextEncoder(bert)
        self.img_encoder = ImageEncoder(dim)


class Lightning(nn.Module):
    """Stands for the published ``PretrainModel``: the model lives under ``afloc``."""

    def __init__(self, bert: nn.Module, dim: int):
        super().__init__()
        self.afloc = AFLocRef(bert, dim)


def calibrate_batchnorm(model: AFLocRef, steps: int = 3, seed: int = 0) -> None:
    """Give the random backbone realistic BatchNorm statistics (a few train-mode passes)."""
    gen = torch.Generator().manual_seed(seed)
    net = model.img_encoder.model
    net.train()
    with torch.no_grad():
        for _ in range(steps):
            net(torch.randn(2, 3, 160, 160, generator=gen))
    net.eval()


def config_dict(dim: int, bert_type: str) -> dict:
    """A training config shaped like the published ``afloc/config.yaml``."""
    return {
        "experiment_name": "AFLoc_pretrain",
        "trial_name": None,
        "phase": "pretrain",
        "lightning": {
            "trainer": {"gpus": "0,1", "max_epochs": 5, "accelerator": "dp", "gradient_clip_val": 0.25,
                        "lr": 2e-5, "precision": 16, "benchmark": False, "deterministic": True},
            "checkpoint_callback": {"monitor": "val_loss", "dirpath": "./data/ckpt", "save_last": False,
                                    "mode": "min", "save_top_k": 5},
            "logger": {"logger_type": "WandbLogger", "save_dir": "./data/", "project": "AFLoc"},
        },
        "model": {
            "norm": False,
            "afloc": {"temp1": 4.0, "temp2": 5.0, "temp3": 10.0, "use_global_report_loss": True,
                      "global_report_loss_weight": 1.0, "use_local_sent_loss": True, "local_sent_loss_weight": 1.0,
                      "use_local_word_loss": True, "local_word_loss_weight": 1.0},
            "vision": {"model_name": "resnet_50", "freeze_cnn": False, "pretrained": True},
            "text": {"bert_type": bert_type, "last_n_layers": 4, "aggregate_method": "sum", "norm": False,
                     "embedding_dim": dim, "freeze_bert": False, "agg_tokens": True, "take_sent_as_units": True},
        },
        "data": {"dataset": ["mimic"], "view": "Frontal", "missing_value_mode": 0,
                 "text": {"word_num": WINDOW, "captions_per_image": 5, "full_report": True, "random_combine": True,
                          "random_combine_mode": 1, "random_num": True},
                 "image": {"imsize": 256}},
        "transforms": {"use_medklip": False, "norm": "half", "center_crop": {"crop_size": 224},
                       "random_crop": {"crop_size": 224}},
        "train": {"update_interval": 1000, "batch_size": 128, "num_workers": 8, "load_ckpt": None,
                  "optimizer": {"name": "Adam", "weight_decay": 1e-6},
                  "scheduler": {"name": "step", "monitor": "val_loss", "interval": "epoch", "frequency": 1,
                                "step_size": 1, "gamma": 0.9},
                  "seeds": [1, 2]},
        "output_dir": "./data/output/AFLoc_pretrain",
    }


def write_checkpoint(path, module: Lightning, cfg: dict, position_ids: bool = True) -> None:
    """Save ``module`` the way Lightning 1.x saves the published ``PretrainModel``.

    ``save_hyperparameters(cfg)`` keeps the OmegaConf ``DictConfig``, which the checkpoint
    stores as is with its type; transformers 4.2 persisted BERT's ``position_ids`` buffer.
    """
    from omegaconf import OmegaConf

    hparams = OmegaConf.create(cfg)
    state = module.state_dict()
    if position_ids:
        width = module.afloc.text_encoder.model.config.max_position_embeddings
        state["afloc.text_encoder.model.embeddings.position_ids"] = torch.arange(width).expand((1, -1))
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=2e-5, weight_decay=1e-6, betas=(0.5, 0.999))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    monitor = "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1}"
    blob = {
        "epoch": 4,
        "global_step": 2345,
        "pytorch-lightning_version": "1.5.10",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 5, "completed": 4}}}},
        "callbacks": {
            monitor: {"monitor": "val_loss", "best_model_score": torch.tensor(3.21), "best_model_path": "./data/ckpt/x.ckpt",
                      "current_score": torch.tensor(3.3), "dirpath": "./data/ckpt",
                      "best_k_models": {"./data/ckpt/x.ckpt": torch.tensor(3.21)}, "kth_best_model_path": "./data/ckpt/x.ckpt",
                      "kth_value": torch.tensor(3.21), "last_model_path": ""},
            "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}": {"wait_count": 0, "stopped_epoch": 0,
                                                                    "best_score": torch.tensor(3.21), "patience": 10},
        },
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 7},
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
        "hparams_type": type(hparams),
    }
    torch.save(blob, str(path))


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def letterbox_224(image: np.ndarray, scale: int = 224) -> np.ndarray:
    """``_resize_img`` for images whose long side is an integer multiple of ``scale``.

    The published resize is cv2 ``INTER_AREA``; with a whole-number factor that is the mean of
    each factor x factor block, rounded half up (OpenCV's integer path).
    """
    h, w = image.shape
    if h >= w:
        new_h, new_w = scale, int(float(w) * (scale / float(h)))
    else:
        new_h, new_w = int(float(h) * (scale / float(w))), scale
    fy, fx = h // new_h, w // new_w
    assert fy * new_h == h and fx * new_w == w and fx == fy, "reference handles whole-number factors only"
    blocks = image.astype(np.int64).reshape(new_h, fy, new_w, fx).sum(axis=(1, 3))
    resized = (blocks + (fy * fx) // 2) // (fy * fx)
    top, left = (scale - new_h) // 2, (scale - new_w) // 2
    out = np.zeros((scale, scale), dtype=np.uint8)
    out[top : top + new_h, left : left + new_w] = resized
    return out


def image_tensor(square: np.ndarray) -> torch.Tensor:
    """RGB copy, ToTensor (/255), Normalize(0.5, 0.5): ``[1, 3, 224, 224]``."""
    x = torch.from_numpy(square.astype(np.float32) / 255.0)
    x = x[None].repeat(3, 1, 1)
    return ((x - 0.5) / 0.5)[None]


def encode_image(model: AFLocRef, x: torch.Tensor) -> dict:
    """Stage features at the 299 px working size and their embeddings."""
    enc = model.img_encoder
    net = enc.model
    x = nn.Upsample(size=(299, 299), mode="bilinear", align_corners=True)(x)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer1(x)
    stage2 = net.layer2(x)
    stage3 = net.layer3(stage2)
    stage4 = net.layer4(stage3)
    pooled = enc.pool(stage4).flatten(1)
    return {
        "global": enc.global_embedder(pooled),
        "local": enc.local_embedder(stage3),  # [1, D, 19, 19]
        "local2": enc.local2_embedder(stage2),  # [1, D, 38, 38]
    }


def process_text(text: str) -> str:
    """Prompt cleaning of ``AFLoc.process_text``: sentences of 2+ word characters runs, joined by spaces."""
    text = text.replace("\n", " ")
    pieces = [s for part in re.split(r"[0-9]+\.", text) for s in part.split(".")]
    kept = []
    for piece in pieces:
        tokens = re.findall(r"\w+", piece.replace("\ufffd\ufffd", " ").lower())
        if len(tokens) <= 1:
            continue
        tokens = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
        kept.append(" ".join(t for t in tokens if t))
    return " ".join(kept)


def tokenize(tokenizer, text: str) -> dict:
    return tokenizer(text, return_tensors="pt", truncation=True, padding="max_length", max_length=WINDOW)


def encode_text(bert: nn.Module, tokenizer, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, last_n: int = 4) -> dict:
    """Word units ([CLS], words, [SEP]), sentence units ([CLS], sentences, [SEP]) and the report."""
    vocab = {i: p for p, i in tokenizer.get_vocab().items()}
    out = bert(ids, mask, types, output_hidden_states=True, return_dict=True)
    layers = torch.stack(out.hidden_states[-last_n:]).permute(1, 0, 2, 3)  # [B, L, T, H]
    batch, n_layers, width, hidden = layers.shape
    word_rows, word_lists = [], []
    for b in range(batch):
        units, names, bank, bank_names = [], [], [], []
        for t in range(width):
            piece = vocab[int(ids[b, t])]
            emb = layers[b, :, t]  # [L, H]
            if piece == "[SEP]":
                units.append(torch.stack(bank).sum(0))
                names.append("".join(bank_names))
                units.append(emb)
                names.append(piece)
                break
            if piece.startswith("##"):
                bank.append(emb)
                bank_names.append(piece[2:])
            elif not bank:
                bank, bank_names = [emb], [piece]
            else:
                units.append(torch.stack(bank).sum(0))
                names.append("".join(bank_names))
                bank, bank_names = [emb], [piece]
        rows = torch.stack(units)  # [U, L, H]
        rows = torch.cat([rows, rows.new_zeros(width - rows.shape[0], n_layers, hidden)])
        word_rows.append(rows)
        word_lists.append(names + ["[PAD]"] * (width - len(names)))
    words = torch.stack(word_rows)  # [B, T, L, H]
    report = words.mean(dim=1).sum(dim=1)  # mean over the window, then the layers' sum
    sent_rows, n_sentences = [], []
    for b in range(batch):
        labels = np.array(word_lists[b], dtype=object)
        sep = int(np.where(labels == "[SEP]")[0][0])
        labels[sep - 1] = "*"
        labels[sep] = "."
        stops = np.where(labels == ".")[0]
        units = [words[b, 0]]
        start = 1
        for stop in stops:
            units.append(words[b, start:stop].mean(dim=0))
            start = stop + 1
        units.append(words[b, stops[-1]])
        n_sentences.append(len(stops) + 1)  # units the local loss uses: [CLS] + sentences
        rows = torch.stack(units)
        sent_rows.append(torch.cat([rows, rows.new_zeros(width - rows.shape[0], n_layers, hidden)]))
    sentences = torch.stack(sent_rows)
    n_words = [len([w for w in names if not w.startswith("[")]) + 1 for names in word_lists]
    return {
        "words": words.sum(dim=2).transpose(1, 2),  # [B, H, T]
        "sentences": sentences.sum(dim=2).transpose(1, 2),
        "report": report,
        "n_words": n_words,  # units the local loss uses: [CLS] + words
        "n_sentences": n_sentences,
    }


def gaussian_filter(grid: np.ndarray, sigma: float = 1.5, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter's default behaviour in numpy: mirrored edges ("reflect")."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = grid.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        moved = np.moveaxis(padded, axis, 0)
        acc = sum(kernel[k] * moved[k : k + out.shape[axis]] for k in range(2 * radius + 1))
        out = np.moveaxis(acc, 0, axis)
    return out


def heatmap_224(model: AFLocRef, tokenizer, image: np.ndarray, prompt: str) -> np.ndarray:
    """The published ``inference.py`` map: ``[224, 224]`` over the letterboxed square."""
    with torch.no_grad():
        local = encode_image(model, image_tensor(letterbox_224(image)))["local"]  # [1, D, h, w]
        tok = tokenize(tokenizer, process_text(prompt))
        report = encode_text(model.text_encoder.model, tokenizer, tok["input_ids"], tok["attention_mask"],
                             tok["token_type_ids"])["report"]  # [1, D]
    dim, h, w = local.shape[1:]
    grid = (local[0].permute(1, 2, 0).reshape(-1, dim) @ report.t()).reshape(h, w).numpy()
    smoothed = torch.tensor(gaussian_filter(grid).astype(np.float32))
    return F.interpolate(smoothed[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def box_to_224(box, w: int, h: int, scale: int = 224) -> np.ndarray:
    """``box_transfer``: (x, y, w, h) on the original image -> the 224 letterbox, floored."""
    box = np.asarray(box, dtype=np.float64)
    if h >= w:
        factor = scale / float(h)
        pad_left, pad_top = int(np.floor((scale - int(float(w) * factor)) / 2)), 0
    else:
        factor = scale / float(w)
        pad_left, pad_top = 0, int(np.floor((scale - int(float(h) * factor)) / 2))
    box = box * factor
    return np.array([np.floor(box[0] + pad_left), np.floor(box[1] + pad_top), np.floor(box[2]), np.floor(box[3])], dtype=np.int32)


def box_mask(box, scale: int = 224) -> np.ndarray:
    mask = np.zeros((scale, scale), dtype=np.uint8)
    mask[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = 1
    return mask


def _norm(hmap: np.ndarray, nan: np.ndarray) -> np.ndarray:
    out = hmap.copy()
    vals = out[~nan]
    out[~nan] = (vals - vals.min()) / (vals.max() - vals.min()) * 2 - 1
    return out


def evaluate(cases: list[dict], thresholds=(0.1, 0.2, 0.3, 0.4, 0.5)) -> dict:
    """``Pipeline.test`` on ``[{"hmap": [224, 224], "gt": [224, 224] (box counts), "category": str}]``.

    Returns ``{"iou": [per threshold], "cnr": [per threshold], "miou": mean, "mcnr": mean}``.
    """
    border = np.full((224, 224), np.nan)
    border[14:-14, 14:-14] = 0  # set_margin(width=224, resize 512, crop 448): 196 kept, 14 a side
    ious, cnrs = [], []
    for threshold in thresholds:
        per_cat_iou: dict[str, list] = {}
        per_cat_cnr: dict[str, list] = {}
        for case in cases:
            hmap = case["hmap"].astype(np.float64).copy()
            hmap[np.isnan(border)] = np.nan
            nan = np.isnan(hmap)
            heat = _norm(hmap, nan)
            pred = heat > threshold
            gt = case["gt"][~nan]
            pr = pred[~nan]
            if pr.sum() == 0 or gt.sum() == 0:
                iou = np.nan
            else:
                iou = np.logical_and(gt, pr).sum() / np.logical_or(gt, pr).sum()
            vals = _norm(heat, nan)[~nan]
            inside, outside = vals[gt == 1], vals[gt == 0]
            var = inside.var() + outside.var()
            cnr = 0 if var == 0 else (inside.mean() - outside.mean()) / math.sqrt(var)
            per_cat_iou.setdefault(case["category"], []).append(iou)
            per_cat_cnr.setdefault(case["category"], []).append(cnr)
        ious.append(np.nanmean([np.nanmean(v) for v in per_cat_iou.values()]))
        cnrs.append(np.nanmean([np.nanmean(v) for v in per_cat_cnr.values()]))
    return {"iou": ious, "cnr": cnrs, "miou": float(np.mean(ious)), "mcnr": float(np.mean(cnrs))}
