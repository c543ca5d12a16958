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
