"""Reference for op 1: DIN's local activation unit + weighted pooling.

score_j = MLP([q, k_j, q - k_j, q * k_j]) and pooled = sum_j w_j v_j, with w = score (DIN
paper: no normalisation) or softmax(score) (official code). The first layer never builds
the [B, L, 4D] concatenation: with W1 = [Wa; Wb; Wc; Wd] (row blocks for q, k, q-k, q*k),

    pre = q (Wa + Wc) + k (Wb - Wc) + (q * k) Wd + b1
        = q (Wa + Wc) + b1  +  k [(Wb - Wc) + diag(q) Wd],

one per-target term plus one batched GEMM of the keys with a per-row [D, H1] matrix (see
docs/kernels.md). ``din_attention_naive`` is the FuxiCTR form that does build the [B, L, 4D]
concatenation: the eager baseline tests and benchmarks compare against (one copy of it).

``activate`` is the one PyTorch dispatch of the attention MLP's activations (the Triton
kernels evaluate the same formulas on chip); ``apply_activation`` adds Dice's batch
statistics and running-average update, and is what the models' ``Dice`` module runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class HiddenLayer:
    """One hidden layer of the attention MLP: ``act(x @ weight + bias)``.

    weight: [H_in, H_out] (for the first layer H_in = 4D, rows in the order q, k, q-k, q*k)
    bias:   [H_out]
    activation: "sigmoid" | "relu" | "prelu" | "dice"
    prelu_weight: [H_out] (prelu) or dice_alpha: [H_out] (dice)
    running_mean / running_var: [H_out] Dice statistics; updated in place when ``training``
    """

    weight: Tensor
    bias: Tensor
    activation: str = "sigmoid"
    prelu_weight: Optional[Tensor] = None
    dice_alpha: Optional[Tensor] = None
    running_mean: Optional[Tensor] = None
    running_var: Optional[Tensor] = None
    training: bool = False
    momentum: float = 0.01
    eps: float = 1e-9


ACTIVATIONS = ("sigmoid", "relu", "prelu", "dice")


def activate(x: Tensor, kind: str, slope: Optional[Tensor] = None, alpha: Optional[Tensor] = None,
             mean: Optional[Tensor] = None, var: Optional[Tensor] = None, eps: float = 1e-9) -> Tensor:
    """x [..., H] → same shape. sigmoid | relu | prelu (``slope`` [H]) | dice (``alpha`` [H],
    statistics ``mean``, ``var`` [H] given): Dice(s) = p·s + (1 − p)·α·s,
    p = σ((s − mean) / sqrt(var + eps)) (DIN eq. 9)."""
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "prelu":
        # the native op (one pass, fused backward) on [rows, H]: F.prelu's channel dim is dim 1
        return F.prelu(x.reshape(-1, x.shape[-1]), slope.to(x.dtype)).reshape(x.shape)
    if kind == "dice":
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + eps))
        return p * x + (1 - p) * alpha * x
    raise ValueError(f"unknown activation {kind!r}; expected one of {ACTIVATIONS}")


def apply_activation(x: Tensor, layer: HiddenLayer, valid: Optional[Tensor] = None) -> Tensor:
    """Activation of ``x`` [..., H] as ``layer`` describes it (any object with HiddenLayer's
    activation fields); ``valid`` ([...] bool) selects the rows Dice takes batch statistics
    over in training (padding positions must not move the statistics). In training Dice
    normalises with the biased batch variance and moves the running statistics by
    ``momentum`` towards the batch mean and unbiased variance (BatchNorm's update)."""
    mean = var = None
    if layer.activation == "dice":
        if layer.training:
            rows = x[valid] if valid is not None else x.reshape(-1, x.shape[-1])
            if rows.shape[0] == 0:
                # no valid behaviour in the whole batch: nothing to normalise, statistics unchanged
                mean, var = x.new_zeros(x.shape[-1]), x.new_ones(x.shape[-1])
            else:
                mean = rows.mean(0)
                var = (rows - mean).pow(2).mean(0)          # biased, as BatchNorm normalises
                with torch.no_grad():
                    if layer.running_mean is not None:
                        n = rows.shape[0]
                        unbiased = var * (n / max(n - 1, 1))
                        layer.running_mean.lerp_(mean.detach().to(layer.running_mean.dtype), layer.momentum)
                        layer.running_var.lerp_(unbiased.detach().to(layer.running_var.dtype), layer.momentum)
        else:
            mean, var = layer.running_mean, layer.running_var
    return activate(x, layer.activation, layer.prelu_weight, layer.dice_alpha, mean, var, layer.eps)


def din_attention_scores(query: Tensor, keys: Tensor, mask: Tensor, hidden: Sequence[HiddenLayer],
                         out_weight: Tensor, out_bias: Tensor) -> Tensor:
    """Raw activation-unit scores [B, L] (padding positions are garbage; mask them).

    query [B, D], keys [B, L, D], mask [B, L] bool, out_weight [H_last], out_bias [].
    """
    d = query.shape[-1]
    w1 = hidden[0].weight
    wa, wb, wc, wd = w1[:d], w1[d:2 * d], w1[2 * d:3 * d], w1[3 * d:]
    per_target = query @ (wa + wc) + hidden[0].bias                        # [B, H1]
    # k(Wb - Wc) + (q * k)Wd = k [(Wb - Wc) + diag(q) Wd]: one per-row [D, H1] matrix and one
    # batched GEMM instead of two GEMMs plus a [B, L, D] product (half the FLOPs and traffic)
    key_proj = (wb - wc) + query.unsqueeze(-1) * wd                         # [B, D, H1]
    x = torch.baddbmm(per_target.unsqueeze(1), keys, key_proj)              # [B, L, H1]
    x = apply_activation(x, hidden[0], mask)
    for layer in hidden[1:]:
        x = apply_activation(x @ layer.weight + layer.bias, layer, mask)
    return x @ out_weight + out_bias                                        # [B, L]


def din_attention_padded(query: Tensor, keys: Tensor, lengths: Tensor, hidden: Sequence[HiddenLayer],
                         out_weight: Tensor, out_bias: Tensor, values: Optional[Tensor] = None,
                         use_softmax: bool = False) -> Tensor:
    """pooled [B, Dv] = sum_j w_j values[b, j]; values default to keys.

    Rows with length 0 pool to zeros (softmax over an empty row is defined as all-zero weights).
    """
    values = keys if values is None else values
    positions = torch.arange(keys.shape[1], device=keys.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)                   # [B, L]
    scores = din_attention_scores(query, keys, mask, hidden, out_weight, out_bias)
    if use_softmax:
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)             # empty rows → 0
    else:
        weights = scores * mask
    return torch.einsum("bl,bld->bd", weights.to(values.dtype), values)


def din_scores_naive(query: Tensor, keys: Tensor, mask: Tensor, hidden: Sequence[HiddenLayer],
                     out_weight: Tensor, out_bias: Tensor) -> Tensor:
    """The same scores [B, L] as ``din_attention_scores`` through the explicit [B, L, 4D]
    concatenation [q, k, q − k, q ⊙ k] (FuxiCTR's form; the eager baseline)."""
    q = query.unsqueeze(1).expand_as(keys)
    x = torch.cat([q, keys, q - keys, q * keys], dim=-1)                  # [B, L, 4D]
    for layer in hidden:
        x = apply_activation(x @ layer.weight + layer.bias, layer, mask)  # [B, L, H]
    return x @ out_weight + out_bias


def din_attention_naive(query: Tensor, keys: Tensor, lengths: Tensor, hidden: Sequence[HiddenLayer],
                        out_weight: Tensor, out_bias: Tensor, values: Optional[Tensor] = None,
                        use_softmax: bool = False) -> Tensor:
    """``din_attention_padded`` with the naive scorer: pooled [B, Dv] (benchmark baseline)."""
    values = keys if values is None else values
    mask = torch.arange(keys.shape[1], device=keys.device).unsqueeze(0) < lengths.unsqueeze(1)
    scores = din_scores_naive(query, keys, mask, hidden, out_weight, out_bias)
    if use_softmax:
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
    else:
        weights = scores * mask
    return torch.einsum("bl,bld->bd", weights.to(values.dtype), values)


def din_attention_candidates_padded(queries: Tensor, keys: Tensor, lengths: Tensor, hidden: Sequence[HiddenLayer],
                                    out_weight: Tensor, out_bias: Tensor, values: Optional[Tensor] = None,
                                    use_softmax: bool = False, max_elements: int = 1 << 18) -> Tensor:
    """M targets per history sharing it: pooled [B, M, Dv] from queries [B, M, D] and one
    padded history per row, keys [B, L, D] (values [B, L, Dv], default keys).

    ``pooled[b, m]`` equals ``din_attention_padded`` of the row (queries[b, m], keys[b]),
    but the keys are never repeated M times. With the first layer split as above,

        pre[m, l] = q_m (Wa + Wc) + b1 + k_l [(Wb − Wc) + diag(q_m) Wd]      (per candidate)
                  = k_l (Wb − Wc) + b1 + q_m [(Wa + Wc) + diag(k_l) Wd]      (per behaviour)

    and one GEMM per user gives every (candidate, behaviour, unit) pre-activation: either
    [L, D] × [D, M·H1] with a [D, H1] matrix per candidate, or [M, D] × [D, L·H1] with one
    per behaviour. The smaller of M and L picks the side whose matrices are built (M·D·H1
    or L·D·H1 elements, 1/L or 1/M of the GEMM's work); nothing of size M·L·D is built.
    The other side is taken in chunks so one [B, M, l, H] (or [B, L, m, H]) activation
    stays under ``max_elements``. The scores [B, M, L] are complete before the (softmax)
    weighting. Dice must be in eval mode (running statistics): the public op checks it.
    """
    values = keys if values is None else values
    users, length, d = keys.shape
    count = queries.shape[1]
    w1 = hidden[0].weight
    wa, wb, wc, wd = w1[:d], w1[d:2 * d], w1[2 * d:3 * d], w1[3 * d:]
    split = (wa + wc, wb - wc, wd)
    widest = max(layer.weight.shape[1] for layer in hidden)
    score_of = _scores_per_candidate if count <= length else _scores_per_behaviour
    # chunk of the built side: one [B, other side or D, chunk, widest] tensor under max_elements
    step = max(1, max_elements // max(1, users * widest * max(d, length if count <= length else count)))
    score = score_of(queries, keys, split, hidden, out_weight, out_bias, step)
    mask = torch.arange(length, device=keys.device).unsqueeze(0) < lengths.unsqueeze(1)   # [B, L]
    valid = mask.unsqueeze(1)
    if use_softmax:
        weights = torch.softmax(score.masked_fill(~valid, float("-inf")), dim=2).nan_to_num(0.0)
    else:
        weights = score * valid
    return torch.bmm(weights.to(values.dtype), values)                                    # [B, M, Dv]


def _mlp_tail(x: Tensor, hidden: Sequence[HiddenLayer], out_weight: Tensor, out_bias: Tensor) -> Tensor:
    """First-layer pre-activations [..., H1] → raw scores [...] (eval-mode activations)."""
    x = apply_activation(x, hidden[0])
    for layer in hidden[1:]:
        x = apply_activation(x @ layer.weight + layer.bias, layer)
    return x @ out_weight + out_bias


def _scores_per_candidate(queries, keys, split, hidden, out_weight, out_bias, step) -> Tensor:
    """[B, M, L] scores from one [D, H1] matrix per candidate: keys [B, L, D] × [B, D, m·H1]."""
    per_target, key_term, wd = split
    users, length, d = keys.shape
    units = per_target.shape[1]
    scores = []
    for start in range(0, queries.shape[1], step):
        q = queries[:, start:start + step]                                                # [B, m, D]
        m = q.shape[1]
        proj = torch.addcmul(key_term.unsqueeze(1), q.transpose(1, 2).unsqueeze(-1), wd.unsqueeze(1))  # [B, D, m, H1]
        x = torch.bmm(keys, proj.reshape(users, d, m * units)).reshape(users, length, m, units)
        x = x + (q @ per_target + hidden[0].bias).unsqueeze(1)                            # [B, L, m, H1]
        scores.append(_mlp_tail(x, hidden, out_weight, out_bias).transpose(1, 2))         # [B, m, L]
    return torch.cat(scores, dim=1) if scores else queries.new_zeros(users, 0, length)


def _scores_per_behaviour(queries, keys, split, hidden, out_weight, out_bias, step) -> Tensor:
    """[B, M, L] scores from one [D, H1] matrix per behaviour: queries [B, M, D] × [B, D, l·H1]."""
    per_target, key_term, wd = split
    users, length, d = keys.shape
    units = per_target.shape[1]
    per_target_t, wd_t = per_target.t(), wd.t()                                           # [H1, D]
    scores = []
    for start in range(0, length, step):
        k = keys[:, start:start + step]                                                   # [B, l, D]
        rows = k.shape[1]
        r = torch.addcmul(per_target_t, k.unsqueeze(2), wd_t)                             # [B, l, H1, D]
        c = k @ key_term + hidden[0].bias                                                 # [B, l, H1]
        x = torch.baddbmm(c.reshape(users, 1, rows * units), queries,
                          r.reshape(users, rows * units, d).transpose(1, 2))              # [B, M, l·H1]
        scores.append(_mlp_tail(x.reshape(users, queries.shape[1], rows, units), hidden, out_weight, out_bias))
    return torch.cat(scores, dim=2) if scores else queries.new_zeros(users, queries.shape[1], 0)
