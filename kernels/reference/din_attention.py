"""Reference for op 1: DIN's local activation unit + weighted pooling.

score_j = MLP([q, k_j, q - k_j, q * k_j]) and pooled = sum_j w_j v_j, with w = score (DIN
paper: no normalisation) or softmax(score) (official code). The first layer never builds
the [B, L, 4D] concatenation: with W1 = [Wa; Wb; Wc; Wd] (row blocks for q, k, q-k, q*k),

    pre = q (Wa + Wc) + k (Wb - Wc) + (q * k) Wd + b1
        = q (Wa + Wc) + b1  +  k [(Wb - Wc) + diag(q) Wd],

one per-target term plus one batched GEMM of the keys with a per-row [D, H1] matrix (see
design/architecture.md).
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


def apply_activation(x: Tensor, layer: HiddenLayer, valid: Optional[Tensor] = None) -> Tensor:
    """Activation of ``x`` [..., H]; ``valid`` ([...] bool) selects the rows Dice takes
    batch statistics over (padding positions must not move the statistics)."""
    kind = layer.activation
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "relu":
        return F.relu(x)
    if kind == "prelu":
        # the native op (one pass, fused backward) on [rows, H]: F.prelu's channel dim is dim 1
        return F.prelu(x.reshape(-1, x.shape[-1]), layer.prelu_weight.to(x.dtype)).reshape(x.shape)
    if kind == "dice":
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
                        layer.running_mean.lerp_(mean.detach(), layer.momentum)
                        layer.running_var.lerp_(unbiased.detach(), layer.momentum)
        else:
            mean, var = layer.running_mean, layer.running_var
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + layer.eps))
        return p * x + (1 - p) * layer.dice_alpha * x
    raise ValueError(f"unknown activation {kind!r}; expected sigmoid, relu, prelu or dice")


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
