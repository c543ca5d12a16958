"""Activations by name, including DIN's Dice."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from recsys.kernels.din_attention import apply_activation


class Dice(nn.Module):
    """Dice (DIN, Zhou et al. 2018, eq. 9): f(s) = p(s)·s + (1 − p(s))·α·s with
    p(s) = σ((s − E[s]) / sqrt(Var[s] + ε)).

    E and Var are batch statistics in training and running averages in evaluation, kept
    as FuxiCTR does with BatchNorm1d(affine=False, eps=1e-9, momentum=0.01) (``norm`` holds
    them); α is learned per unit and starts at 0. Input [N, H] or [B, L, H] (statistics over
    all leading dims, or over the rows ``valid`` selects). The formula is the kernels'
    (``recsys.kernels.din_attention.apply_activation``), so this module and DIN's attention
    MLP, which runs this module's own parameters through the kernels, cannot drift apart.
    """

    activation = "dice"      # the activation fields the kernels read (HiddenLayer's names)
    prelu_weight = None

    def __init__(self, units: int, eps: float = 1e-9, momentum: float = 0.01) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(units))
        self.norm = nn.BatchNorm1d(units, affine=False, eps=eps, momentum=momentum)

    @property
    def dice_alpha(self) -> Tensor:
        return self.alpha

    @property
    def running_mean(self) -> Tensor:
        return self.norm.running_mean

    @property
    def running_var(self) -> Tensor:
        return self.norm.running_var

    @property
    def eps(self) -> float:
        return self.norm.eps

    @property
    def momentum(self) -> float:
        return self.norm.momentum

    def forward(self, x: Tensor, valid: Optional[Tensor] = None) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).shape[0] if valid is None else int(valid.sum())
        if self.training and rows < 2:
            raise ValueError(f"Dice needs at least 2 rows in training to take batch statistics, got input of shape "
                             f"{tuple(x.shape)}; drop a last batch of one (drop_last) or score it in eval mode")
        return apply_activation(x, self, valid)


def kernel_fields(act: nn.Module) -> dict:
    """The activation parameters a kernels ``HiddenLayer`` takes from an activation module."""
    if isinstance(act, Dice):
        return dict(dice_alpha=act.alpha, running_mean=act.running_mean, running_var=act.running_var,
                    momentum=act.momentum, eps=act.eps)
    if isinstance(act, nn.PReLU):
        return dict(prelu_weight=act.weight)
    return {}


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
