"""Sum / mean pooling of a history of vectors, padded or jagged (one implementation)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

POOLINGS = ("sum", "mean")


def pool_sequence(values: Tensor, lengths: Tensor, offsets: Optional[Tensor] = None, mode: str = "sum") -> Tensor:
    """values [B, L, D] right-padded (positions >= lengths[b] contribute nothing) or [N, D]
    jagged with ``offsets`` [B + 1] → [B, D]; "mean" divides by the length (an empty row
    pools to zeros)."""
    if mode not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")
    if offsets is None:
        mask = torch.arange(values.shape[1], device=values.device).unsqueeze(0) < lengths.unsqueeze(1)
        total = (values * mask.unsqueeze(-1).to(values.dtype)).sum(1)
    else:
        owner = torch.repeat_interleave(torch.arange(lengths.shape[0], device=values.device), lengths)
        total = values.new_zeros((lengths.shape[0], values.shape[-1])).index_add_(0, owner, values)
    if mode == "sum":
        return total
    return total / lengths.clamp_min(1).unsqueeze(1).to(values.dtype)
