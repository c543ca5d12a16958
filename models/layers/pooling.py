"""Masked pooling of right-padded sequences."""

from __future__ import annotations

from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """values [B, L, D], mask [B, L] bool → [B, D] (padding contributes nothing)."""
    return (values * mask.unsqueeze(-1).to(values.dtype)).sum(1)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """values [B, L, D], mask [B, L] bool → [B, D]; an empty row pools to zeros."""
    count = mask.sum(1, keepdim=True).clamp_min(1).to(values.dtype)
    return masked_sum(values, mask) / count
