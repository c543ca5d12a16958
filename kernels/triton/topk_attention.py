"""Triton part of op 2 (top-k target attention): the L-wide score pass, forward and backward.

The memory-bound work is reading every attention key once to score it; that pass is a
Triton kernel (one program per row and L tile) that writes the [B, L] scores DARE's
auxiliary loss needs. Top-k selection, the softmax over the kept k ≪ L scores and the
gather-sum of the kept representation rows are [B, k]-sized and stay in PyTorch. The
score backward is a second kernel: dq_b = scale Σ_j dS_bj k_bj, dk_bj = scale dS_bj q_b.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference.topk_attention import PAD_SCORE
from .common import block_configs, load_tile, pow2, row_extent, row_layout, store_tile, tile_rows


@triton.autotune(configs=block_configs(), key=["D"])
@triton.jit
def _scores_fwd(q_ptr, k_ptr, start_ptr, len_ptr, s_ptr, scale, pad, D, L,
                BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    tile = tl.program_id(1)
    start, n = row_extent(start_ptr, len_ptr, b)
    d = tl.arange(0, BLOCK_D)
    j, valid, rows = tile_rows(start, n, tile * BLOCK_L, BLOCK_L)
    q = tl.load(q_ptr + b * D + d, mask=d < D, other=0.0).to(tl.float32)
    k = load_tile(k_ptr, rows, valid, D, BLOCK_D)
    s = tl.sum(k * q[None, :], axis=1) * scale
    s = tl.where(valid, s, pad)
    tl.store(s_ptr + b * L + j, s.to(s_ptr.dtype.element_ty), mask=j < L)


@triton.autotune(configs=block_configs(), key=["D"])
@triton.jit
def _scores_bwd(q_ptr, k_ptr, start_ptr, len_ptr, ds_ptr, dq_ptr, dk_ptr, scale, D, L,
                BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0)
    start, n = row_extent(start_ptr, len_ptr, b)
    d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + b * D + d, mask=d < D, other=0.0).to(tl.float32)
    dq = tl.zeros([BLOCK_D], tl.float32)
    for t in range(0, n, BLOCK_L):
        j, valid, rows = tile_rows(start, n, t, BLOCK_L)
        k = load_tile(k_ptr, rows, valid, D, BLOCK_D)
        ds = tl.load(ds_ptr + b * L + j, mask=valid, other=0.0).to(tl.float32) * scale
        dq += tl.sum(ds[:, None] * k, axis=0)
        store_tile(dk_ptr, rows, valid, ds[:, None] * q[None, :], D, BLOCK_D)
    tl.store(dq_ptr + b * D + d, dq, mask=d < D)


class _Scores(torch.autograd.Function):
    """scores [B, L] = scale · ⟨q, k_j⟩ for valid j, PAD_SCORE elsewhere (no gradient there)."""

    @staticmethod
    def forward(ctx, q_att, k_att, lengths, offsets, scale):
        flat_k, starts, lens, width = row_layout(k_att, lengths, offsets)
        q = q_att.contiguous()
        batch, dim = q.shape
        scores = torch.empty(batch, width, device=q.device, dtype=q.dtype)
        if batch and width:
            grid = lambda meta: (batch, triton.cdiv(width, meta["BLOCK_L"]))  # noqa: E731
            _scores_fwd[grid](q, flat_k, starts, lens, scores, scale, PAD_SCORE, dim, width, BLOCK_D=pow2(dim, 1))
        ctx.save_for_backward(q, flat_k, starts, lens)
        ctx.meta = (scale, k_att.shape, width)
        return scores

    @staticmethod
    def backward(ctx, dscores):
        q, flat_k, starts, lens = ctx.saved_tensors
        scale, k_shape, width = ctx.meta
        batch, dim = q.shape
        dq = torch.zeros(batch, dim, device=q.device, dtype=torch.float32)
        dk = torch.zeros(flat_k.shape, device=q.device, dtype=torch.float32)
        if batch and width:
            _scores_bwd[(batch,)](q, flat_k, starts, lens, dscores.contiguous(), dq, dk, scale, dim, width,
                                  BLOCK_D=pow2(dim, 1))
        return dq.to(q.dtype), dk.reshape(k_shape).to(q.dtype), None, None, None


def topk_target_attention_triton(q_att: Tensor, k_att: Tensor, v_rep: Tensor, lengths: Tensor,
                                 offsets: Optional[Tensor], k: int,
                                 scale: Optional[float]) -> Tuple[Tensor, Tensor, Tensor]:
    """Same contract as kernels.topk_target_attention (inputs already validated)."""
    scale = q_att.shape[-1] ** -0.5 if scale is None else float(scale)
    scores = _Scores.apply(q_att, k_att, lengths, offsets, scale)               # [B, L]
    positions = torch.arange(scores.shape[1], device=scores.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
    kept_scores, index = torch.topk(scores, k, dim=1)                           # [B, k]
    kept_valid = torch.gather(mask, 1, index)
    weights = torch.softmax(kept_scores.masked_fill(~kept_valid, float("-inf")), dim=1).nan_to_num(0.0)
    if offsets is None:
        kept_values = torch.gather(v_rep, 1, index.unsqueeze(-1).expand(-1, -1, v_rep.shape[-1]))
    else:   # jagged: row b's position i is value row offsets[b] + i (clamped for rows shorter than k)
        rows = (offsets[:-1].unsqueeze(1).to(torch.int64) + index).clamp(max=max(v_rep.shape[0] - 1, 0))
        kept_values = v_rep[rows] if v_rep.shape[0] else v_rep.new_zeros(index.shape + (v_rep.shape[-1],))
    pooled = torch.einsum("bk,bkd->bd", weights, kept_values)
    return pooled, scores, index.masked_fill(~kept_valid, -1)
