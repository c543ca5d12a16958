"""MLP block: Linear → (BatchNorm) → activation → (Dropout), per hidden layer."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from .activations import make_activation


class MLP(nn.Module):
    """[B, in_dim] → [B, hidden_units[-1]] (or [B, output_dim] when ``output_dim`` is set,
    through a final Linear with no activation).

    Args:
        in_dim: input width.
        hidden_units: widths of the hidden layers.
        activation: name understood by ``make_activation``.
        dropout: dropout rate after each hidden activation.
        batch_norm: BatchNorm1d between each Linear and its activation.
        output_dim: optional final Linear width.
    """

    def __init__(self, in_dim: int, hidden_units: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 batch_norm: bool = False, output_dim: Optional[int] = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for units in hidden_units:
            layers.append(nn.Linear(width, units))
            if batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(make_activation(activation, units))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = units
        if output_dim is not None:
            layers.append(nn.Linear(width, output_dim))
            width = output_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
