"""Triton kernel for op 1 (DIN activation-unit attention).

One program per history row walks the row in BLOCK_L tiles. For each tile the key and
value rows are read once; the first layer is computed on chip as

    pre1 = k (Wb − Wc) + (q ⊙ k) Wd + [q (Wa + Wc) + b1]     ([BLOCK_L, H1], two tl.dot)

followed by the activation, an optional second layer, the output projection to one score
per behaviour, and the (online-softmax or plain) weighted sum of the value tile. Neither
[B, L, 4D] nor [B, L, H] is ever written to memory; the weights stay in registers.

Dice in training mode needs the batch mean/variance of each hidden layer's
pre-activations over all valid behaviours: a statistics pass per Dice layer
(``_din_stats``, same tiling, writes per-row partial sums [B, H]) runs first, and the
running statistics are updated exactly as the reference does. In inference Dice uses the
running statistics.

Backward: the autograd function saves the inputs, the output, the per-row log-sum-exp
[B] of the scores (written by the pooling pass with softmax) and the Dice batch statistics
the forward used, and runs the fused Triton backward (``din_attention_backward.py``: one
pass per row, the MLP recomputed tile by tile on chip, no [B, L, H]; Dice in training adds
one statistics pass per such layer).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference.din_attention import HiddenLayer
from ..validation import KernelInputError
from .common import block_configs, load_tile, pow2, row_extent, row_layout, tile_rows

ACTIVATION_CODES = {"sigmoid": 0, "relu": 1, "prelu": 2, "dice": 3}


@triton.jit
def _activate(x, KIND: tl.constexpr, param, mean, rstd):
    """x [BLOCK_L, H]; param/mean/rstd [H] (PReLU slope or Dice alpha; Dice statistics)."""
    if KIND == 0:
        return tl.sigmoid(x)
    elif KIND == 1:
        return tl.maximum(x, 0.0)
    elif KIND == 2:
        return tl.where(x >= 0, x, param[None, :] * x)
    else:
        p = tl.sigmoid((x - mean[None, :]) * rstd[None, :])
        return p * x + (1.0 - p) * param[None, :] * x


@triton.jit
def _hidden_tile(k, q, wk, wd, pt, w2, b2, a1, m1, r1, a2, m2, r2,
                 ACT1: tl.constexpr, ACT2: tl.constexpr, TWO: tl.constexpr, STOP_AT: tl.constexpr):
    """Hidden activations of one key tile k [BLOCK_L, BLOCK_D]. STOP_AT = 1 / 2 returns the
    pre-activation of that layer (statistics passes); 0 returns the last layer's output."""
    pre = tl.dot(k, wk, input_precision="ieee") + tl.dot(k * q[None, :], wd, input_precision="ieee") + pt[None, :]
    if STOP_AT == 1:
        return pre
    h = _activate(pre, ACT1, a1, m1, r1)
    if TWO:
        pre = tl.dot(h, w2, input_precision="ieee") + b2[None, :]
        if STOP_AT == 2:
            return pre
        h = _activate(pre, ACT2, a2, m2, r2)
    return h


@triton.jit
def _load_vec(ptr, H, BLOCK_H: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    return tl.load(ptr + h, mask=h < H, other=0.0).to(tl.float32)


@triton.jit
def _load_mat(ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    return tl.load(ptr + r[:, None] * C + c[None, :], mask=(r < R)[:, None] & (c < C)[None, :],
                   other=0.0).to(tl.float32)


@triton.jit
def _load_mlp(wk_ptr, wd_ptr, a1_ptr, m1_ptr, r1_ptr, w2_ptr, b2_ptr, a2_ptr, m2_ptr, r2_ptr, wo_ptr, D, H1, H2,
              TWO: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H1: tl.constexpr, BLOCK_H2: tl.constexpr):
    """The attention MLP's weights as the fused forward and backward kernels keep them in
    registers (zero-padded blocks): wk, wd [BLOCK_D, BLOCK_H1]; per-layer slope/alpha, Dice
    mean and rstd; w2 [BLOCK_H1, BLOCK_H2], b2; the output weights wo of the last layer."""
    wk = _load_mat(wk_ptr, D, H1, BLOCK_D, BLOCK_H1)
    wd = _load_mat(wd_ptr, D, H1, BLOCK_D, BLOCK_H1)
    a1 = _load_vec(a1_ptr, H1, BLOCK_H1)
    m1 = _load_vec(m1_ptr, H1, BLOCK_H1)
    r1 = _load_vec(r1_ptr, H1, BLOCK_H1)
    w2 = _load_mat(w2_ptr, H1, H2, BLOCK_H1, BLOCK_H2)
    b2 = _load_vec(b2_ptr, H2, BLOCK_H2)
    a2 = _load_vec(a2_ptr, H2, BLOCK_H2)
    m2 = _load_vec(m2_ptr, H2, BLOCK_H2)
    r2 = _load_vec(r2_ptr, H2, BLOCK_H2)
    if TWO:
        wo = _load_vec(wo_ptr, H2, BLOCK_H2)
    else:
        wo = _load_vec(wo_ptr, H1, BLOCK_H1)
    return wk, wd, a1, m1, r1, w2, b2, a2, m2, r2, wo


@triton.jit
def _din_body(q_ptr, k_ptr, v_ptr, start_ptr, len_ptr, pt_ptr, wk_ptr, wd_ptr, w2_ptr, b2_ptr, wo_ptr,
              a1_ptr, m1_ptr, r1_ptr, a2_ptr, m2_ptr, r2_ptr, out_ptr, lse_ptr, stat_ptr, bo, D, DV, H1, H2,
              ACT1: tl.constexpr, ACT2: tl.constexpr, TWO: tl.constexpr, SOFTMAX: tl.constexpr,
              STAGE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              BLOCK_H1: tl.constexpr, BLOCK_H2: tl.constexpr):
    """STAGE 0: pooled output (and, with SOFTMAX, the row's log-sum-exp of the scores, which
    the fused backward uses to rebuild the weights without another pass);
    STAGE 1 / 2: per-row Σx and Σx² of layer STAGE's pre-activation."""
    b = tl.program_id(0)
    start, n = row_extent(start_ptr, len_ptr, b)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b * D + d, mask=d < D, other=0.0).to(tl.float32)
    pt = _load_vec(pt_ptr + b * H1, H1, BLOCK_H1)
    wk, wd, a1, m1, r1, w2, b2, a2, m2, r2, wo = _load_mlp(
        wk_ptr, wd_ptr, a1_ptr, m1_ptr, r1_ptr, w2_ptr, b2_ptr, a2_ptr, m2_ptr, r2_ptr, wo_ptr, D, H1, H2,
        TWO, BLOCK_D, BLOCK_H1, BLOCK_H2)
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    acc = tl.zeros([BLOCK_DV], tl.float32)
    if STAGE == 2:
        s1 = tl.zeros([BLOCK_H2], tl.float32)
    else:
        s1 = tl.zeros([BLOCK_H1], tl.float32)
    s2 = tl.zeros_like(s1)
    for t in range(0, n, BLOCK_L):
        j, valid, rows = tile_rows(start, n, t, BLOCK_L)
        k = load_tile(k_ptr, rows, valid, D, BLOCK_D)
        h = _hidden_tile(k, q, wk, wd, pt, w2, b2, a1, m1, r1, a2, m2, r2, ACT1, ACT2, TWO, STAGE)
        if STAGE == 0:
            s = tl.sum(h * wo[None, :], axis=1) + bo
            v = load_tile(v_ptr, rows, valid, DV, BLOCK_DV)
            if SOFTMAX:
                s = tl.where(valid, s, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=0))
                alpha = tl.exp(m - m_new)
                p = tl.exp(s - m_new)
                total = total * alpha + tl.sum(p, axis=0)
                acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
                m = m_new
            else:
                acc += tl.sum(tl.where(valid, s, 0.0)[:, None] * v, axis=0)
        else:
            h = tl.where(valid[:, None], h, 0.0)
            s1 += tl.sum(h, axis=0)
            s2 += tl.sum(h * h, axis=0)
    if STAGE == 0:
        if SOFTMAX:
            nonempty = total > 0
            acc = tl.where(nonempty, acc / tl.where(nonempty, total, 1.0), 0.0)
            tl.store(lse_ptr + b, tl.where(nonempty, m + tl.log(tl.where(nonempty, total, 1.0)), 0.0))
        tl.store(out_ptr + b * DV + dv, acc.to(out_ptr.dtype.element_ty), mask=dv < DV)
    else:
        if STAGE == 2:
            hh = tl.arange(0, BLOCK_H2)
            blk = BLOCK_H2
        else:
            hh = tl.arange(0, BLOCK_H1)
            blk = BLOCK_H1
        tl.store(stat_ptr + b * 2 * blk + hh, s1)
        tl.store(stat_ptr + b * 2 * blk + blk + hh, s2)


_din_kernel = triton.autotune(configs=block_configs(blocks=(16, 32, 64), warps=(4, 8)),
                              key=["D", "DV", "H1", "H2", "STAGE"])(_din_body)


def _dice_stats(layer: HiddenLayer, sums: Tensor, squares: Tensor, count: int):
    """Batch mean and biased variance of one Dice layer (reference semantics), and the
    running-statistics update the reference performs in training."""
    if count == 0:
        return torch.zeros_like(sums), torch.ones_like(sums)
    mean = sums / count
    var = (squares / count - mean * mean).clamp_min(0.0)
    if layer.running_mean is not None:
        with torch.no_grad():
            layer.running_mean.lerp_(mean.to(layer.running_mean.dtype), layer.momentum)
            layer.running_var.lerp_((var * (count / max(count - 1, 1))).to(layer.running_var.dtype), layer.momentum)
    return mean, var


def kernel_weights(query: Tensor, hidden: Sequence[HiddenLayer]) -> dict:
    """The MLP as the fused kernels take it, all fp32 and contiguous: ``wk`` = Wb − Wc and
    ``wd`` [D, H1], ``pt`` [B, H1] = q (Wa + Wc) + b1, ``w2``/``b2`` (a dummy for one layer),
    per layer ``params[i]`` = {a: PReLU slope or Dice alpha, m: Dice mean, r: Dice rstd}
    (Dice in inference: from the running statistics; in training filled in by the forward's
    statistics passes), the widths ``h1``, ``h2``, ``two`` and the ``blocks``/``acts`` meta."""
    dim = query.shape[1]
    f32 = dict(device=query.device, dtype=torch.float32)
    first = hidden[0]
    w1 = first.weight.float()
    two = len(hidden) == 2
    h1 = w1.shape[1]
    h2 = hidden[1].weight.shape[1] if two else 1
    dummy = torch.zeros(max(h1, h2, 1), **f32)
    params = [dict(a=dummy, m=dummy, r=dummy) for _ in range(2)]
    for i, layer in enumerate(hidden):
        if layer.activation == "prelu":
            params[i]["a"] = layer.prelu_weight.float().contiguous()
        if layer.activation == "dice":
            params[i]["a"] = layer.dice_alpha.float().contiguous()
            if not layer.training:
                params[i]["m"] = layer.running_mean.float().contiguous()
                params[i]["r"] = torch.rsqrt(layer.running_var.float() + layer.eps).contiguous()
    return dict(
        wk=(w1[dim:2 * dim] - w1[2 * dim:3 * dim]).contiguous(), wd=w1[3 * dim:].contiguous(),
        pt=(query.float() @ (w1[:dim] + w1[2 * dim:3 * dim]) + first.bias.float()).contiguous(),
        w2=hidden[1].weight.float().contiguous() if two else dummy,
        b2=hidden[1].bias.float().contiguous() if two else dummy,
        params=params, dummy=dummy, h1=h1, h2=h2, two=two,
        blocks=dict(BLOCK_D=pow2(dim), BLOCK_H1=pow2(h1), BLOCK_H2=pow2(h2)),
        acts=dict(ACT1=ACTIVATION_CODES[first.activation], ACT2=ACTIVATION_CODES[hidden[-1].activation] if two else 0,
                  TWO=two))


def _forward(query: Tensor, keys: Tensor, values: Tensor, lengths: Tensor, offsets: Optional[Tensor],
             hidden: Sequence[HiddenLayer], out_weight: Tensor, out_bias: Tensor, use_softmax: bool):
    """Run the statistics passes (Dice in training) and the fused pooling pass; returns the
    pooled output [B, Dv], the per-row log-sum-exp of the scores [B] (fp32; zeros without
    softmax or for empty rows) and, per layer, the batch statistics (mean [H], rstd [H],
    count of valid behaviours) of a Dice layer in training, else None."""
    flat_k, starts, lens, _ = row_layout(keys, lengths, offsets)
    flat_v, _, _, _ = row_layout(values, lengths, offsets)
    batch, dim = query.shape
    dim_v = flat_v.shape[1]
    f32 = dict(device=query.device, dtype=torch.float32)
    q32 = query.float().contiguous()
    w = kernel_weights(query, hidden)
    params, h1, h2 = w["params"], w["h1"], w["h2"]
    blocks = dict(w["blocks"], BLOCK_DV=pow2(dim_v, 1))
    out = torch.zeros(batch, dim_v, device=query.device, dtype=query.dtype)
    lse = torch.zeros(batch, **f32)
    dice_stats = [None] * len(hidden)
    if batch == 0:
        return out, lse, dice_stats
    count = int(lens.sum())

    def launch(stage: int, out_buf: Tensor, stat_buf: Tensor) -> None:
        _din_kernel[(batch,)](q32, flat_k, flat_v, starts, lens, w["pt"], w["wk"], w["wd"], w["w2"], w["b2"],
                              out_weight.float().contiguous(), params[0]["a"], params[0]["m"], params[0]["r"],
                              params[1]["a"], params[1]["m"], params[1]["r"], out_buf, lse, stat_buf,
                              float(out_bias), dim, dim_v, h1, h2, STAGE=stage, SOFTMAX=use_softmax,
                              **w["acts"], **blocks)

    for i, layer in enumerate(hidden):
        if layer.activation == "dice" and layer.training:
            width, blk = (h1, blocks["BLOCK_H1"]) if i == 0 else (h2, blocks["BLOCK_H2"])
            stats = torch.zeros(batch, 2, blk, **f32)
            launch(i + 1, out, stats)
            totals = stats.sum(0)[:, :width]
            mean, var = _dice_stats(layer, totals[0], totals[1], count)
            params[i]["m"] = mean.contiguous()
            params[i]["r"] = torch.rsqrt(var + layer.eps).contiguous()
            dice_stats[i] = (params[i]["m"], params[i]["r"], count)
    launch(0, out, w["dummy"])
    return out, lse, dice_stats


class _DinAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, keys, values, lengths, offsets, spec, *tensors):
        hidden, out_weight, out_bias = _unpack(spec, tensors)
        out, lse, dice_stats = _forward(query, keys, values, lengths, offsets, hidden, out_weight, out_bias,
                                        spec["softmax"])
        ctx.spec = spec
        ctx.dice_stats = dice_stats
        ctx.offsets = offsets
        ctx.save_for_backward(query, keys, values, lengths, out, lse, *tensors)
        return out

    @staticmethod
    def backward(ctx, dout):
        query, keys, values, lengths, out, lse, *tensors = ctx.saved_tensors
        spec = ctx.spec
        hidden, out_weight, out_bias = _unpack(spec, tensors)
        # imported here: that module builds on this one's jit helpers
        from .din_attention_backward import din_attention_backward
        dq, dk, dv, layer_grads, d_wo, d_bo = din_attention_backward(
            dout, query, keys, values, lengths, ctx.offsets, out, lse, hidden, out_weight, out_bias,
            spec["softmax"], spec["alias"], ctx.dice_stats)
        flat: List[Optional[Tensor]] = []
        for grads in layer_grads:
            flat += [grads[s] if s in grads else None for s in _SLOTS]     # running statistics: None
        # aliased values: the value gradient is already inside dk (one tensor, passed twice)
        return (dq, dk, dv, None, None, None, *flat, d_wo, d_bo)


_SLOTS = ("weight", "bias", "prelu_weight", "dice_alpha", "running_mean", "running_var")


def _pack(hidden: Sequence[HiddenLayer], out_weight: Tensor, out_bias: Tensor, use_softmax: bool):
    spec = {"softmax": use_softmax, "layers": [dataclasses.replace(layer, **{s: None for s in _SLOTS})
                                               for layer in hidden]}
    tensors = [getattr(layer, s) for layer in hidden for s in _SLOTS] + [out_weight, out_bias]
    spec["running"] = [(layer.running_mean, layer.running_var) for layer in hidden]
    return spec, tensors


def _unpack(spec, tensors):
    hidden = []
    for i, layer in enumerate(spec["layers"]):
        values = dict(zip(_SLOTS, tensors[i * len(_SLOTS):(i + 1) * len(_SLOTS)]))
        # running statistics are buffers updated in place: use the live tensors
        values["running_mean"], values["running_var"] = spec["running"][i]
        hidden.append(dataclasses.replace(layer, **values))
    return hidden, tensors[-2], tensors[-1]


def din_attention_triton(query: Tensor, keys: Tensor, lengths: Tensor, offsets: Optional[Tensor],
                         hidden: Sequence[HiddenLayer], out_weight: Tensor, out_bias: Tensor,
                         values: Optional[Tensor], use_softmax: bool) -> Tensor:
    """Same contract as kernels.din_attention (inputs already validated)."""
    if len(hidden) > 2:
        raise KernelInputError(f"the Triton DIN kernel supports one or two hidden layers, got {len(hidden)}")
    for layer in hidden:
        if layer.activation == "dice" and not layer.training and layer.running_mean is None:
            raise KernelInputError("Dice in inference needs running_mean / running_var")
    spec, tensors = _pack(hidden, out_weight, out_bias, use_softmax)
    spec["alias"] = values is None or values is keys   # the fused backward then writes one gradient
    return _DinAttention.apply(query, keys, keys if values is None else values, lengths, offsets, spec, *tensors)
