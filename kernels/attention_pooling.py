"""Op 3, single-query attention pooling: public function and backend dispatcher.

    pooled[b] = Σ_j w_bj · values[b, j],   s_bj = scale · ⟨query_b, keys_bj⟩,
    w = softmax(s) over the row's valid behaviours, or relu(s)

``backend="torch"`` runs the PyTorch reference (the CPU path); ``"triton"`` the Triton
kernel (forward and backward); ``"auto"`` triton for CUDA tensors when triton imports.
``last_backend()`` says which ran.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .reference.attention_pooling import WEIGHTINGS, attention_pooling_padded
from .validation import KernelInputError, check_float, choose_backend, jagged_to_padded, resolve_rows

_LAST = {"backend": None}


def last_backend() -> Optional[str]:
    """The backend the most recent call in this process ran ("torch" or "triton")."""
    return _LAST["backend"]


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
    check_float("query", query, 2)
    jagged, row_lengths, offsets = resolve_rows(keys, lengths, offsets, query.shape[0])
    check_float("keys", keys, keys.dim(), query.dtype, query.device)
    if keys.shape[-1] != query.shape[-1]:
        raise KernelInputError(f"keys width {keys.shape[-1]} != query width {query.shape[-1]}")
    if values is not None:
        check_float("values", values, keys.dim(), query.dtype, query.device)
        if values.shape[:-1] != keys.shape[:-1]:
            raise KernelInputError(f"values {tuple(values.shape)} must match keys {tuple(keys.shape)} except the last dim")
    chosen = choose_backend(backend, query, keys)
    _LAST["backend"] = chosen
    if chosen == "triton":
        from .triton.attention_pooling import attention_pooling_triton
        return attention_pooling_triton(query, keys, row_lengths, offsets if jagged else None,
                                        keys if values is None else values, weighting, scale)
    if jagged:
        keys = jagged_to_padded(keys, offsets, row_lengths)
        values = None if values is None else jagged_to_padded(values, offsets, row_lengths)
    return attention_pooling_padded(query, keys, row_lengths, values, weighting, scale)
