"""The training step built the way the published AFLoc/GLoRIA code builds it, for comparison only.

Two differences from ``afloc_models``:

- word merging walks every token of every report in Python, comparing token strings to find
  ``##`` continuations, and moves each merged word separately (a GPU sync per token);
- the local loss loops over texts: each text's valid words are repeated for every image of the
  batch and attended with ``bmm``, one text at a time.

Numerically it computes the same losses (see ``tests/test_benchmark_baseline.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from afloc_models.model import AFLoc, AFLocLosses
from afloc_models.tokenization import TokenizedReports


def merge_words_token_loop(token_emb: torch.Tensor, tokens: TokenizedReports, id_to_piece: dict[int, str]):
    """Per-token loop: ``[B, T, H]`` -> words ``[B, W, H]`` (sub-words summed), like the published code.

    Each token id is read with ``.item()`` from the device tensor, as the published code does, so
    on a GPU every token costs a host-device synchronisation.
    """
    batch, length, hidden = token_emb.shape
    width = int(tokens.word_sentence.shape[1])
    out = []
    for b in range(batch):
        words, bank = [], []
        for t in range(length):
            piece = id_to_piece[tokens.input_ids[b, t].item()]
            if piece in ("[CLS]", "[PAD]"):
                continue
            if piece == "[SEP]":
                break
            if piece.startswith("##") and bank:
                bank.append(token_emb[b, t])
                continue
            if bank:
                words.append(torch.stack(bank).sum(0))
            bank = [token_emb[b, t]]
        if bank:
            words.append(torch.stack(bank).sum(0))
        rows = torch.stack(words) if words else token_emb.new_zeros(0, hidden)
        pad = token_emb.new_zeros(width - rows.shape[0], hidden)
        out.append(torch.cat([rows, pad]))
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
    """Same objective as ``model(images, tokens)``, computed the published way."""
    from afloc_models.losses import global_loss
    from afloc_models.text_encoder import masked_mean, pool_sentences

    cfg = model.config.loss
    enc = model.text_encoder
    id_to_piece = {i: p for p, i in enc.tokenizer.hf_tokenizer.get_vocab().items()}
    # The published loop recognises words by "##" pieces; ours come from the tokenizer's word ids.
    # They agree for BERT WordPiece on whitespace-split words, which the benchmark uses.
    token_emb = enc.token_embeddings(tokens)
    words = merge_words_token_loop(token_emb, tokens, id_to_piece)
    sentences = pool_sentences(words, tokens.word_sentence, int(tokens.n_sentences.max()))
    report = masked_mean(words, tokens.word_sentence >= 0)
    words_d = enc.word_proj(words).transpose(1, 2)
    sentences_d = enc.sentence_proj(sentences).transpose(1, 2)
    report_d = enc.report_proj(report)
    image = model.encode_image(images)
    temps = dict(temp1=cfg.temp1, temp2=cfg.temp2, temp3=cfg.temp3)
    w = sum(local_loss_text_loop(image.shallow, words_d, tokens.n_words, **temps))
    s = sum(local_loss_text_loop(image.deep, sentences_d, tokens.n_sentences, **temps))
    g = sum(global_loss(image.global_, report_d, temp3=cfg.temp3))
    total = cfg.weight_word * w + cfg.weight_sentence * s + cfg.weight_global * g
    return AFLocLosses(total=total, word=w, sentence=s, global_=g)
