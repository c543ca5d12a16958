"""Reference for op 3: plain single-query attention pooling (QIN / DiffuMIN building block).

    s_j = scale · ⟨q, k_j⟩,   w = softmax(s) over the row's valid behaviours, or relu(s),
    pooled = Σ_j w_j v_j
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

WEIGHTINGS = ("softmax", "relu")


def attention_pooling_padded(query: Tensor, keys: Tensor, lengths: Tensor, values: Optional[Tensor] = None,
                             weighting: str = "softmax", scale: Optional[float] = None) -> Tensor:
    """query [B, D], keys [B, L, D], lengths [B], values [B, L, Dv] (default keys) → pooled [B, Dv].

    scale defaults to 1/sqrt(D). Rows with no behaviours pool to zeros.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    values = keys if values is None else values
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    positions = torch.arange(keys.shape[1], device=keys.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)                    # [B, L]
    scores = torch.einsum("bd,bld->bl", query, keys) * scale
    if weighting == "softmax":
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
    else:
        weights = torch.relu(scores) * mask
    return torch.einsum("bl,bld->bd", weights, values)
