"""Fused Triton backward for op 1 (DIN activation-unit attention).

Per history row b (query q [D], behaviours k_j [D], values v_j [Dv], upstream gradient
g = dL/dpooled_b [Dv]) the kernel walks the row in BLOCK_L tiles, reads each key and value
tile once, and recomputes the MLP on chip as the forward does (same weights and activation
helper, keeping the intermediates):

    pre1_j = k_j Wk + (q ⊙ k_j) Wd + pt_b          Wk = Wb − Wc, pt_b = q (Wa + Wc) + b1
    s_j    = MLP(pre1_j),  w_j = s_j (DIN paper) or exp(s_j − lse_b) (softmax)

The softmax weights come from the per-row log-sum-exp the forward kernel saves, and
Σ_j w_j ⟨g, v_j⟩ = ⟨g, pooled_b⟩ from the saved output, so one pass over the row suffices:

    ds_j = ⟨g, v_j⟩ (raw)   or   w_j (⟨g, v_j⟩ − ⟨g, pooled_b⟩) (softmax);   dv_j = w_j g

ds is then pushed back through the output projection, the optional second layer and the
activations to d(pre1) [BLOCK_L, H1], still on chip, which gives per behaviour

    dk_j = d(pre1_j) Wk^T + (d(pre1_j) Wd^T) ⊙ q      (+ w_j g when values are the keys)

and per row dq_b = Σ_j (d(pre1_j) Wd^T) ⊙ k_j, dpt_b = Σ_j d(pre1_j) and
G_b = Σ_j k_j^T d(pre1_j) [D, H1]. The [B, 4D, H1] first-layer gradient is never formed:
with q ⊙ k_j the input of Wd, Σ_j (q ⊙ k_j)^T d(pre1_j) = diag(q) G_b, so

    dWb = Σ_b G_b,  dWd = Σ_b diag(q_b) G_b,  dWa = Q^T dPT,  dWc = dWa − dWb,  db1 = Σ_b dpt_b,
    dq  = dq_local + dPT (Wa + Wc)^T                      (dPT = [dpt_b] [B, H1])

Weight-gradient reduction: deterministic partials, not atomics. The grid has P programs
(P = min(B, 4 × SM count) on a GPU; at most 2 under the interpreter, so that tests walk
several rows per program); program p handles rows p, p + P, ... and keeps its sums of
G_b, diag(q_b) G_b, the second layer's h1^T d(pre2), and the bias / slope / output-layer
vectors in registers, writing one partial per program that torch sums afterwards. So
the gradient buffers are [P, D, H1] and [P, H1, H2] (bounded by the GPU size, not by B or
L) plus [B, D] and [B, H1] per-row terms; nothing of size [B, L, H] or [B, L, 4D] exists.
Atomics would save that small buffer but make weight gradients run-to-run nondeterministic.

All arithmetic is fp32 whatever the input dtype; gradients are returned in each input's
dtype (dk / dv are written directly in it).

Dice in *training* normalises with batch statistics (mean, biased var over all valid
behaviours of the batch), which couple every row: with fixed statistics the kernel gives
the direct gradient, and the statistics add dL/dx_j += (dL/dmean + 2 dL/dvar (x_j − mean)) / n
on valid positions, where dL/dmean = Σ_j dL/dy_j ∂y_j/∂mean and likewise for var (∂var/∂mean
is 0). Those sums need the whole batch's dL/dy at that layer first, so each such layer gets
a statistics pass (the same kernel with STATG set: recompute, back-propagate to the layer,
accumulate per-program partials of the two sums, write nothing else), last layer first
because layer 1's sums see layer 2's statistics term; then the full pass adds the terms
(EXTRA1 / EXTRA2). Cost: one extra read of keys and values per Dice-in-training layer.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference.din_attention import HiddenLayer
from .common import block_configs, interpreted, load_tile, pow2, row_extent, row_layout, store_tile, tile_rows
from .din_attention import _activate, _load_mlp, _load_vec, kernel_weights


@triton.jit
def _activate_grad(x, dy, KIND: tl.constexpr, param, mean, rstd):
    """Given pre-activation x and dL/dy [BLOCK_L, H] of y = act(x): dL/dx, and the
    per-element terms of dL/dparam (PReLU slope / Dice alpha; zeros otherwise)."""
    if KIND == 0:
        s = tl.sigmoid(x)
        return dy * s * (1.0 - s), tl.zeros_like(x)
    elif KIND == 1:
        return tl.where(x > 0, dy, 0.0), tl.zeros_like(x)
    elif KIND == 2:
        # torch's prelu: slope below and at zero
        return tl.where(x > 0, dy, param[None, :] * dy), tl.where(x > 0, 0.0, x * dy)
    else:
        # y = x (α + (1 − α) p), p = σ((x − mean) rstd), statistics held fixed here (batch
        # statistics in training: their share comes from _dice_stat_grad / _stat_extra)
        p = tl.sigmoid((x - mean[None, :]) * rstd[None, :])
        a = param[None, :]
        return dy * (a + (1.0 - a) * (p + x * p * (1.0 - p) * rstd[None, :])), dy * x * (1.0 - p)


@triton.jit
def _dice_stat_grad(x, dy, alpha, mean, rstd):
    """Per-element terms [BLOCK_L, H] of dL/dmean and dL/dvar of a Dice layer that uses batch
    statistics: with z = (x − mean) rstd and rstd = (var + eps)^(−1/2),
    ∂y/∂mean = −rstd · t and ∂y/∂var = −½ (x − mean) rstd³ · t, t = x (1 − α) p (1 − p)."""
    p = tl.sigmoid((x - mean[None, :]) * rstd[None, :])
    t = dy * x * (1.0 - alpha[None, :]) * p * (1.0 - p)
    r = rstd[None, :]
    return -t * r, -0.5 * t * (x - mean[None, :]) * r * r * r


@triton.jit
def _stat_extra(x, valid, mean, c_ptr, H, BLOCK_H: tl.constexpr):
    """Gradient reaching a pre-activation x [BLOCK_L, H] through its layer's batch
    statistics: (dL/dmean + 2 dL/dvar (x − mean)) / n on valid rows; c_ptr holds
    [dL/dmean / n, 2 dL/dvar / n] ([2, H])."""
    c0 = _load_vec(c_ptr, H, BLOCK_H)
    c1 = _load_vec(c_ptr + H, H, BLOCK_H)
    return tl.where(valid[:, None], c0[None, :] + c1[None, :] * (x - mean[None, :]), 0.0)


@triton.jit
def _layer_grad(pre, dh, valid, param, mean, rstd, e_ptr, H, ACT: tl.constexpr, STATS: tl.constexpr,
                EXTRA: tl.constexpr, BLOCK_H: tl.constexpr):
    """Backward through one hidden layer's activation, tile [BLOCK_L, H]: (dL/dpre, the tile's
    Σ of the slope / alpha gradient [H], and with STATS its Σ dL/dmean and Σ dL/dvar [H] for a
    Dice statistics pass, zeros otherwise). EXTRA adds the gradient through the layer's batch
    statistics (coefficients at e_ptr)."""
    if STATS:
        gm, gv = _dice_stat_grad(pre, dh, param, mean, rstd)
        tile_m = tl.sum(gm, axis=0)
        tile_v = tl.sum(gv, axis=0)
    else:
        tile_m = tl.zeros([BLOCK_H], tl.float32)
        tile_v = tl.zeros([BLOCK_H], tl.float32)
    dpre, dparam = _activate_grad(pre, dh, ACT, param, mean, rstd)
    if EXTRA:
        dpre += _stat_extra(pre, valid, mean, e_ptr, H, BLOCK_H)
    return dpre, tl.sum(dparam, axis=0), tile_m, tile_v


@triton.jit
def _din_bwd_body(q_ptr, k_ptr, v_ptr, start_ptr, len_ptr, pt_ptr, wk_ptr, wd_ptr, w2_ptr, b2_ptr, wo_ptr,
                  a1_ptr, m1_ptr, r1_ptr, a2_ptr, m2_ptr, r2_ptr, out_ptr, lse_ptr, dout_ptr,
                  dq_ptr, dk_ptr, dv_ptr, dpt_ptr, gk_ptr, gd_ptr, gw2_ptr, ga1_ptr, gb2_ptr, ga2_ptr, gwo_ptr,
                  gbo_ptr, e1_ptr, e2_ptr, sg_ptr, bo, B, D, DV, H1, H2,
                  ACT1: tl.constexpr, ACT2: tl.constexpr, TWO: tl.constexpr, SOFTMAX: tl.constexpr,
                  ALIAS: tl.constexpr, EXTRA1: tl.constexpr, EXTRA2: tl.constexpr, STATG: tl.constexpr,
                  BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                  BLOCK_H1: tl.constexpr, BLOCK_H2: tl.constexpr):
    """Program p: rows p, p + P, ...; per-row dq_local / dpt, per-behaviour dk / dv, and this
    program's partial weight gradients (full, zero-padded blocks; the host slices them).

    Dice in training: EXTRA1 / EXTRA2 add the gradient through layer 1's / 2's batch
    statistics (coefficients at e1_ptr / e2_ptr). STATG = 1 / 2 is a statistics pass: it
    only accumulates this program's Σ dL/dmean and Σ dL/dvar of that layer into sg_ptr
    ([P, 2, BLOCK_H]) and writes nothing else; STATG = 0 is the full pass."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    c1 = tl.arange(0, BLOCK_H1)
    c2 = tl.arange(0, BLOCK_H2)
    wk, wd, a1, m1, r1, w2, b2, a2, m2, r2, wo = _load_mlp(
        wk_ptr, wd_ptr, a1_ptr, m1_ptr, r1_ptr, w2_ptr, b2_ptr, a2_ptr, m2_ptr, r2_ptr, wo_ptr, D, H1, H2,
        TWO, BLOCK_D, BLOCK_H1, BLOCK_H2)
    gwo = tl.zeros_like(wo)
    gk = tl.zeros([BLOCK_D, BLOCK_H1], tl.float32)
    gd = tl.zeros([BLOCK_D, BLOCK_H1], tl.float32)
    gw2 = tl.zeros([BLOCK_H1, BLOCK_H2], tl.float32)
    ga1 = tl.zeros([BLOCK_H1], tl.float32)
    gb2 = tl.zeros([BLOCK_H2], tl.float32)
    ga2 = tl.zeros([BLOCK_H2], tl.float32)
    gbo = tl.zeros([], tl.float32)
    if STATG == 2:
        sgm = tl.zeros([BLOCK_H2], tl.float32)
    else:
        sgm = tl.zeros([BLOCK_H1], tl.float32)
    sgv = tl.zeros_like(sgm)
    for b in range(pid, B, nprog):
        start, n = row_extent(start_ptr, len_ptr, b)
        q = tl.load(q_ptr + b * D + d, mask=d < D, other=0.0).to(tl.float32)
        pt = _load_vec(pt_ptr + b * H1, H1, BLOCK_H1)
        g = tl.load(dout_ptr + b * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
        if SOFTMAX:
            out = tl.load(out_ptr + b * DV + dv, mask=dv < DV, other=0.0).to(tl.float32)
            delta = tl.sum(out * g, axis=0)             # Σ_j w_j ⟨g, v_j⟩
            lse = tl.load(lse_ptr + b)
        dq = tl.zeros([BLOCK_D], tl.float32)
        dpt = tl.zeros([BLOCK_H1], tl.float32)
        grow = tl.zeros([BLOCK_D, BLOCK_H1], tl.float32)
        for t in range(0, n, BLOCK_L):
            j, valid, rows = tile_rows(start, n, t, BLOCK_L)
            k = load_tile(k_ptr, rows, valid, D, BLOCK_D)
            v = load_tile(v_ptr, rows, valid, DV, BLOCK_DV)
            # recompute the forward tile (same ops as _hidden_tile, keeping the intermediates)
            pre1 = tl.dot(k, wk, input_precision="ieee") + tl.dot(k * q[None, :], wd, input_precision="ieee") \
                + pt[None, :]
            h = _activate(pre1, ACT1, a1, m1, r1)
            if TWO:
                h1 = h
                pre2 = tl.dot(h1, w2, input_precision="ieee") + b2[None, :]
                h = _activate(pre2, ACT2, a2, m2, r2)
            s = tl.sum(h * wo[None, :], axis=1) + bo
            dw = tl.sum(v * g[None, :], axis=1)         # dL/dw_j
            if SOFTMAX:
                w = tl.where(valid, tl.exp(s - lse), 0.0)
                ds = w * (dw - delta)
            else:
                w = tl.where(valid, s, 0.0)
                ds = tl.where(valid, dw, 0.0)
            # ds is 0 on invalid rows, so every gradient below ignores them
            gwo += tl.sum(ds[:, None] * h, axis=0)
            gbo += tl.sum(ds, axis=0)
            dh = ds[:, None] * wo[None, :]
            if TWO:
                dpre2, da2, tile_m, tile_v = _layer_grad(pre2, dh, valid, a2, m2, r2, e2_ptr, H2, ACT2, STATG == 2,
                                                         EXTRA2, BLOCK_H2)
                if STATG == 2:
                    sgm += tile_m
                    sgv += tile_v
                ga2 += da2
                gb2 += tl.sum(dpre2, axis=0)
                gw2 += tl.dot(tl.trans(h1), dpre2, input_precision="ieee")
                dh = tl.dot(dpre2, tl.trans(w2), input_precision="ieee")
            dpre1, da1, tile_m, tile_v = _layer_grad(pre1, dh, valid, a1, m1, r1, e1_ptr, H1, ACT1, STATG == 1, EXTRA1,
                                                     BLOCK_H1)
            if STATG == 1:
                sgm += tile_m
                sgv += tile_v
            ga1 += da1
            dpt += tl.sum(dpre1, axis=0)
            grow += tl.dot(tl.trans(k), dpre1, input_precision="ieee")
            dkq = tl.dot(dpre1, tl.trans(wd), input_precision="ieee")     # dL/d(q ⊙ k_j)
            dq += tl.sum(dkq * k, axis=0)
            dk = tl.dot(dpre1, tl.trans(wk), input_precision="ieee") + dkq * q[None, :]
            if STATG == 0:
                if ALIAS:
                    dk += w[:, None] * g[None, :]       # values are the keys: one write
                else:
                    store_tile(dv_ptr, rows, valid, w[:, None] * g[None, :], DV, BLOCK_DV)
                store_tile(dk_ptr, rows, valid, dk, D, BLOCK_D)
        if STATG == 0:
            tl.store(dq_ptr + b * D + d, dq, mask=d < D)
            tl.store(dpt_ptr + b * H1 + c1, dpt, mask=c1 < H1)
        gk += grow
        gd += q[:, None] * grow
    if STATG != 0:
        if STATG == 2:
            cs = c2
            blk = BLOCK_H2
        else:
            cs = c1
            blk = BLOCK_H1
        tl.store(sg_ptr + pid * 2 * blk + cs, sgm)
        tl.store(sg_ptr + pid * 2 * blk + blk + cs, sgv)
    else:
        mat1 = d[:, None] * BLOCK_H1 + c1[None, :]
        tl.store(gk_ptr + pid * BLOCK_D * BLOCK_H1 + mat1, gk)
        tl.store(gd_ptr + pid * BLOCK_D * BLOCK_H1 + mat1, gd)
        tl.store(gw2_ptr + pid * BLOCK_H1 * BLOCK_H2 + c1[:, None] * BLOCK_H2 + c2[None, :], gw2)
        tl.store(ga1_ptr + pid * BLOCK_H1 + c1, ga1)
        tl.store(gb2_ptr + pid * BLOCK_H2 + c2, gb2)
        tl.store(ga2_ptr + pid * BLOCK_H2 + c2, ga2)
        if TWO:
            tl.store(gwo_ptr + pid * BLOCK_H2 + c2, gwo)
        else:
            tl.store(gwo_ptr + pid * BLOCK_H1 + c1, gwo)
        tl.store(gbo_ptr + pid, gbo)


# every output is stored (never accumulated), so autotune's repeated launches are harmless
_din_bwd_kernel = triton.autotune(configs=block_configs(blocks=(16, 32, 64), warps=(4, 8)),
                                  key=["D", "DV", "H1", "H2", "STATG"])(_din_bwd_body)


def _programs(batch: int, device: torch.device) -> int:
    """Grid size P: enough programs to fill the GPU, few enough that the per-program weight
    partials stay small; 2 under the interpreter (exercises the multi-row loop)."""
    if device.type == "cuda" and not interpreted():
        return max(1, min(batch, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(batch, 2))


def _layer_grads(layer: HiddenLayer, weight: Tensor, bias: Tensor, slope: Tensor) -> Dict[str, Optional[Tensor]]:
    """One layer's gradients in its tensors' dtypes; ``slope`` [H] is the gradient of the
    PReLU slope or the Dice alpha, whichever the activation uses (the other, if present, gets zeros)."""
    def param(name: str, used: bool) -> Optional[Tensor]:
        t = getattr(layer, name)
        return None if t is None else (slope if used else torch.zeros_like(slope)).to(t.dtype)
    return {"weight": weight.to(layer.weight.dtype), "bias": bias.to(layer.bias.dtype),
            "prelu_weight": param("prelu_weight", layer.activation == "prelu"),
            "dice_alpha": param("dice_alpha", layer.activation == "dice")}


def din_attention_backward(dout: Tensor, query: Tensor, keys: Tensor, values: Tensor, lengths: Tensor,
                           offsets: Optional[Tensor], out: Tensor, lse: Tensor, hidden: Sequence[HiddenLayer],
                           out_weight: Tensor, out_bias: Tensor, use_softmax: bool, alias: bool,
                           dice_stats: Optional[Sequence[Optional[Tuple[Tensor, Tensor, int]]]] = None
                           ) -> Tuple[Tensor, Tensor, Optional[Tensor], List[Dict[str, Optional[Tensor]]], Tensor, Tensor]:
    """Gradients of op 1 from the saved forward.

    Args:
        dout: [B, Dv] upstream gradient; query [B, D]; keys / values padded [B, L, D] / [B, L, Dv]
            (with lengths [B]) or jagged [N, D] / [N, Dv] (with offsets [B + 1]); out [B, Dv] and
            lse [B] from the forward; alias: values are the keys (dv is folded into dk);
            dice_stats: per layer, (mean [H], rstd [H], count) of a Dice layer in training as
            the forward used them (None otherwise).
    Returns:
        (dq [B, D], dk like keys, dv like values or None when alias, per layer
        {"weight", "bias", "prelu_weight", "dice_alpha"} gradients (None where the layer has
        no such tensor), d out_weight [H_last], d out_bias []).
    """
    if len(hidden) > 2:
        raise ValueError(f"the fused DIN backward covers one or two hidden layers, got {len(hidden)}")
    flat_k, starts, lens, _ = row_layout(keys, lengths, offsets)
    flat_v = flat_k if alias else row_layout(values, lengths, offsets)[0]
    batch, dim = query.shape
    dim_v = flat_v.shape[1]
    dev = query.device
    f32 = dict(device=dev, dtype=torch.float32)
    w = kernel_weights(query, hidden)
    h1, h2, two, blocks = w["h1"], w["h2"], w["two"], w["blocks"]
    dice_stats = list(dice_stats or [None] * len(hidden))
    for i, stats in enumerate(dice_stats):
        if stats is not None:
            w["params"][i]["m"], w["params"][i]["r"] = stats[0].float().contiguous(), stats[1].float().contiguous()
    bd, bh1, bh2 = blocks["BLOCK_D"], blocks["BLOCK_H1"], blocks["BLOCK_H2"]
    # aliasing adds w_j g to dk in the kernel: the value tile must have the key tile's width
    blocks = dict(blocks, BLOCK_DV=bd if alias else pow2(dim_v, 1))
    nprog = _programs(batch, dev)
    dq = torch.zeros(batch, dim, **f32)
    dpt = torch.zeros(batch, h1, **f32)
    dk = torch.zeros(flat_k.shape, device=dev, dtype=keys.dtype)
    dv = dk if alias else torch.zeros(flat_v.shape, device=dev, dtype=values.dtype)
    gk = torch.zeros(nprog, bd, bh1, **f32)
    gd = torch.zeros(nprog, bd, bh1, **f32)
    gw2 = torch.zeros(nprog, bh1, bh2, **f32)
    ga1 = torch.zeros(nprog, bh1, **f32)
    gb2 = torch.zeros(nprog, bh2, **f32)
    ga2 = torch.zeros(nprog, bh2, **f32)
    gwo = torch.zeros(nprog, bh2 if two else bh1, **f32)
    gbo = torch.zeros(nprog, **f32)
    p1, p2 = w["params"]
    extras = [w["dummy"], w["dummy"]]   # [dL/dmean / n, 2 dL/dvar / n] per Dice-in-training layer

    def launch(statg: int, sg: Tensor) -> None:
        _din_bwd_kernel[(nprog,)](
            query.float().contiguous(), flat_k, flat_v, starts, lens, w["pt"], w["wk"], w["wd"], w["w2"], w["b2"],
            out_weight.float().contiguous(), p1["a"], p1["m"], p1["r"], p2["a"], p2["m"], p2["r"],
            out.contiguous(), lse.contiguous(), dout.contiguous(), dq, dk, dv, dpt, gk, gd, gw2, ga1, gb2, ga2,
            gwo, gbo, extras[0], extras[1], sg, float(out_bias), batch, dim, dim_v, h1, h2, SOFTMAX=use_softmax,
            ALIAS=alias, EXTRA1=extras[0] is not w["dummy"], EXTRA2=extras[1] is not w["dummy"], STATG=statg,
            **w["acts"], **blocks)

    if batch:
        # Dice in training: a statistics pass per such layer, last layer first (layer 1's
        # dL/dmean, dL/dvar see layer 2's statistics term), then the full pass
        for i in reversed(range(len(hidden))):
            if dice_stats[i] is None:
                continue
            width, blk = (h1, bh1) if i == 0 else (h2, bh2)
            sg = torch.zeros(nprog, 2, blk, **f32)
            launch(i + 1, sg)
            d_mean, d_var = sg.sum(0)[:, :width]
            count = dice_stats[i][2]
            scale = 1.0 / count if count else 0.0     # no valid behaviour: no statistics term
            extras[i] = torch.cat([d_mean * scale, 2.0 * d_var * scale]).contiguous()
        launch(0, w["dummy"])

    # assemble the weight gradients from [P, ...] partials and [B, H1] per-row terms
    w1 = hidden[0].weight.float()
    q32 = query.float()
    g_k = gk.sum(0)[:dim, :h1]
    d_pt_w = q32.t() @ dpt                                        # d(Wa + Wc) [D, H1]
    grads: List[Dict[str, Optional[Tensor]]] = []
    first = dict(weight=torch.cat([d_pt_w, g_k, d_pt_w - g_k, gd.sum(0)[:dim, :h1]]), bias=dpt.sum(0))
    dq += dpt @ (w1[:dim] + w1[2 * dim:3 * dim]).t()
    layer_terms = [first]
    if two:
        layer_terms.append(dict(weight=gw2.sum(0)[:h1, :h2], bias=gb2.sum(0)[:h2]))
    for layer, terms, ga, width in zip(hidden, layer_terms, (ga1, ga2), (h1, h2)):
        grads.append(_layer_grads(layer, terms["weight"], terms["bias"], ga.sum(0)[:width]))
    d_wo = gwo.sum(0)[:h2 if two else h1].to(out_weight.dtype)
    d_bo = gbo.sum().reshape(out_bias.shape).to(out_bias.dtype)
    return (dq.to(query.dtype), dk.reshape(keys.shape), None if alias else dv.reshape(values.shape),
            grads, d_wo, d_bo)
