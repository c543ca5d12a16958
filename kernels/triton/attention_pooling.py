"""Triton kernels for op 3 (single-query attention pooling), forward and backward.

One program per history row walks the row in BLOCK_L tiles: each key/value tile is read
once, the softmax is computed online (running max and sum, as in flash attention) and the
weighted sum is accumulated in registers; nothing of size [B, L] is written. The backward
recomputes the scores tile by tile from the saved log-sum-exp.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from .common import block_configs, load_tile, pow2, row_extent, row_layout, store_tile, tile_rows


@triton.autotune(configs=block_configs(), key=["D", "DV"])
@triton.jit
def _pool_fwd(q_ptr, k_ptr, v_ptr, start_ptr, len_ptr, out_ptr, lse_ptr, scale, D, DV,
              SOFTMAX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr):
    b = tl.program_id(0)
    start, n = row_extent(start_ptr, len_ptr, b)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * D + d, mask=d < D, other=0.0).to(tl.float32)
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_DV], tl.float32)
    for t in range(0, n, BLOCK_L):
        j, valid, rows = tile_rows(start, n, t, BLOCK_L)
        k = load_tile(k_ptr, rows, valid, D, BLOCK_D)
        v = load_tile(v_ptr, rows, valid, DV, BLOCK_DV)
        s = tl.sum(k * q[None, :], axis=1) * scale
        if SOFTMAX:
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=0))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new)
            total = total * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m = m_new
        else:
            w = tl.where(valid, tl.maximum(s, 0.0), 0.0)
            acc += tl.sum(w[:, None] * v, axis=0)
    if SOFTMAX:
        nonempty = total > 0
        acc = tl.where(nonempty, acc / tl.where(nonempty, total, 1.0), 0.0)
        tl.store(lse_ptr + b, tl.where(nonempty, m + tl.log(tl.where(nonempty, total, 1.0)), 0.0))
    tl.store(out_ptr + b * DV + dv, acc.to(out_ptr.dtype.element_ty), mask=dv < DV)


@triton.autotune(configs=block_configs(), key=["D", "DV"], reset_to_zero=["dk_ptr", "dv_ptr"])
@triton.jit
def _pool_bwd(q_ptr, k_ptr, v_ptr, start_ptr, len_ptr, out_ptr, lse_ptr, dout_ptr, dq_ptr, dk_ptr, dv_ptr,
              scale, D, DV, SOFTMAX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
              BLOCK_DV: tl.constexpr):
    b = tl.program_id(0)
    start, n = row_extent(start_ptr, len_ptr, b)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * D + d, mask=d < D, other=0.0).to(tl.float32)
    g = tl.load(dout_ptr + b * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
    if SOFTMAX:
        out = tl.load(out_ptr + b * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
        delta = tl.sum(out * g, axis=0)            # Σ_j p_j (dO · v_j)
        lse = tl.load(lse_ptr + b)
    dq = tl.zeros([BLOCK_D], tl.float32)
    for t in range(0, n, BLOCK_L):
        j, valid, rows = tile_rows(start, n, t, BLOCK_L)
        k = load_tile(k_ptr, rows, valid, D, BLOCK_D)
        v = load_tile(v_ptr, rows, valid, DV, BLOCK_DV)
        s = tl.sum(k * q[None, :], axis=1) * scale
        dp = tl.sum(v * g[None, :], axis=1)        # dL/dw_j
        if SOFTMAX:
            w = tl.where(valid, tl.exp(s - lse), 0.0)
            ds = w * (dp - delta)
        else:
            w = tl.where(valid, tl.maximum(s, 0.0), 0.0)
            ds = tl.where(valid & (s > 0), dp, 0.0)
        dq += tl.sum(ds[:, None] * k, axis=0) * scale
        store_tile(dk_ptr, rows, valid, ds[:, None] * q[None, :] * scale, D, BLOCK_D)
        store_tile(dv_ptr, rows, valid, w[:, None] * g[None, :], DV, BLOCK_DV)
    tl.store(dq_ptr + b * D + d, dq, mask=d < D)


class _AttentionPooling(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, values, lengths, offsets, softmax, scale):
        flat_k, starts, lens, _ = row_layout(keys, lengths, offsets)
        flat_v, _, _, _ = row_layout(values, lengths, offsets)
        q = query.contiguous()
        batch, dim, dim_v = q.shape[0], q.shape[1], flat_v.shape[1]
        out = torch.empty(batch, dim_v, device=q.device, dtype=q.dtype)
        lse = torch.zeros(batch, device=q.device, dtype=torch.float32)
        if batch:
            _pool_fwd[(batch,)](q, flat_k, flat_v, starts, lens, out, lse, scale, dim, dim_v, SOFTMAX=softmax,
                                BLOCK_D=pow2(dim, 1), BLOCK_DV=pow2(dim_v, 1))
        ctx.save_for_backward(q, flat_k, flat_v, starts, lens, out, lse)
        ctx.meta = (softmax, scale, keys.shape, values.shape)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, flat_k, flat_v, starts, lens, out, lse = ctx.saved_tensors
        softmax, scale, k_shape, v_shape = ctx.meta
        batch, dim, dim_v = q.shape[0], q.shape[1], flat_v.shape[1]
        dq = torch.zeros(batch, dim, device=q.device, dtype=torch.float32)
        dk = torch.zeros(flat_k.shape, device=q.device, dtype=torch.float32)
        dv = torch.zeros(flat_v.shape, device=q.device, dtype=torch.float32)
        if batch:
            _pool_bwd[(batch,)](q, flat_k, flat_v, starts, lens, out, lse, dout.contiguous(), dq, dk, dv, scale,
                                dim, dim_v, SOFTMAX=softmax, BLOCK_D=pow2(dim, 1), BLOCK_DV=pow2(dim_v, 1))
        return (dq.to(q.dtype), dk.reshape(k_shape).to(q.dtype), dv.reshape(v_shape).to(q.dtype),
                None, None, None, None)


def attention_pooling_triton(query: Tensor, keys: Tensor, lengths: Tensor, offsets: Optional[Tensor],
                             values: Tensor, weighting: str, scale: Optional[float]) -> Tensor:
    """Same contract as kernels.attention_pooling (inputs already validated); values is
    never None here (the dispatcher passes keys), and gradients for a shared keys/values
    tensor add up through autograd."""
    scale = query.shape[-1] ** -0.5 if scale is None else float(scale)
    return _AttentionPooling.apply(query, keys, values, lengths, offsets, weighting == "softmax", scale)
