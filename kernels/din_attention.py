"""Op 1, DIN activation-unit attention: public function and backend dispatcher.

    pooled[b] = Σ_j w_bj · values[b, j],   w = score (DIN paper) or softmax(score) (official code),
    score_bj  = MLP([q_b, k_bj, q_b − k_bj, q_b ⊙ k_bj])

``backend="torch"`` is the CPU path: the chunked PyTorch function (``din_attention_chunked``,
no [B, L, H] tensor kept for backward) when one [B, L, H] activation would exceed
``CHUNKED_MIN_ELEMENTS``, else the unchunked reference (small problems: the chunked path's
forward recomputation costs more than the memory traffic it saves, e.g. DIN's B = 1024,
L = 50, H = 36); ``"reference"`` always the plain reference (``din_attention_padded``, for
tests and benchmarks); ``"triton"`` the fused
Triton kernel (CUDA, or the interpreter with ``TRITON_INTERPRET=1``); ``"auto"`` picks
triton for CUDA tensors when triton imports, else torch. ``last_backend()`` says which ran.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from .reference.din_attention import HiddenLayer, din_attention_padded
from .reference.din_attention_chunked import din_attention_chunked
from .validation import KernelInputError, check_attention_inputs, choose_backend, jagged_to_padded

_LAST = {"backend": None}

CHUNKED_MIN_ELEMENTS = 1 << 22   # B·L·H above which backend="torch" runs the chunked function


def last_backend() -> Optional[str]:
    """The backend the most recent call in this process ran ("torch", "reference" or "triton")."""
    return _LAST["backend"]


def din_attention(query: Tensor, keys: Tensor, lengths: Optional[Tensor] = None, *,
                  hidden: Sequence[HiddenLayer], out_weight: Tensor, out_bias: Tensor,
                  values: Optional[Tensor] = None, use_softmax: bool = False, offsets: Optional[Tensor] = None,
                  backend: str = "auto") -> Tensor:
    """DIN attention pooling.

    Args:
        query: [B, D] target embeddings.
        keys: [B, L, D] padded (with ``lengths`` [B]) or [N, D] jagged (with ``offsets`` [B + 1]).
        hidden: attention-MLP hidden layers; the first has weight [4D, H1] (rows for q, k, q−k, q⊙k).
        out_weight: [H_last]; out_bias: [] scalar.
        values: what is pooled, same layout as keys (default: keys), width Dv.
        use_softmax: normalise scores over each row's valid behaviours.
    Returns:
        pooled [B, Dv]; rows with no behaviours pool to zeros.
    """
    jagged, row_lengths, offsets = check_attention_inputs(query, keys, values, lengths, offsets)
    if not hidden:
        raise KernelInputError("the attention MLP needs at least one hidden layer")
    if hidden[0].weight.shape[0] != 4 * query.shape[-1]:
        raise KernelInputError(f"first hidden weight must be [4D={4 * query.shape[-1]}, H], got {tuple(hidden[0].weight.shape)}")
    chosen = choose_backend(backend, query, keys, allowed=("torch", "reference", "triton"))
    if backend == "auto" and len(hidden) > 2:
        chosen = "torch"   # the fused kernel covers one or two hidden layers (DIN's configs)
    _LAST["backend"] = chosen
    if chosen == "triton":
        from .triton.din_attention import din_attention_triton
        return din_attention_triton(query, keys, row_lengths, offsets if jagged else None, hidden, out_weight,
                                    out_bias, values, use_softmax)
    if jagged:
        keys = jagged_to_padded(keys, offsets, row_lengths)
        values = None if values is None else jagged_to_padded(values, offsets, row_lengths)
    widest = max(layer.weight.shape[1] for layer in hidden)
    if chosen == "reference" or keys.shape[0] * keys.shape[1] * widest <= CHUNKED_MIN_ELEMENTS:
        return din_attention_padded(query, keys, row_lengths, hidden, out_weight, out_bias, values, use_softmax)
    return din_attention_chunked(query, keys, row_lengths, hidden, out_weight, out_bias, values, use_softmax)
