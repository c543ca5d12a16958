"""DiffuMIN's OMIE (orthogonal multi-interest extraction): target-conditioned channels,
routing of behaviours to channels, per-channel filtering and aggregation into C interests.

Shapes: B batch, L history length, D width, C channels. ``valid`` [B, L] bool marks real
behaviours (right padding); padded positions are never routed, kept or aggregated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ROUTINGS = ("top1", "soft")
FILTERS = ("topk", "top_p")


def orthogonal_channels(projection: Tensor) -> Tensor:
    """Thin QR of P [B, D, C] (D >= C) → O [B, D, C] with orthonormal columns, signs fixed
    so that R has a non-negative diagonal (the QR factorisation of a full-rank P is then
    unique, so routing does not depend on the LAPACK backend's sign choice)."""
    q, r = torch.linalg.qr(projection, mode="reduced")
    diagonal = torch.diagonal(r, dim1=-2, dim2=-1)                                # [B, C]
    sign = torch.where(diagonal < 0, -torch.ones_like(diagonal), torch.ones_like(diagonal))
    return q * sign.unsqueeze(-2)


def routing_mask(relevance: Tensor, valid: Tensor, mode: str = "top1") -> Tensor:
    """M1 [B, L, C]: "top1" one-hot of each behaviour's argmax channel (paper and code),
    "soft" a softmax over the channels (the routing ablation); zero on padding."""
    if mode == "top1":
        mask = torch.zeros_like(relevance).scatter_(-1, relevance.argmax(-1, keepdim=True), 1.0)
    elif mode == "soft":
        mask = torch.softmax(relevance, dim=-1)
    else:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {mode!r}")
    return mask * valid.unsqueeze(-1).to(relevance.dtype)


def filter_mask(relevance: Tensor, valid: Tensor, mode: str = "topk", top_k: int = 100, top_p: float = 1.0) -> Tensor:
    """M2 [B, L, C] (0/1): per channel, the behaviours of highest relevance among the valid ones.

    "topk": the k highest (official code, k = 100); a row with fewer than k valid behaviours
    keeps all of them (the code's ``top_k(100)`` crashes when L < 100).
    "top_p": the ⌈p · L_b⌉ highest of row b's L_b valid behaviours (the paper's top-p share).
    Ties at the boundary are broken by position (torch's sort order), so exactly that many
    are kept.
    """
    batch, length, channels = relevance.shape
    masked = relevance.masked_fill(~valid.unsqueeze(-1), float("-inf"))
    if mode == "topk":
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, length)
        if k == 0:
            return torch.zeros_like(relevance)
        index = masked.topk(k, dim=1).indices                                     # [B, k, C]
        keep = torch.zeros_like(relevance).scatter_(1, index, 1.0)
    elif mode == "top_p":
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = masked.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(length, device=order.device)
                                                .view(1, length, 1).expand(batch, length, channels))
        quota = torch.ceil(valid.sum(1).to(torch.float64) * top_p - 1e-9).long()   # [B]; 1e-9: 10·0.3 → 3
        keep = (rank < quota.view(batch, 1, 1)).to(relevance.dtype)
    else:
        raise ValueError(f"filter must be one of {FILTERS}, got {mode!r}")
    return keep * valid.unsqueeze(-1).to(relevance.dtype)


def aggregate_interests(history: Tensor, weights: Tensor, lengths: Tensor) -> Tensor:
    """r_c = (1 / L_b) Σ_l w_lc h_l: history [B, L, D], weights [B, L, C] (M ⊙ A) → R [B, C, D].

    Divided by the row's valid length L_b (the code's mean over the padded L, made
    padding-independent); an empty history gives R = 0."""
    total = torch.einsum("blc,bld->bcd", weights, history)
    return total / lengths.clamp_min(1).to(total.dtype).view(-1, 1, 1)


def quota_for(length: int, top_p: float) -> int:
    """⌈p · L⌉, the number of behaviours "top_p" keeps per channel in a row of L (for docs/tests)."""
    return int(math.ceil(length * top_p - 1e-9))
