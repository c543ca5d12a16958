"""DIN's local activation unit as a module: owns the attention-MLP parameters and calls
the kernels dispatcher (PyTorch reference, chunked CPU path or fused Triton kernel)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from recsys.kernels.din_attention import HiddenLayer, din_attention, din_attention_candidates, din_scores

from .activations import kernel_fields, make_activation

ATTENTION_ACTIVATIONS = ("sigmoid", "relu", "prelu", "dice")


class ActivationUnitAttention(nn.Module):
    """pooled = Σ_j w_j v_j with w_j = MLP([q, k_j, q − k_j, q ⊙ k_j]) (or its softmax).

    The first Linear is [4D → H1] over the concatenation in that order, but the op computes
    it as q(Wa+Wc) + k(Wb−Wc) + (q⊙k)Wd, so no [B, L, 4D] tensor is built. The activations
    are ``make_activation`` modules (PReLU, Dice, ...); the kernels read their parameters.

    Args:
        dim: D, width of query and keys.
        hidden_units: attention-MLP hidden widths (DIN paper: (36,); official code: (80, 40)).
        activation: "prelu" | "dice" | "sigmoid" | "relu".
        use_softmax: normalise the scores (official code) instead of raw weights (paper).
        backend: "auto" | "torch" | "triton" (see kernels.din_attention).
    """

    def __init__(self, dim: int, hidden_units: Sequence[int] = (36,), activation: str = "prelu",
                 use_softmax: bool = False, backend: str = "auto") -> None:
        super().__init__()
        if activation not in ATTENTION_ACTIVATIONS:
            raise ValueError(f"attention activation must be one of {ATTENTION_ACTIVATIONS}, got {activation!r}")
        if not hidden_units:
            raise ValueError("the attention MLP needs at least one hidden layer")
        if backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton, got {backend!r}")
        self.activation, self.use_softmax, self.backend = activation, use_softmax, backend
        widths = [4 * dim] + list(hidden_units)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts = nn.ModuleList(make_activation(activation, units) for units in hidden_units)
        self.out = nn.Linear(widths[-1], 1)

    def hidden_layers(self) -> List[HiddenLayer]:
        """The MLP as the kernels take it (views of this module's parameters, not copies)."""
        return [HiddenLayer(weight=linear.weight.t(), bias=linear.bias, activation=self.activation,
                            training=self.training, **kernel_fields(act))
                for linear, act in zip(self.linears, self.acts)]

    def forward(self, query: Tensor, keys: Tensor, lengths: Optional[Tensor] = None,
                offsets: Optional[Tensor] = None, values: Optional[Tensor] = None,
                backend: Optional[str] = None) -> Tensor:
        """query [B, D]; keys [B, L, D] + lengths [B] or [N, D] + offsets [B + 1] → [B, Dv].
        ``backend`` overrides the module's (e.g. "naive" for the [B, L, 4D] baseline)."""
        return din_attention(query, keys, lengths, hidden=self.hidden_layers(), out_weight=self.out.weight[0],
                             out_bias=self.out.bias[0], values=values, use_softmax=self.use_softmax,
                             offsets=offsets, backend=self.backend if backend is None else backend)

    def pool_candidates(self, queries: Tensor, keys: Tensor, lengths: Tensor) -> Tensor:
        """queries [B, M, D] sharing each row's padded keys [B, L, D] + lengths [B] → [B, M, D]
        (``forward`` of every (row, query) pair, history not repeated; Dice in eval mode)."""
        return din_attention_candidates(queries, keys, lengths, hidden=self.hidden_layers(),
                                        out_weight=self.out.weight[0], out_bias=self.out.bias[0],
                                        use_softmax=self.use_softmax)

    def scores(self, query: Tensor, keys: Tensor, lengths: Tensor, naive: bool = False) -> Tensor:
        """Raw scores [B, L] of padded keys [B, L, D] (padding positions: mask them)."""
        return din_scores(query, keys, lengths, hidden=self.hidden_layers(), out_weight=self.out.weight[0],
                          out_bias=self.out.bias[0], naive=naive)

    @torch.no_grad()
    def scores_naive(self, query: Tensor, keys: Tensor) -> Tensor:
        """Scores [B, L] through the explicit [B, L, 4D] concatenation (FuxiCTR's form), every
        position valid; for tests and benchmarks."""
        lengths = torch.full((keys.shape[0],), keys.shape[1], dtype=torch.int64, device=keys.device)
        return self.scores(query, keys, lengths, naive=True)
