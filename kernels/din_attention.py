"""Op 1, DIN activation-unit attention: public function and backend dispatcher.

    pooled[b] = Σ_j w_bj · values[b, j],   w = score (DIN paper) or softmax(score) (official code),
    score_bj  = MLP([q_b, k_bj, q_b − k_bj, q_b ⊙ k_bj])

``backend="torch"`` is the CPU path: the chunked PyTorch function (``din_attention_chunked``,
no [B, L, H] tensor kept for backward) when one [B, L, H] activation would exceed
``CHUNKED_MIN_ELEMENTS``, else the unchunked reference (small problems: the chunked path's
forward recomputation costs more than the memory traffic it saves, e.g. DIN's B = 1024,
L = 50, H = 36); ``"reference"`` always the plain reference (``din_attention_padded``);
``"naive"`` the FuxiCTR form that builds the [B, L, 4D] concatenation (the eager baseline of
tests and benchmarks); ``"triton"`` the fused Triton kernel (CUDA, or the interpreter with
``TRITON_INTERPRET=1``); ``"auto"`` picks triton for CUDA tensors when triton imports, else
torch. ``backend_for(...)`` says which implementation a call with the same arguments runs
(a pure function of the inputs: no state is recorded).

``HiddenLayer`` (the attention MLP's layers as tensors) and ``apply_activation`` (its
activations, Dice's statistics included) are re-exported here as the op's public types.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from .reference.din_attention import (ACTIVATIONS, HiddenLayer, apply_activation, din_attention_candidates_padded,
                                      din_attention_naive, din_attention_padded, din_attention_scores, din_scores_naive)
from .reference.din_attention_chunked import din_attention_chunked
from .validation import (KernelInputError, check_attention_inputs, check_float, choose_backend, jagged_to_padded,
                         resolve_rows)

__all__ = ["ACTIVATIONS", "CHUNKED_MIN_ELEMENTS", "HiddenLayer", "apply_activation", "backend_for", "din_attention",
           "din_attention_candidates", "din_scores"]

CHUNKED_MIN_ELEMENTS = 1 << 22   # B·L·H above which backend="torch" runs the chunked function
BACKENDS = ("torch", "reference", "naive", "triton")


def backend_for(query: Tensor, keys: Tensor, *, hidden: Sequence[HiddenLayer], backend: str = "auto") -> str:
    """The implementation ``din_attention`` runs for these inputs: "triton" | "chunked" |
    "reference" | "naive". keys [B, L, D] padded or [N, D] jagged (the chunked/reference
    choice of ``"torch"`` is made on the padded width)."""
    chosen = choose_backend(backend, query, keys, allowed=BACKENDS)
    if backend == "auto" and len(hidden) > 2:
        chosen = "torch"   # the fused kernel covers one or two hidden layers (DIN's configs)
    if chosen != "torch":
        return chosen
    widest = max(layer.weight.shape[1] for layer in hidden)
    rows = keys.shape[0] * keys.shape[1] if keys.dim() == 3 else keys.shape[0]
    return "chunked" if rows * widest > CHUNKED_MIN_ELEMENTS else "reference"


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
        backend: "auto" | "torch" | "reference" | "naive" | "triton" (module docstring).
    Returns:
        pooled [B, Dv]; rows with no behaviours pool to zeros.
    """
    jagged, row_lengths, offsets = check_attention_inputs(query, keys, values, lengths, offsets)
    _check_hidden(query.shape[-1], hidden)
    chosen = backend_for(query, keys, hidden=hidden, backend=backend)
    if chosen == "triton":
        from .triton.din_attention import din_attention_triton
        return din_attention_triton(query, keys, row_lengths, offsets if jagged else None, hidden, out_weight,
                                    out_bias, values, use_softmax)
    if jagged:
        keys = jagged_to_padded(keys, offsets, row_lengths)
        values = None if values is None else jagged_to_padded(values, offsets, row_lengths)
        if chosen != "naive":   # decide chunked/reference on the padded width, as padded input does
            chosen = backend_for(query, keys, hidden=hidden, backend="reference" if backend == "reference" else "torch")
    run = {"reference": din_attention_padded, "chunked": din_attention_chunked, "naive": din_attention_naive}[chosen]
    return run(query, keys, row_lengths, hidden, out_weight, out_bias, values, use_softmax)


def din_attention_candidates(queries: Tensor, keys: Tensor, lengths: Tensor, *, hidden: Sequence[HiddenLayer],
                             out_weight: Tensor, out_bias: Tensor, values: Optional[Tensor] = None,
                             use_softmax: bool = False) -> Tensor:
    """DIN attention pooling of M targets that share one history per row (scoring M
    candidates for a user): pooled [B, M, Dv] with ``pooled[b, m]`` = ``din_attention`` of
    (queries[b, m], keys[b], lengths[b]), without repeating the history M times.

    Args:
        queries: [B, M, D] candidate (target) embeddings.
        keys: [B, L, D] padded history, ``lengths`` [B]; values: [B, L, Dv] (default keys).
        hidden, out_weight, out_bias, use_softmax: as ``din_attention``; Dice layers must be
            in eval mode (their running statistics), else KernelInputError.
    PyTorch on every device (one GEMM per user over all candidates; the chunk of candidates
    is bounded so one [B, L, m, H1] activation stays small).
    """
    check_float("queries", queries, 3)
    _, row_lengths, _ = resolve_rows(keys, lengths, None, queries.shape[0])
    check_float("keys", keys, 3, queries.dtype, queries.device)
    if keys.shape[-1] != queries.shape[-1]:
        raise KernelInputError(f"keys width {keys.shape[-1]} != queries width {queries.shape[-1]}")
    if values is not None:
        check_float("values", values, 3, queries.dtype, queries.device)
        if values.shape[:-1] != keys.shape[:-1]:
            raise KernelInputError(f"values {tuple(values.shape)} must match keys {tuple(keys.shape)} except the last dim")
    _check_hidden(queries.shape[-1], hidden)
    if any(layer.activation == "dice" and layer.training for layer in hidden):
        raise KernelInputError("din_attention_candidates needs Dice layers in eval mode (running statistics): "
                               "batch statistics over shared histories are not the training rows'")
    return din_attention_candidates_padded(queries, keys, row_lengths, hidden, out_weight, out_bias, values,
                                           use_softmax)


def din_scores(query: Tensor, keys: Tensor, lengths: Tensor, *, hidden: Sequence[HiddenLayer], out_weight: Tensor,
               out_bias: Tensor, naive: bool = False) -> Tensor:
    """Raw activation-unit scores [B, L] of padded keys [B, L, D] (padding positions hold
    garbage: mask them); ``naive`` builds the [B, L, 4D] concatenation (FuxiCTR's form)
    instead of the split first layer. PyTorch only (DARE's "din_topk" baseline, tests)."""
    check_attention_inputs(query, keys, None, lengths, None)
    _check_hidden(query.shape[-1], hidden)
    mask = _mask(keys, lengths)
    return (din_scores_naive if naive else din_attention_scores)(query, keys, mask, hidden, out_weight, out_bias)


def _mask(keys: Tensor, lengths: Tensor) -> Tensor:
    import torch
    return torch.arange(keys.shape[1], device=keys.device).unsqueeze(0) < lengths.unsqueeze(1)


def _check_hidden(dim: int, hidden: Sequence[HiddenLayer]) -> None:
    if not hidden:
        raise KernelInputError("the attention MLP needs at least one hidden layer")
    if hidden[0].weight.shape[0] != 4 * dim:
        raise KernelInputError(f"first hidden weight must be [4D={4 * dim}, H], "
                               f"got {tuple(hidden[0].weight.shape)}")
    for i, layer in enumerate(hidden):
        if layer.activation not in ACTIVATIONS:
            raise KernelInputError(f"hidden[{i}].activation must be one of {ACTIVATIONS}, got {layer.activation!r}")
