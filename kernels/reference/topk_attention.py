"""Reference for op 2: scaled dot-product target attention with top-k selection
(DARE / TWIN two-stage search)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

# Score given to padding before top-k: finite (so softmax of a fully padded row stays
# defined) and far below any real score. DARE's official code uses -2**32 + 1.
PAD_SCORE = -(2.0 ** 32) + 1


def topk_target_attention_padded(q_att: Tensor, k_att: Tensor, v_rep: Tensor, lengths: Tensor, k: int,
                                 scale: Optional[float] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Two-stage target attention.

    q_att [B, Da], k_att [B, L, Da] (attention embeddings), v_rep [B, L, Dr] (representation
    embeddings), lengths [B]. scale defaults to 1/sqrt(Da).

    Returns:
        pooled [B, Dr]: sum over the kept behaviours of softmax(kept scores) * v_rep
        scores [B, L]: full scaled scores, padding set to PAD_SCORE (for DARE's aux loss)
        index  [B, k]: kept positions; -1 where a row has fewer than k behaviours
    Padding is never selected. Gradients reach q_att/k_att through the kept scores;
    the choice of indices is not differentiated.
    """
    scale = q_att.shape[-1] ** -0.5 if scale is None else scale
    positions = torch.arange(k_att.shape[1], device=k_att.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)                    # [B, L]
    scores = torch.einsum("bd,bld->bl", q_att, k_att) * scale
    scores = scores.masked_fill(~mask, PAD_SCORE)
    kept_scores, index = torch.topk(scores, k, dim=1)                      # [B, k]
    kept_valid = torch.gather(mask, 1, index)
    weights = torch.softmax(kept_scores.masked_fill(~kept_valid, float("-inf")), dim=1).nan_to_num(0.0)
    kept_values = torch.gather(v_rep, 1, index.unsqueeze(-1).expand(-1, -1, v_rep.shape[-1]))
    pooled = torch.einsum("bk,bkd->bd", weights, kept_values)
    return pooled, scores, index.masked_fill(~kept_valid, -1)
