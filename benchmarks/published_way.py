"""The training step built the way the published AFLoc/GLoRIA code builds it, for comparison only.

Two differences in *how* from ``afloc_models`` (``compat: published``), none in *what*:

- word merging walks every token of every report in Python, comparing token strings to find
  ``##`` continuations, and moves each merged word separately (a GPU sync per token); sentence
  units are found by a second loop over the word strings;
- the local loss loops over texts: each text's valid units are repeated for every image of the
  batch and attended with ``bmm``, one text at a time.

The units are the published ones: the word level is [CLS], the words (periods between
sentences included) and [SEP]; the sentence level is [CLS], each sentence's mean word and
[SEP]; the local losses use the first ``1 + n`` units (so [CLS] counts, [SEP] does not); the
report embedding is the mean over the whole token window with zeros after [SEP]. So the
objective is the published one, and it equals ``model(images, tokens)`` for a model in
``compat: published`` (see ``tests/test_benchmark_baseline.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from afloc_models.model import AFLoc, AFLocLosses
from afloc_models.tokenization import TokenizedReports


def merge_words_token_loop(token_emb: torch.Tensor, tokens: TokenizedReports, id_to_piece: dict[int, str], window: int):
    """Per-token loop, like the published code: ``[B, T, H]`` -> word units ``[B, window, H]`` and their names.

    Each token id is read with ``.item()`` from the device tensor, as the published code does, so
    on a GPU every token costs a host-device synchronisation.
    """
    batch, length, hidden = token_emb.shape
    out, names_out = [], []
    for b in range(batch):
        units, names, bank, bank_names = [], [], [], []
        for t in range(length):
            piece = id_to_piece[tokens.input_ids[b, t].item()]
            if piece == "[SEP]":
                units.append(torch.stack(bank).sum(0))
                names.append("".join(bank_names))
                units.append(token_emb[b, t])
                names.append(piece)
                break
            if piece.startswith("##"):
                bank.append(token_emb[b, t])
                bank_names.append(piece[2:])
                continue
            if bank:
                units.append(torch.stack(bank).sum(0))
                names.append("".join(bank_names))
            bank, bank_names = [token_emb[b, t]], [piece]
        rows = torch.stack(units)
        out.append(torch.cat([rows, token_emb.new_zeros(window - rows.shape[0], hidden)]))
        names_out.append(names + ["[PAD]"] * (window - len(names)))
    return torch.stack(out), names_out


def sentence_units_loop(words: torch.Tensor, names: list[list[str]]) -> torch.Tensor:
    """Per-report loop over word names: [CLS], mean word of each "."-separated sentence, [SEP]."""
    batch, window, hidden = words.shape
    out = []
    for b in range(batch):
        labels = list(names[b])
        sep = labels.index("[SEP]")
        labels[sep - 1] = "*"  # a period right before [SEP] ends no sentence
        labels[sep] = "."
        stops = [i for i, name in enumerate(labels) if name == "."]
        units, start = [words[b, 0]], 1
        for stop in stops:
            units.append(words[b, start:stop].mean(0))
            start = stop + 1
        units.append(words[b, stops[-1]])
        rows = torch.stack(units)
        out.append(torch.cat([rows, words.new_zeros(window - rows.shape[0], hidden)]))
    return torch.stack(out)


def local_loss_text_loop(img, txt, lengths, temp1=4.0, temp2=5.0, temp3=10.0):
    """Per-text loop over the batch (GLoRIA layout): returns ``(loss_i2t, loss_t2i)``."""
    batch = img.shape[0]
    regions = img.flatten(2)  # [B, D, N]
    columns = []
    for j in range(txt.shape[0]):
        n = int(lengths[j])  # a GPU sync per text
        words = txt[j : j + 1, :, :n].repeat(batch, 1, 1)  # [B, D, n]
        attn = torch.bmm(regions.transpose(1, 2), words)  # [B, N, n]
        attn = torch.softmax(attn, dim=2)
        attn = torch.softmax(attn.transpose(1, 2) * temp1, dim=2)  # [B, n, N]
        context = torch.bmm(regions, attn.transpose(1, 2))  # [B, D, n]
        cos = F.cosine_similarity(words, context, dim=1, eps=1e-8)  # [B, n]
        columns.append(torch.log(torch.exp(temp2 * cos).sum(dim=1, keepdim=True)))
    scores = torch.cat(columns, dim=1) * temp3  # [B_img, B_txt]
    labels = torch.arange(batch, device=img.device)
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def published_step_loss(model: AFLoc, images: torch.Tensor, tokens: TokenizedReports) -> AFLocLosses:
    """The published objective computed the published way; ``model`` must be in ``compat: published``."""
    from afloc_models.losses import global_loss

    if model.config.compat != "published":
        raise ValueError("published_step_loss reproduces the published objective: use a model with compat: published")
    cfg = model.config.loss
    enc = model.text_encoder
    id_to_piece = {i: p for p, i in enc.tokenizer.hf_tokenizer.get_vocab().items()}
    window = enc.max_tokens
    token_emb = enc.token_embeddings(tokens)
    words, names = merge_words_token_loop(token_emb, tokens, id_to_piece, window)
    sentences = sentence_units_loop(words, names)
    report = words.mean(dim=1)  # over the whole window, zeros after [SEP] included
    n_words = [len([w for w in ws if not w.startswith("[")]) + 1 for ws in names]
    n_sentences = [len([w for w in ws if w == "."]) for ws in [_marked(ws) for ws in names]]
    words_d = enc.word_proj(words).transpose(1, 2)
    sentences_d = enc.sentence_proj(sentences).transpose(1, 2)
    report_d = enc.report_proj(report)
    image = model.encode_image(images)
    temps = dict(temp1=cfg.temp1, temp2=cfg.temp2, temp3=cfg.temp3)
    w = sum(local_loss_text_loop(image.shallow, words_d, n_words, **temps))
    s = sum(local_loss_text_loop(image.deep, sentences_d, [n + 1 for n in n_sentences], **temps))
    g = sum(global_loss(image.global_, report_d, temp3=cfg.temp3))
    total = cfg.weight_word * w + cfg.weight_sentence * s + cfg.weight_global * g
    return AFLocLosses(total=total, word=w, sentence=s, global_=g)


def _marked(names: list[str]) -> list[str]:
    """Word names with the sentence stops marked as the published sentence loop marks them."""
    labels = list(names)
    sep = labels.index("[SEP]")
    labels[sep - 1] = "*"
    labels[sep] = "."
    return labels
