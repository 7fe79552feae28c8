"""The vectorised, chunked losses against plain per-sample reference loops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afloc_models.losses import global_loss, local_loss, local_score_matrix


def reference_local_scores(img, txt, lengths, temp1, temp2):
    """GLoRIA-style loop: for each text, slice its valid words and attend over each image alone."""
    batch = img.shape[0]
    scores = torch.zeros(batch, txt.shape[0], dtype=img.dtype)
    for j in range(txt.shape[0]):
        words = txt[j, :, : int(lengths[j])]  # [D, Lj]
        for i in range(batch):
            regions = img[i].flatten(1)  # [D, N]
            attn = words.t() @ regions  # [Lj, N]
            attn = torch.softmax(attn, dim=0)  # over words
            attn = torch.softmax(attn * temp1, dim=1)  # over regions
            context = regions @ attn.t()  # [D, Lj]
            cos = F.cosine_similarity(words, context, dim=0, eps=1e-8)  # [Lj]
            scores[i, j] = torch.log(torch.exp(temp2 * cos).sum())
    return scores


def reference_local_loss(img, txt, lengths, temp1=4.0, temp2=5.0, temp3=10.0):
    scores = reference_local_scores(img, txt, lengths, temp1, temp2) * temp3
    labels = torch.arange(scores.shape[0])
    return F.cross_entropy(scores, labels), F.cross_entropy(scores.t(), labels)


def _inputs(seed=0, batch=5, dim=16, hw=(4, 3), max_len=7):
    gen = torch.Generator().manual_seed(seed)
    img = torch.randn(batch, dim, *hw, generator=gen, dtype=torch.float64).float()
    txt = torch.randn(batch, dim, max_len, generator=gen).float()
    lengths = torch.tensor([max_len, 1, 3, max_len - 1, 2][:batch])
    # Garbage in padded positions must not change anything.
    for j, n in enumerate(lengths.tolist()):
        txt[j, :, n:] = 1e3 * torch.randn(dim, max_len - n, generator=gen)
    return img, txt, lengths


@pytest.mark.parametrize("chunk", [0, 1, 2, 16])
def test_local_loss_matches_reference_loop(chunk):
    img, txt, lengths = _inputs()
    got = local_loss(img, txt, lengths, chunk_size=chunk)
    want = reference_local_loss(img, txt, lengths)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4, rtol=1e-4), (g, w)


def test_local_scores_ignore_padding_content():
    img, txt, lengths = _inputs()
    txt2 = txt.clone()
    txt2[0, :, :] = txt[0]  # full length: unchanged
    txt2[1, :, 1:] = -txt2[1, :, 1:] * 7  # only padding changed
    a = local_score_matrix(img, txt, lengths)
    b = local_score_matrix(img, txt2, lengths)
    assert torch.equal(a, b)


def test_local_loss_gradients_match_between_chunked_and_whole():
    img, txt, lengths = _inputs(seed=3)
    grads = []
    for chunk in (0, 2):
        i = img.clone().requires_grad_(True)
        t = txt.clone().requires_grad_(True)
        a, b = local_loss(i, t, lengths, chunk_size=chunk)
        (a + b).backward()
        grads.append((i.grad, t.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)
    # Padded text positions receive no gradient.
    assert torch.count_nonzero(grads[1][1][1, :, 1:]) == 0


def test_local_loss_rejects_empty_text():
    img, txt, lengths = _inputs()
    lengths[2] = 0
    with pytest.raises(ValueError, match="at least one valid position"):
        local_loss(img, txt, lengths)


def test_global_loss_matches_reference():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    i2t, t2i = global_loss(a, b, temp3=10.0)
    sims = torch.stack([torch.stack([F.cosine_similarity(a[i], b[j], dim=0) for j in range(6)]) for i in range(6)])
    labels = torch.arange(6)
    assert torch.allclose(i2t, F.cross_entropy(10 * sims, labels), atol=1e-5)
    assert torch.allclose(t2i, F.cross_entropy(10 * sims.t(), labels), atol=1e-5)


def test_aligned_pairs_have_lower_loss_than_misaligned():
    """A loss that cannot tell aligned from misaligned pairs would be useless: check it can."""
    img, _, _ = _inputs(seed=5, max_len=3)
    # Texts built from their own image's regions are aligned with it.
    txt = img.flatten(2)[:, :, :3].clone()
    lengths = torch.full((img.shape[0],), 3)
    aligned = sum(local_loss(img, txt, lengths))
    shuffled = sum(local_loss(img, txt.roll(1, dims=0), lengths))
    assert aligned < shuffled
    scores = local_score_matrix(img, txt, lengths)
    assert bool((scores.diag() >= scores.max(dim=1).values - 1e-6).all())


def test_region_attention_finds_the_region_a_single_prompt_points_at():
    # One prompt (a one-sentence text) and an image whose region 5 carries that sentence's
    # vector: attention over regions by the inner product pools region 5 and scores high;
    # the published words-first attention has a single word to normalise over, so it weighs
    # every region alike and scores the mean region.
    torch.manual_seed(0)
    d, n = 32, 16
    text = F.normalize(torch.randn(1, d, 1), dim=1)
    regions = 0.1 * torch.randn(1, d, n)
    regions[0, :, 5] = 20.0 * text[0, :, 0]
    image = regions.view(1, d, 4, 4)
    lengths = torch.tensor([1])
    by_regions = local_score_matrix(image, text, lengths, chunk_size=0, attention="regions")
    words_first = local_score_matrix(image, text, lengths, chunk_size=0, attention="words_first")
    temp2 = 5.0  # a one-word text scores temp2 x cosine(context, word)
    assert float(by_regions) / temp2 > 0.99
    pooled = regions.mean(dim=2)
    expected = temp2 * F.cosine_similarity(pooled, text[:, :, 0])
    torch.testing.assert_close(words_first.view(1), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["regions", "regions_cosine"])
@pytest.mark.parametrize("chunk", [0, 2])
def test_region_attention_chunks_agree_and_unknown_attention_is_refused(chunk, attention):
    torch.manual_seed(1)
    image, text, lengths = torch.randn(4, 8, 3, 3), torch.randn(4, 8, 5), torch.tensor([5, 3, 2, 1])
    whole = local_score_matrix(image, text, lengths, chunk_size=0, attention=attention)
    torch.testing.assert_close(local_score_matrix(image, text, lengths, chunk_size=chunk, attention=attention), whole)
    assert not torch.allclose(whole, local_score_matrix(image, text, lengths, chunk_size=0))
    with pytest.raises(ValueError, match="attention"):
        local_score_matrix(image, text, lengths, attention="sideways")


def test_cosine_region_attention_is_blind_to_region_norms_and_sharpened_by_temp1():
    # Region 5 points along the sentence but is short; region 9 is long and points elsewhere.
    # Attention by the inner product is drawn to the long region; by the cosine (regions_cosine)
    # it pools region 5 whatever the norms, and temp1 sets how sharply.
    torch.manual_seed(2)
    d, n = 32, 16
    text = F.normalize(torch.randn(1, d, 1), dim=1)
    other = F.normalize(torch.randn(d), dim=0)
    other = F.normalize(other - (other @ text[0, :, 0]) * text[0, :, 0], dim=0)  # orthogonal to the text
    regions = 0.05 * torch.randn(1, d, n)
    regions[0, :, 5] = 2.0 * text[0, :, 0]
    regions[0, :, 9] = 40.0 * (0.6 * text[0, :, 0] + 0.8 * other)
    image, lengths = regions.view(1, d, 4, 4), torch.tensor([1])
    temp2 = 5.0
    by_cosine = float(local_score_matrix(image, text, lengths, temp1=20.0, chunk_size=0, attention="regions_cosine"))
    by_dot = float(local_score_matrix(image, text, lengths, chunk_size=0, attention="regions"))
    assert by_cosine / temp2 > 0.95  # context = region 5, cosine ~1
    assert by_dot / temp2 < 0.7  # context pulled to region 9 (cosine 0.6)
    soft = float(local_score_matrix(image, text, lengths, temp1=1.0, chunk_size=0, attention="regions_cosine"))
    assert soft < by_cosine  # a flatter softmax mixes in the other regions
