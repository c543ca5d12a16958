"""QIN's two blocks: adaptive sparse target attention (ASTA) and the quadratic neural network
(QNN), as the official code (salmon1802/QIN, ``src/QIN_variety_v9.py``) computes them.

ASTA (one head)::

    Q = W_q x_t  [B, d_a]     K = W_k X_b, V = W_v X_b  [B, L, d_a]     (no biases)
    s = (K Q) / sqrt(d_a), zero at padding                               [B, L]
    a = ReLU(s)                            unnormalised and sparse: no softmax, no top-k
    o = W_o (aᵀ V) + x_t                   [B, D], residual to the target

Padding is removed by zeroing the *scores* (the official code multiplies them by the mask;
ReLU(0) = 0, so padded behaviours get weight 0 exactly and an empty history gives
o = W_o(0) + x_t = x_t).

Evaluation order. K and V are linear in X_b, so the same numbers come from
s = X_b (W_kᵀ Q) / √d_a and aᵀV = W_v (aᵀ X_b): the [B, L, d_a] keys and values are never
built, and the per-behaviour cost drops from O(D·d_a) to O(D) (``reassociate=True``, the
default; ``False`` evaluates the official order, kept for the test that the two agree).

QNN layer (``num_row`` = R)::

    g = Dropout(W z + b)  [B, R·D] → [B, R, D]
    q = z ⊙ Σ_r g_r                        (the code's "Khatri-Rao" einsum bd,brd->bd)
    z ← Dropout(PReLU(BN(q))) + z

Σ_r g_r = (Σ_r W_r) z + Σ_r b_r: without dropout the R rows are one linear map of z, so R
changes only the initialisation and the dropout noise (tested in tests/test_models_qin.py).
"""

from __future__ import annotations

import math
import torch
from torch import Tensor, nn


class AdaptiveSparseTargetAttention(nn.Module):
    """ASTA: target [B, D], history [B, L, D], mask [B, L] (True = a real behaviour) → [B, D].

    Args:
        dim: D, the item-tower width (target and history alike).
        attention_dim: d_a (official: 2·D).
        use_scale: divide the scores by sqrt(d_a) (official code and paper).
        output_projection: o = W_o(aᵀV) + x_t (official code). False gives the paper's
            formula o = aᵀV + x_t, which needs d_a == D.
        reassociate: evaluate K and V through their linearity (see the module docstring);
            same parameters and values, O(L·D) instead of O(L·D·d_a) per row.
    """

    def __init__(self, dim: int, attention_dim: int, use_scale: bool = True, output_projection: bool = True,
                 reassociate: bool = True) -> None:
        super().__init__()
        if not output_projection and attention_dim != dim:
            raise ValueError(f"without the output projection the attention width must equal the item width "
                             f"(o = ReLU(QKᵀ/√d_a)V + x_t): attention_dim={attention_dim}, item width={dim}")
        self.dim, self.attention_dim = dim, attention_dim
        self.scale = math.sqrt(attention_dim) if use_scale else 1.0
        self.W_q = nn.Linear(dim, attention_dim, bias=False)
        self.W_k = nn.Linear(dim, attention_dim, bias=False)
        self.W_v = nn.Linear(dim, attention_dim, bias=False)
        self.W_o = nn.Linear(attention_dim, dim, bias=False) if output_projection else None
        self.reassociate = reassociate

    def weights(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        """a = ReLU(masked scaled scores), [B, L]."""
        query = self.W_q(target)                                              # [B, d_a]
        if self.reassociate:                                                  # K Q = X_b (W_kᵀ Q)
            scores = torch.einsum("bld,bd->bl", history, query @ self.W_k.weight)
        else:
            scores = torch.einsum("bld,bd->bl", self.W_k(history), query)
        scores = scores / self.scale
        # where, not the official scores * mask: identical for finite scores, and a
        # non-finite value in a padded position cannot leak in (0 · inf = NaN)
        return torch.relu(torch.where(mask, scores, torch.zeros_like(scores)))

    def forward(self, target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        weights = self.weights(target, history, mask)                         # [B, L]
        history = torch.where(mask.unsqueeze(-1), history, torch.zeros_like(history))
        if self.reassociate:                                                  # aᵀV = W_v (aᵀ X_b)
            pooled = self.W_v(torch.einsum("bl,bld->bd", weights, history))
        else:
            pooled = torch.einsum("bl,bld->bd", weights, self.W_v(history))  # [B, d_a]
        if self.W_o is not None:
            pooled = self.W_o(pooled)
        return pooled + target


class QuadraticLayer(nn.Module):
    """q = z ⊙ Σ_r Dropout(W z + b)_r: [B, D] → [B, D] (W: D → R·D, with bias)."""

    def __init__(self, dim: int, num_row: int, dropout: float) -> None:
        super().__init__()
        if num_row < 1:
            raise ValueError(f"num_row must be >= 1, got {num_row}")
        self.dim, self.num_row = dim, num_row
        self.linear = nn.Linear(dim, dim * num_row)
        self.dropout = nn.Dropout(dropout)

    def rows(self, z: Tensor) -> Tensor:
        """g [B, R, D]."""
        return self.dropout(self.linear(z)).view(-1, self.num_row, self.dim)

    def forward(self, z: Tensor) -> Tensor:
        return z * self.rows(z).sum(dim=1)


class QuadraticNeuralNetwork(nn.Module):
    """QNN stack + output: z_0 [B, D] → logit [B].

    Per layer: z ← Dropout(PReLU(BN(QuadraticLayer(z)))) + z; then logit = wᵀz + b.
    PReLU has one shared slope per layer (``nn.PReLU()`` in the official code, init 0.25);
    ``prelu_per_unit`` gives one per unit instead. Dropout rate ``dropout`` inside the
    quadratic layer and after the activation (one ``net_dropout`` in the official code; the
    post-activation dropout exists only when it is > 0).
    """

    def __init__(self, dim: int, num_layers: int, num_row: int, dropout: float, batch_norm: bool,
                 prelu_per_unit: bool = False) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        self.layers = nn.ModuleList(QuadraticLayer(dim, num_row, dropout) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim) if batch_norm else nn.Identity() for _ in range(num_layers))
        self.activations = nn.ModuleList(nn.PReLU(dim if prelu_per_unit else 1) for _ in range(num_layers))
        self.dropouts = nn.ModuleList(nn.Dropout(dropout) if dropout > 0 else nn.Identity()
                                      for _ in range(num_layers))
        self.fc = nn.Linear(dim, 1)

    def forward(self, z: Tensor) -> Tensor:
        for layer, norm, activation, dropout in zip(self.layers, self.norms, self.activations, self.dropouts):
            z = dropout(activation(norm(layer(z)))) + z
        return self.fc(z).squeeze(-1)

