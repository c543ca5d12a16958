"""DIN's local activation unit as a module: owns the attention-MLP parameters and calls
the kernels dispatcher (PyTorch reference or fused Triton kernel)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from recsys.kernels.din_attention import din_attention
from recsys.kernels.reference.din_attention import HiddenLayer

from .activations import Dice

ATTENTION_ACTIVATIONS = ("sigmoid", "relu", "prelu", "dice")


class ActivationUnitAttention(nn.Module):
    """pooled = Σ_j w_j v_j with w_j = MLP([q, k_j, q − k_j, q ⊙ k_j]) (or its softmax).

    The first Linear is [4D → H1] over the concatenation in that order, but the op computes
    it as q(Wa+Wc) + k(Wb−Wc) + (q⊙k)Wd, so no [B, L, 4D] tensor is built.

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
        self.acts = nn.ModuleList(self._act(units) for units in hidden_units)
        self.out = nn.Linear(widths[-1], 1)

    def _act(self, units: int) -> nn.Module:
        if self.activation == "prelu":
            return nn.PReLU(units)
        if self.activation == "dice":
            return Dice(units)
        return nn.Identity()   # sigmoid / relu carry no parameters

    def _layers(self) -> List[HiddenLayer]:
        layers = []
        for linear, act in zip(self.linears, self.acts):
            spec = HiddenLayer(weight=linear.weight.t(), bias=linear.bias, activation=self.activation,
                               training=self.training)
            if isinstance(act, nn.PReLU):
                spec.prelu_weight = act.weight
            elif isinstance(act, Dice):
                spec.dice_alpha = act.alpha
                spec.running_mean, spec.running_var = act.norm.running_mean, act.norm.running_var
                spec.momentum, spec.eps = act.norm.momentum, act.norm.eps
            layers.append(spec)
        return layers

    def forward(self, query: Tensor, keys: Tensor, lengths: Optional[Tensor] = None,
                offsets: Optional[Tensor] = None, values: Optional[Tensor] = None) -> Tensor:
        """query [B, D]; keys [B, L, D] + lengths [B] or [N, D] + offsets [B + 1] → [B, Dv]."""
        return din_attention(query, keys, lengths, hidden=self._layers(), out_weight=self.out.weight[0],
                             out_bias=self.out.bias[0], values=values, use_softmax=self.use_softmax,
                             offsets=offsets, backend=self.backend)

    @torch.no_grad()
    def scores_naive(self, query: Tensor, keys: Tensor) -> Tensor:
        """Scores [B, L] through the explicit [B, L, 4D] concatenation (FuxiCTR's form);
        for tests and benchmarks only."""
        q = query.unsqueeze(1).expand_as(keys)
        x = torch.cat([q, keys, q - keys, q * keys], dim=-1)
        for linear, act in zip(self.linears, self.acts):
            x = linear(x)
            if self.activation in ("sigmoid", "relu"):
                x = torch.sigmoid(x) if self.activation == "sigmoid" else torch.relu(x)
            else:   # PReLU / Dice act on the last dim: flatten [B, L, H] → [B·L, H]
                x = act(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return self.out(x).squeeze(-1)
