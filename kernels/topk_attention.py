"""Op 2, scaled dot-product target attention with top-k selection (DARE / TWIN two-stage
search): public function and backend dispatcher.

    scores_bj = scale · ⟨q_att_b, k_att_bj⟩ over all behaviours (padding → PAD_SCORE),
    keep the top-k per row, pooled_b = Σ_{j kept} softmax(kept scores)_j · v_rep_bj

``backend="torch"`` runs the PyTorch reference; ``"triton"`` computes the L-wide score pass
(forward and backward) in Triton and the small [B, k] tail in PyTorch; ``"auto"`` picks
triton for CUDA tensors when triton imports. ``backend_for(...)`` says which a call with the same inputs runs (no state is recorded).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .reference.topk_attention import PAD_SCORE, topk_target_attention_padded
from .validation import KernelInputError, check_float, choose_backend, jagged_to_padded, resolve_rows

__all__ = ["PAD_SCORE", "backend_for", "topk_target_attention"]


def backend_for(q_att: Tensor, k_att: Tensor, backend: str = "auto") -> str:
    """The backend the op runs for these inputs ("torch" or "triton"); a pure function."""
    return choose_backend(backend, q_att, k_att)


def topk_target_attention(q_att: Tensor, k_att: Tensor, v_rep: Tensor, lengths: Optional[Tensor] = None, *,
                          k: int, scale: Optional[float] = None, offsets: Optional[Tensor] = None,
                          backend: str = "auto") -> Tuple[Tensor, Tensor, Tensor]:
    """Two-stage target attention.

    Args:
        q_att: [B, Da] attention embedding of the target.
        k_att: [B, L, Da] padded (with ``lengths`` [B]) or [N, Da] jagged (with ``offsets`` [B + 1]).
        v_rep: representation embeddings, same layout as k_att, width Dr.
        k: behaviours kept per row, 1 <= k <= L (L = padded width, or the longest jagged row).
        scale: default 1/sqrt(Da).
    Returns:
        pooled [B, Dr], scores [B, L] (padding = PAD_SCORE; jagged input: L = longest row),
        index [B, k] (positions within the row; -1 where a row has fewer than k behaviours).
    """
    check_float("q_att", q_att, 2)
    jagged, row_lengths, offsets = resolve_rows(k_att, lengths, offsets, q_att.shape[0])
    check_float("k_att", k_att, k_att.dim(), q_att.dtype, q_att.device)
    check_float("v_rep", v_rep, k_att.dim(), q_att.dtype, q_att.device)
    if k_att.shape[-1] != q_att.shape[-1]:
        raise KernelInputError(f"k_att width {k_att.shape[-1]} != q_att width {q_att.shape[-1]}")
    if v_rep.shape[:-1] != k_att.shape[:-1]:
        raise KernelInputError(f"v_rep {tuple(v_rep.shape)} must match k_att {tuple(k_att.shape)} except the last dim")
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise KernelInputError(f"k must be a positive int, got {k!r}")
    width = (int(row_lengths.max()) if row_lengths.numel() else 0) if jagged else k_att.shape[1]
    if k > width:
        raise KernelInputError(f"k={k} is larger than the longest row ({width} behaviours)")
    chosen = backend_for(q_att, k_att, backend)
    if chosen == "triton":
        from .triton.topk_attention import topk_target_attention_triton
        return topk_target_attention_triton(q_att, k_att, v_rep, row_lengths, offsets if jagged else None, k, scale)
    if jagged:
        k_att = jagged_to_padded(k_att, offsets, row_lengths)
        v_rep = jagged_to_padded(v_rep, offsets, row_lengths)
    return topk_target_attention_padded(q_att, k_att, v_rep, row_lengths, k, scale)
