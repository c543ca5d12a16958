"""Op 3, single-query attention pooling: public function and backend dispatcher.

    pooled[b] = Σ_j w_bj · values[b, j],   s_bj = scale · ⟨query_b, keys_bj⟩,
    w = softmax(s) over the row's valid behaviours, or relu(s)

``backend="torch"`` runs the PyTorch reference (the CPU path); ``"triton"`` the Triton
kernel (forward and backward); ``"auto"`` triton for CUDA tensors when triton imports.
``backend_for(...)`` says which a call with the same inputs runs (no state is recorded).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .reference.attention_pooling import WEIGHTINGS, attention_pooling_padded
from .validation import KernelInputError, check_attention_inputs, choose_backend, jagged_to_padded

__all__ = ["attention_pooling", "backend_for"]


def backend_for(query: Tensor, keys: Tensor, backend: str = "auto") -> str:
    """The backend the op runs for these inputs ("torch" or "triton"); a pure function."""
    return choose_backend(backend, query, keys)


def attention_pooling(query: Tensor, keys: Tensor, lengths: Optional[Tensor] = None, *,
                      values: Optional[Tensor] = None, weighting: str = "softmax", scale: Optional[float] = None,
                      offsets: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Attention pooling of a history by one query.

    Args:
        query: [B, D].
        keys: [B, L, D] padded (with ``lengths`` [B]) or [N, D] jagged (with ``offsets`` [B + 1]).
        values: what is pooled, same layout as keys (default: keys), width Dv.
        weighting: "softmax" (normalised over valid behaviours) or "relu" (unnormalised).
        scale: score scale, default 1/sqrt(D).
    Returns:
        pooled [B, Dv]; rows with no behaviours pool to zeros.
    """
    if weighting not in WEIGHTINGS:
        raise KernelInputError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    jagged, row_lengths, offsets = check_attention_inputs(query, keys, values, lengths, offsets)
    chosen = backend_for(query, keys, backend)
    if chosen == "triton":
        from .triton.attention_pooling import attention_pooling_triton
        return attention_pooling_triton(query, keys, row_lengths, offsets if jagged else None,
                                        keys if values is None else values, weighting, scale)
    if jagged:
        keys = jagged_to_padded(keys, offsets, row_lengths)
        values = None if values is None else jagged_to_padded(values, offsets, row_lengths)
    return attention_pooling_padded(query, keys, row_lengths, values, weighting, scale)
