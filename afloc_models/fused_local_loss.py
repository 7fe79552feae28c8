"""Fused attended-context kernels for the local loss (Triton, GPU; interpreter on CPU for tests).

The local loss (:func:`afloc_models.losses.local_score_matrix`) needs, for every image ``i`` and
text ``j`` of the batch, the attention of each word ``l`` over the regions ``n`` of the image:

    s[n, l]  = r_n . t_l                              (region-word dot products, [N, L])
    a1[n, l] = softmax over the valid words l of s    (each region's attention over words)
    a2[n, l] = softmax over the regions n of temp1 * a1
    c_l      = sum_n a2[n, l] r_n                     (the word's attended context, [L, D])

The chunked PyTorch path materialises ``s``, ``a1`` and ``a2`` as ``[chunk, N, B, L]`` tensors
several times and recomputes them in backward. Here three kernels compute ``c`` and its
gradients with those ``[N, L]`` tiles living only on chip:

1. :func:`_row_lse_kernel`: ``lse[i, j, n]``, the log-normaliser of each region's softmax over
   words (``[B, B, N]``; small).
2. :func:`_context_kernel`: ``c[i, j, l, :]`` and ``colsum[i, j, l]``, the normaliser of the
   softmax over regions. ``a1`` lies in [0, 1], so ``exp(temp1 * a1)`` needs no running maximum
   (it is at most ``exp(temp1)``).
3. :func:`_context_backward_kernel`: gradients of ``c`` with respect to regions and words. One
   program owns a block of regions of one image and walks over all texts, so region gradients
   are accumulated without atomics; word gradients are added atomically (texts visited in a
   rotated order so programs do not queue on the same text).

What is materialised: ``c`` (``[B, B, L, D]`` float32; the cosine and log-sum-exp over words that
follow are cheap PyTorch ops on it) and the small ``[B, B, N]`` / ``[B, B, L]`` normalisers;
never an ``[.., N, .., L]`` attention tensor.

Backward, with ``g_l = dLoss/dc_l``:

    q[n, l]   = r_n . g_l,    qbar_l = c_l . g_l
    dz[n, l]  = a2[n, l] (q[n, l] - qbar_l),  da1 = temp1 * dz
    ds[n, l]  = a1[n, l] (da1[n, l] - sum_l' a1[n, l'] da1[n, l'])
    dr_n     += sum_l a2[n, l] g_l + sum_l ds[n, l] t_l
    dt_l     += sum_n ds[n, l] r_n

Float32 inputs use exact (IEEE) dot products; bfloat16 / float16 inputs use the tensor cores with
float32 accumulation. Word-gradient atomics make the last bits of ``dt`` order-dependent.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

try:  # Triton ships with the CUDA build of PyTorch; absent on some CPU builds.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where Triton is missing
    triton = None
    tl = None

__all__ = ["fused_available", "fused_attended_context", "interpreter_enabled"]


def interpreter_enabled() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, tests only)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fused_available(device: torch.device) -> bool:
    """Whether the fused kernels can run on ``device``: CUDA with Triton, or the CPU interpreter."""
    if triton is None:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and interpreter_enabled()


def _pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


if triton is not None:

    @triton.jit
    def _row_lse_kernel(
        R, T, LEN, LSE,
        n_texts, n_regions, n_words, dim,
        s_rb, s_rd, s_rn, s_tb, s_td, s_tl,
        BN: tl.constexpr, LP: tl.constexpr, BD: tl.constexpr, DOT_TYPE: tl.constexpr, PREC: tl.constexpr,
    ):
        pair = tl.program_id(0)
        i = pair // n_texts
        j = pair % n_texts
        offs_n = tl.program_id(1) * BN + tl.arange(0, BN)
        offs_l = tl.arange(0, LP)
        n_ok = offs_n < n_regions
        valid = offs_l < tl.load(LEN + j)
        s = tl.zeros([BN, LP], dtype=tl.float32)
        for d0 in range(0, dim, BD):
            offs_d = d0 + tl.arange(0, BD)
            d_ok = offs_d < dim
            r = tl.load(R + i * s_rb + offs_n[:, None] * s_rn + offs_d[None, :] * s_rd,
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            t = tl.load(T + j * s_tb + offs_l[:, None] * s_tl + offs_d[None, :] * s_td,
                        mask=(offs_l < n_words)[:, None] & d_ok[None, :], other=0.0)
            s += tl.dot(r.to(DOT_TYPE), tl.trans(t.to(DOT_TYPE)), input_precision=PREC)
        s = tl.where(valid[None, :], s, float("-inf"))
        row_max = tl.max(s, axis=1)
        lse = row_max + tl.log(tl.sum(tl.exp(s - row_max[:, None]), axis=1))
        tl.store(LSE + pair * n_regions + offs_n, lse, mask=n_ok)

    @triton.jit
    def _context_kernel(
        R, T, LEN, LSE, C, COLSUM,
        n_texts, n_regions, n_words, dim, temp1,
        s_rb, s_rd, s_rn, s_tb, s_td, s_tl,
        BN: tl.constexpr, BL: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
        DOT_TYPE: tl.constexpr, PREC: tl.constexpr,
    ):
        pair = tl.program_id(0)
        i = pair // n_texts
        j = pair % n_texts
        offs_l = tl.program_id(1) * BL + tl.arange(0, BL)
        offs_c = tl.program_id(2) * BD + tl.arange(0, BD)  # the context columns this program writes
        l_ok = offs_l < n_words
        c_ok = offs_c < dim
        valid = offs_l < tl.load(LEN + j)
        acc = tl.zeros([BL, BD], dtype=tl.float32)
        colsum = tl.zeros([BL], dtype=tl.float32)
        for n0 in range(0, n_regions, BN):
            offs_n = n0 + tl.arange(0, BN)
            n_ok = offs_n < n_regions
            s = tl.zeros([BN, BL], dtype=tl.float32)
            for d0 in range(0, dim, BK):
                offs_d = d0 + tl.arange(0, BK)
                d_ok = offs_d < dim
                r = tl.load(R + i * s_rb + offs_n[:, None] * s_rn + offs_d[None, :] * s_rd,
                            mask=n_ok[:, None] & d_ok[None, :], other=0.0)
                t = tl.load(T + j * s_tb + offs_l[:, None] * s_tl + offs_d[None, :] * s_td,
                            mask=l_ok[:, None] & d_ok[None, :], other=0.0)
                s += tl.dot(r.to(DOT_TYPE), tl.trans(t.to(DOT_TYPE)), input_precision=PREC)
            lse = tl.load(LSE + pair * n_regions + offs_n, mask=n_ok, other=0.0)
            a1 = tl.where(n_ok[:, None] & valid[None, :], tl.exp(s - lse[:, None]), 0.0)
            # Padding words keep a1 = 0, so they attend uniformly (as the reference does).
            e = tl.where(n_ok[:, None], tl.exp(temp1 * a1), 0.0)
            colsum += tl.sum(e, axis=0)
            r_cols = tl.load(R + i * s_rb + offs_n[:, None] * s_rn + offs_c[None, :] * s_rd,
                             mask=n_ok[:, None] & c_ok[None, :], other=0.0)
            acc += tl.dot(tl.trans(e.to(DOT_TYPE)), r_cols.to(DOT_TYPE), input_precision=PREC)
        context = acc / colsum[:, None]
        base = pair * n_words * dim
        tl.store(C + base + offs_l[:, None] * dim + offs_c[None, :], context,
                 mask=l_ok[:, None] & c_ok[None, :])
        if tl.program_id(2) == 0:
            tl.store(COLSUM + pair * n_words + offs_l, colsum, mask=l_ok)

    @triton.jit
    def _context_backward_kernel(
        R, T, LEN, LSE, COLSUM, QBAR, G, DR, DT,
        n_texts, n_regions, n_words, dim, temp1,
        s_rb, s_rd, s_rn, s_tb, s_td, s_tl,
        BN: tl.constexpr, LP: tl.constexpr, BD: tl.constexpr, DOT_TYPE: tl.constexpr, PREC: tl.constexpr,
    ):
        i = tl.program_id(0)
        block = tl.program_id(1)
        offs_n = block * BN + tl.arange(0, BN)
        offs_l = tl.arange(0, LP)
        n_ok = offs_n < n_regions
        l_ok = offs_l < n_words
        for step in range(0, n_texts):
            j = (step + i + block) % n_texts  # rotated start: programs spread their atomics
            pair = i * n_texts + j
            valid = offs_l < tl.load(LEN + j)
            g_base = pair * n_words * dim
            s = tl.zeros([BN, LP], dtype=tl.float32)
            q = tl.zeros([BN, LP], dtype=tl.float32)
            for d0 in range(0, dim, BD):
                offs_d = d0 + tl.arange(0, BD)
                d_ok = offs_d < dim
                r = tl.load(R + i * s_rb + offs_n[:, None] * s_rn + offs_d[None, :] * s_rd,
                            mask=n_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_TYPE)
                t = tl.load(T + j * s_tb + offs_l[:, None] * s_tl + offs_d[None, :] * s_td,
                            mask=l_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_TYPE)
                g = tl.load(G + g_base + offs_l[:, None] * dim + offs_d[None, :],
                            mask=l_ok[:, None] & d_ok[None, :], other=0.0).to(DOT_TYPE)
                s += tl.dot(r, tl.trans(t), input_precision=PREC)
                q += tl.dot(r, tl.trans(g), input_precision=PREC)
            lse = tl.load(LSE + pair * n_regions + offs_n, mask=n_ok, other=0.0)
            colsum = tl.load(COLSUM + pair * n_words + offs_l, mask=l_ok, other=1.0)
            qbar = tl.load(QBAR + pair * n_words + offs_l, mask=l_ok, other=0.0)
            a1 = tl.where(n_ok[:, None] & valid[None, :], tl.exp(s - lse[:, None]), 0.0)
            a2 = tl.where(n_ok[:, None] & l_ok[None, :], tl.exp(temp1 * a1) / colsum[None, :], 0.0)
            da1 = temp1 * a2 * (q - qbar[None, :])
            row_dot = tl.sum(a1 * da1, axis=1)
            ds = a1 * (da1 - row_dot[:, None])
            for d0 in range(0, dim, BD):
                offs_d = d0 + tl.arange(0, BD)
                d_ok = offs_d < dim
                nd_mask = n_ok[:, None] & d_ok[None, :]
                ld_mask = l_ok[:, None] & d_ok[None, :]
                r = tl.load(R + i * s_rb + offs_n[:, None] * s_rn + offs_d[None, :] * s_rd,
                            mask=nd_mask, other=0.0).to(DOT_TYPE)
                t = tl.load(T + j * s_tb + offs_l[:, None] * s_tl + offs_d[None, :] * s_td,
                            mask=ld_mask, other=0.0).to(DOT_TYPE)
                g = tl.load(G + g_base + offs_l[:, None] * dim + offs_d[None, :],
                            mask=ld_mask, other=0.0).to(DOT_TYPE)
                dr = tl.dot(a2.to(DOT_TYPE), g, input_precision=PREC)
                dr += tl.dot(ds.to(DOT_TYPE), t, input_precision=PREC)
                dr_ptr = DR + i * n_regions * dim + offs_n[:, None] * dim + offs_d[None, :]
                tl.store(dr_ptr, tl.load(dr_ptr, mask=nd_mask, other=0.0) + dr, mask=nd_mask)
                dt = tl.dot(tl.trans(ds.to(DOT_TYPE)), r, input_precision=PREC)
                tl.atomic_add(DT + j * n_words * dim + offs_l[:, None] * dim + offs_d[None, :], dt, mask=ld_mask)


def _launch_settings(dtype: torch.dtype):
    if dtype == torch.float32:
        return tl.float32, "ieee"
    if dtype in (torch.bfloat16, torch.float16):
        return (tl.bfloat16 if dtype == torch.bfloat16 else tl.float16), "tf32"
    raise TypeError(f"fused local loss supports float32, bfloat16 and float16 features, got {dtype}")


class _AttendedContext(torch.autograd.Function):
    """``(regions [Bi, D, N], texts [Bt, D, L], lengths [Bt]) -> context [Bi, Bt, L, D]`` (float32)."""

    @staticmethod
    def forward(ctx, regions, texts, lengths, temp1: float, block_regions: int):
        n_images, dim, n_regions = regions.shape
        n_texts, _, n_words = texts.shape
        dot_type, prec = _launch_settings(regions.dtype)
        texts = texts.to(regions.dtype)
        lengths = lengths.to(device=regions.device, dtype=torch.int32).contiguous()
        device = regions.device
        lp = _pow2(n_words)
        bn = block_regions
        lse = torch.empty(n_images * n_texts, n_regions, device=device, dtype=torch.float32)
        context = torch.empty(n_images, n_texts, n_words, dim, device=device, dtype=torch.float32)
        colsum = torch.empty(n_images * n_texts, n_words, device=device, dtype=torch.float32)
        strides = (*regions.stride(), *texts.stride())
        pairs = n_images * n_texts
        _row_lse_kernel[(pairs, triton.cdiv(n_regions, bn))](
            regions, texts, lengths, lse, n_texts, n_regions, n_words, dim, *strides,
            BN=bn, LP=lp, BD=64, DOT_TYPE=dot_type, PREC=prec,
        )
        bl = min(lp, 32)
        bd = 128
        _context_kernel[(pairs, triton.cdiv(n_words, bl), triton.cdiv(dim, bd))](
            regions, texts, lengths, lse, context, colsum, n_texts, n_regions, n_words, dim, float(temp1),
            *strides, BN=bn, BL=bl, BD=bd, BK=64, DOT_TYPE=dot_type, PREC=prec,
        )
        ctx.save_for_backward(regions, texts, lengths, lse, colsum, context)
        ctx.temp1 = float(temp1)
        ctx.block_regions = bn
        ctx.texts_dtype = texts.dtype
        return context

    @staticmethod
    def backward(ctx, grad_context):
        regions, texts, lengths, lse, colsum, context = ctx.saved_tensors
        n_images, dim, n_regions = regions.shape
        n_texts, _, n_words = texts.shape
        dot_type, prec = _launch_settings(regions.dtype)
        grad_context = grad_context.to(torch.float32).contiguous()
        qbar = torch.einsum("ijld,ijld->ijl", context, grad_context).reshape(n_images * n_texts, n_words)
        d_regions = torch.zeros(n_images, n_regions, dim, device=regions.device, dtype=torch.float32)
        d_texts = torch.zeros(n_texts, n_words, dim, device=regions.device, dtype=torch.float32)
        bn = ctx.block_regions
        _context_backward_kernel[(n_images, triton.cdiv(n_regions, bn))](
            regions, texts, lengths, lse, colsum, qbar, grad_context, d_regions, d_texts,
            n_texts, n_regions, n_words, dim, ctx.temp1,
            *regions.stride(), *texts.stride(),
            BN=bn, LP=_pow2(n_words), BD=64, DOT_TYPE=dot_type, PREC=prec,
        )
        return (
            d_regions.transpose(1, 2).to(regions.dtype),
            d_texts.transpose(1, 2).to(ctx.texts_dtype),
            None,
            None,
            None,
        )


def fused_attended_context(
    regions: torch.Tensor,
    texts: torch.Tensor,
    lengths: torch.Tensor,
    temp1: float,
    block_regions: Optional[int] = None,
) -> torch.Tensor:
    """Attended context of every word of every text over every image's regions.

    Args:
        regions: ``[Bi, D, N]`` local image features (any strides).
        texts: ``[Bt, D, L]`` word or sentence features, padded beyond ``lengths``.
        lengths: ``[Bt]`` valid positions per text, each >= 1.
        temp1: sharpening of the attention over regions.
        block_regions: regions per on-chip tile (power of two, >= 16; default 32).

    Returns:
        ``[Bi, Bt, L, D]`` float32 contexts; padded positions attend uniformly, as in the
        reference implementation.
    """
    if triton is None:
        raise RuntimeError("the fused local loss needs Triton (it ships with the CUDA build of PyTorch)")
    if not fused_available(regions.device):
        raise RuntimeError(
            f"the fused local loss runs on CUDA devices (or the Triton CPU interpreter in tests), "
            f"not on {regions.device}"
        )
    return _AttendedContext.apply(regions, texts, lengths, float(temp1), int(block_regions or 32))
