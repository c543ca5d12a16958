"""Sample weights that decorrelate features: StableNet's reweighting (Zhang, Cui, Xu, Zhou,
Liu, Shen, "Deep Stable Learning for Out-Of-Distribution Generalization", CVPR 2021), as
xxgege/StableNet ``loss_reweighting.py`` and ``training/reweighting.py``.

Random Fourier features (``random_fourier_features_gpu``, ``num_f`` = q draws)::

    m[n, a, j] = ω_j · x[n, a] + β[a, j]            ω_j ~ N(0, 1) (one per draw, shared by all
                                                    coordinates), β[a, j] ~ U(0, 2π)
    m ← (m − min_a m) / max_a(m − min_a m) · π/2    per sample and draw, over the coordinates a
    φ[n, a, j] = sqrt(2/q) · (cos m + sin m)        (``sum=True``; else [cos ‖ sin], 2q columns)

Weighted cross-covariance and the RFF-HSIC of the code (``cov``, ``lossb_expect``), with
weights w (Σ w = 1)::

    C_j = (w ⊙ φ_j)ᵀ φ_j − (Σ_n w_n φ_j[n])(Σ_n w_n φ_j[n])ᵀ     [F, F] per draw j
    HSIC_w = Σ_j Σ_{a ≠ c} mask[a, c] · C_j[a, c]²

StableNet sums over every off-diagonal pair (``pairs="all"``); DESMIL's unit of
independence is the interest, so ``pairs="cross_interest"`` keeps only pairs of
coordinates of two different interests (coordinates grouped ``group_size`` at a time).

:class:`DecorrelationWeights` learns the weights of one batch (``weight_learner``): logits
θ = 1 for the batch, concatenated with a memory of earlier batches' features and logits;
``steps`` SGD steps (lr ``lr``, ×0.1 after half of them, momentum 0.9) on
HSIC_{softmax([θ, θ_mem])}(features ‖ memory) / λ_p + Σ_b softmax(θ)_b^{decay_pow}, the RFF
drawn afresh at each step as the code does; then the memory is updated (running mean over
the first ``warmup`` batches, then an EMA with ratio ``memory_ratio``) and the batch's
weights softmax(θ) (summing to 1) are returned. The features carry no gradient: only θ moves.

``standardize`` (not in StableNet) z-scores every coordinate over the rows of the HSIC
(batch + memory) before the Fourier features. The RFF kernel has a fixed bandwidth
(ω ~ N(0, 1)), so it only sees dependence at the scale of unit-variance inputs: on a
ResNet's 512 ReLU features (StableNet) that holds roughly, but retrieval interests live at
embedding scale (~0.02 per coordinate at init), where ωx + β ≈ β is the same for every
sample and the weighted HSIC is ~1e-8, so the weights never leave uniform
(bench/results/desmil_cost.json). Standardising is the bandwidth choice of the kernel
(the median-distance heuristic's role), not a change of the estimator.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

PAIRS = ("cross_interest", "all")


def fourier_draws(coordinates: int, num_features: int, device=None,
                  generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """(ω [q], β [F, q]) as the code draws them (``w ~ randn(num_f, 1)``, ``b ~ 2π·rand(r, num_f)``)."""
    omega = torch.randn(num_features, generator=generator, device=device)
    beta = 2 * math.pi * torch.rand(coordinates, num_features, generator=generator, device=device)
    return omega, beta


def random_fourier_features(x: Tensor, omega: Tensor, beta: Tensor, rescale: bool = True,
                            sum_cos_sin: bool = True) -> Tensor:
    """x [n, F], ω [q], β [F, q] → φ [n, F, q] (``sum_cos_sin``) or [n, F, 2q].

    ``rescale``: the code's min–max map of ωx + β over the coordinates of each sample and
    draw into [0, π/2] (a constant row maps to 0 rather than dividing by zero)."""
    q = omega.shape[0]
    mid = x.unsqueeze(-1) * omega + beta                                          # [n, F, q]
    if rescale:
        mid = mid - mid.min(dim=1, keepdim=True).values
        mid = mid / mid.max(dim=1, keepdim=True).values.clamp_min(torch.finfo(mid.dtype).tiny)
        mid = mid * (math.pi / 2)
    scale = math.sqrt(2.0 / q)
    if sum_cos_sin:
        return scale * (torch.cos(mid) + torch.sin(mid))
    return scale * torch.cat([torch.cos(mid), torch.sin(mid)], dim=-1)


def weighted_covariance(phi: Tensor, weights: Tensor) -> Tensor:
    """phi [n, F], weights [n] (Σ = 1) → C [F, F] = (w φ)ᵀ φ − (Σ w φ)(Σ w φ)ᵀ."""
    w = weights.unsqueeze(1)
    mean = (w * phi).sum(0)
    return (w * phi).T @ phi - torch.outer(mean, mean)


def pair_mask(coordinates: int, group_size: int, pairs: str, device=None) -> Tensor:
    """[F, F] float: 1 on the coordinate pairs the HSIC sums over."""
    if pairs not in PAIRS:
        raise ValueError(f"pairs must be one of {PAIRS}, got {pairs!r}")
    index = torch.arange(coordinates, device=device)
    if pairs == "all":
        return (index[:, None] != index[None, :]).float()
    group = index // group_size
    return (group[:, None] != group[None, :]).float()


def rff_hsic(x: Tensor, weights: Tensor, omega: Tensor, beta: Tensor, mask: Tensor, rescale: bool = True,
             sum_cos_sin: bool = True) -> Tensor:
    """The weighted RFF-HSIC of the module docstring: x [n, F], weights [n] → scalar."""
    phi = random_fourier_features(x, omega, beta, rescale, sum_cos_sin)           # [n, F, q']
    total = x.new_zeros(())
    for j in range(phi.shape[-1]):
        c = weighted_covariance(phi[:, :, j], weights)
        total = total + (c.pow(2) * mask).sum()
    return total


class DecorrelationWeights(nn.Module):
    """features [B, F] (no gradient) → weights [B] summing to 1 (see the module docstring).

    Args:
        feature_dim: F.
        group_size: coordinates per interest (D) for ``pairs="cross_interest"``.
        pairs: ``cross_interest`` (DESMIL's interests) or ``all`` (StableNet).
        num_fourier: q (``num_f``, 1).
        sum_cos_sin: ``sum=True`` of the code (cos + sin) or the concatenation.
        rescale: the code's per-sample min–max rescaling of the Fourier arguments.
        steps: inner SGD steps (``epochb``, 20).
        lr: inner learning rate (``lrbl``, 1.0), ×0.1 after half of the steps.
        momentum: 0.9.
        lambda_p: λ_p dividing the HSIC (``lambdap``, 70).
        decay_pow: power of the weight penalty Σ w^p (``decay_pow``, 2).
        memory: rows of the feature/weight memory (``n_feature``, 128); 0 = none.
        memory_ratio: EMA ratio of the memory (``presave_ratio``, 0.9).
        warmup: batches averaged into the memory before the EMA starts (10: ``iter < 10``).
        standardize: z-score each coordinate over the HSIC's rows first (not in StableNet;
            see the module docstring).
    """

    def __init__(self, feature_dim: int, group_size: int, pairs: str = "cross_interest", num_fourier: int = 1,
                 sum_cos_sin: bool = True, rescale: bool = True, steps: int = 20, lr: float = 1.0,
                 momentum: float = 0.9, lambda_p: float = 70.0, decay_pow: float = 2.0, memory: int = 128,
                 memory_ratio: float = 0.9, warmup: int = 10, standardize: bool = True) -> None:
        super().__init__()
        if num_fourier < 1 or steps < 0 or memory < 0 or lambda_p <= 0 or not 0 <= memory_ratio <= 1:
            raise ValueError("num_fourier >= 1, steps >= 0, memory >= 0, lambda_p > 0, memory_ratio in [0, 1]")
        self.register_buffer("mask", pair_mask(feature_dim, group_size, pairs), persistent=False)
        self.num_fourier, self.sum_cos_sin, self.rescale = num_fourier, sum_cos_sin, rescale
        self.steps, self.lr, self.momentum = steps, lr, momentum
        self.lambda_p, self.decay_pow = lambda_p, decay_pow
        self.memory_ratio, self.warmup, self.standardize = memory_ratio, warmup, standardize
        # training state, saved with checkpoints as StableNet's pre_features / pre_weight1
        self.register_buffer("memory_features", torch.zeros(memory, feature_dim))
        self.register_buffer("memory_logits", torch.ones(memory))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def hsic(self, features: Tensor, weights: Tensor, draws: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        """Weighted RFF-HSIC of ``features`` [n, F] (fresh draws unless given; z-scored
        over the n rows first with ``standardize``)."""
        if self.standardize:
            std = features.std(dim=0, unbiased=False, keepdim=True)
            features = (features - features.mean(dim=0, keepdim=True)) / std.clamp_min(1e-12)
        omega, beta = draws if draws is not None else fourier_draws(features.shape[1], self.num_fourier,
                                                                    features.device)
        return rff_hsic(features, weights, omega, beta, self.mask, self.rescale, self.sum_cos_sin)

    def objective(self, logits: Tensor, features: Tensor) -> Tensor:
        """HSIC over batch + memory / λ_p + Σ softmax(θ_batch)^p."""
        all_features = torch.cat([features, self.memory_features])
        all_weights = torch.softmax(torch.cat([logits, self.memory_logits]), dim=0)
        penalty = torch.softmax(logits, dim=0).pow(self.decay_pow).sum()
        return self.hsic(all_features, all_weights) / self.lambda_p + penalty

    def forward(self, features: Tensor) -> Tensor:
        features = features.detach()
        logits = torch.ones(features.shape[0], device=features.device, dtype=features.dtype, requires_grad=True)
        if self.steps:
            optimizer = torch.optim.SGD([logits], lr=self.lr, momentum=self.momentum)
            with torch.enable_grad():
                for step in range(self.steps):
                    for group in optimizer.param_groups:       # StableNet's lr_setter(bl=True)
                        group["lr"] = self.lr * 0.1 ** (step // (self.steps * 0.5))
                    optimizer.zero_grad()
                    self.objective(logits, features).backward()
                    optimizer.step()
        logits = logits.detach()
        self.update_memory(features, logits)
        return torch.softmax(logits, dim=0)

    @torch.no_grad()
    def update_memory(self, features: Tensor, logits: Tensor) -> None:
        size = self.memory_features.shape[0]
        if size == 0:
            return
        n = min(size, features.shape[0])           # a batch larger than the memory: its first rows
        step = int(self.updates)
        if step < self.warmup:                     # running mean of the first batches
            self.memory_features[:n] = (self.memory_features[:n] * step + features[:n]) / (step + 1)
            self.memory_logits[:n] = (self.memory_logits[:n] * step + logits[:n]) / (step + 1)
        else:
            r = self.memory_ratio
            self.memory_features[:n] = self.memory_features[:n] * r + features[:n] * (1 - r)
            self.memory_logits[:n] = self.memory_logits[:n] * r + logits[:n] * (1 - r)
        self.updates += 1
