"""Activations by name, including DIN's Dice."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dice(nn.Module):
    """Dice (DIN, Zhou et al. 2018, eq. 9): f(s) = p(s)·s + (1 − p(s))·α·s with
    p(s) = σ((s − E[s]) / sqrt(Var[s] + ε)).

    E and Var are batch statistics in training and running averages in evaluation, kept
    as FuxiCTR does with BatchNorm1d(affine=False, eps=1e-9, momentum=0.01); α is learned
    per unit and starts at 0. Input [N, H] or [B, L, H] (statistics over all leading dims).
    """

    def __init__(self, units: int, eps: float = 1e-9, momentum: float = 0.01) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(units))
        self.norm = nn.BatchNorm1d(units, affine=False, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if self.training and flat.shape[0] < 2:
            raise ValueError(f"Dice needs at least 2 rows in training to take batch statistics, got input of shape "
                             f"{tuple(shape)}; drop a last batch of one (drop_last) or score it in eval mode")
        p = torch.sigmoid(self.norm(flat)).reshape(shape)
        return p * x + (1 - p) * self.alpha * x


def make_activation(name: str, units: int) -> nn.Module:
    """"relu" | "prelu" | "dice" | "sigmoid" | "tanh" | "identity"; PReLU has one slope per unit
    initialised at 0.25 (PyTorch default)."""
    name = name.lower()
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return nn.PReLU(units)
    if name == "dice":
        return Dice(units)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    if name in ("identity", "linear", "none"):
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; expected relu, prelu, dice, sigmoid, tanh or identity")
