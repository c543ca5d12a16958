"""DESMIL: DEep Stable Multi-Interest Learning (Liu, Luo, Zeng, Liu, Chang, Kong, Chen,
"Improving Multi-Interest Network with Stable Learning", arXiv 2207.07910, 2022; journal
follow-up "Deep Stable Multi-Interest Learning for Out-of-distribution Sequential
Recommendation", arXiv 2304.05615).

**No public code exists; this is a reconstruction** (design note models-b.md §1): a
ComiRec-SA backbone whose training samples are reweighted, StableNet-style, so that the
interests extracted from a batch become independent. Every choice and the sentence it
rests on:

=============================  =============================================================
choice                         rests on
=============================  =============================================================
ComiRec-SA extractor           follow-up abstract: the interests are produced by an
                               "attentive" extractor; ComiRec-SA is the attentive
                               multi-interest extractor of the field (models/comirec.py).
hard readout of one interest   follow-up: "the single most important interest is used for
in training                    prediction" = ComiRec's argmax <v_k, e_t> readout.
per-sample weights w           seed abstract: DESMIL "learns per-training-sample weights"
                               that remove the spurious dependencies between interests.
HSIC as the dependence         seed abstract: HSIC measures how dependent the captured
measure, RFF estimator         interests are; follow-up: "weighted HSIC-based correlation
                               loss". RFF as StableNet (``random_fourier_features_gpu``),
                               the reweighting method DESMIL builds on.
pairs = coordinates of two     seed: dependencies *between interests*; the unit of
different interests            independence is the interest (models-b.md §1(e));
                               ``pairs="all"`` is StableNet's every-off-diagonal-pair sum.
inner optimisation on          StableNet ``weight_learner``: θ = 1, 20 SGD steps (lr 1.0,
detached features              momentum 0.9, ×0.1 at half), objective HSIC/λ_p + Σ w²
                               with λ_p = 70, w = softmax(θ); ``cfeaturec.data.copy_``
                               detaches the features.
feature / weight memory        StableNet ``pre_features`` / ``pre_weight1``: 128 rows,
                               running mean over the first 10 batches, then EMA 0.9,
                               concatenated to the batch in the HSIC.
loss = Σ w_b ℓ_b               StableNet ``train.py``: ``criterion(output, target).view(1,
                               -1).mm(weight1)`` (weights sum to 1: a weighted mean).
no HSIC gradient into the      StableNet ``train_cnn_with_lossb = False``; the switch
encoder by default             ``hsic_weight`` > 0 adds α·HSIC_{w*}(V) as a regulariser
                               (aux loss ``hsic``, weight 1 in ``aux_loss_weights``).
serving = ComiRec's            the weights exist in training only; all K interests
                               retrieve (models-b.md §1(e)).
=============================  =============================================================

Features: Z = V.reshape(B, K·D), the batch's interests. The per-sample losses are the
retrieval task's sampled softmax (ComiRec's objective); the weights reach the task as
``RetrievalOutput.sample_weights``.

Deliberate departures (beyond the reconstruction itself):

* StableNet assumes the memory and the batch have the same size; a batch larger than the
  memory updates it with its first rows.
* The warm-up counts model updates (StableNet: ``epoch == 0 and iter < 10``, the same
  batches in a run that starts at epoch 0), and λ_p does not decay (StableNet's default
  ``lambda_decay_rate = 1`` makes its decay a no-op too).
* The min–max rescaling of the Fourier arguments guards a constant row against 0/0.
* ``standardize`` (default on) z-scores each interest coordinate over batch + memory
  before the Fourier features: StableNet's fixed-bandwidth RFF sees interests at
  embedding scale as constants (weighted HSIC ~1e-8, weights stay uniform to 4 decimals at
  λ_p = 70; bench/results/desmil_cost.json). ``standardize: false`` is StableNet's code.
* Only the SA backbone is implemented (the note's DR option is left out).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from recsys.contract import Batch

from .base import FeatureSpec, RetrievalOutput
from .comirec import ComiRecSA
from .layers.stable_weights import DecorrelationWeights, fourier_draws
from .registry import register


@register
class DESMIL(ComiRecSA):
    """ComiRec-SA with decorrelating sample weights in training (see module docstring).

    Args (besides ComiRec-SA's):
        reweight: learn the sample weights (False: plain ComiRec-SA, the ablation, which
            still logs ``hsic_uniform`` so both arms' dependence can be compared).
        pairs: ``cross_interest`` (default) or ``all`` (StableNet's pairs).
        num_fourier, sum_cos_sin, rescale: the random Fourier features (1, True, True).
        inner_steps, inner_lr, inner_momentum: the weight optimisation (20, 1.0, 0.9).
        lambda_p, decay_pow: HSIC divisor and weight-penalty power (70, 2).
        memory, memory_ratio, memory_warmup: the feature/weight memory (128, 0.9, 10).
        hsic_weight: α of the optional α·HSIC_{w*}(V) regulariser into the encoder (0).
        standardize: z-score the interest coordinates before the RFF (True; False = StableNet).
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 64, num_interests: int = 4,
                 hidden_factor: int = 4, positional: bool = True, item_fields: Optional[List[str]] = None,
                 item_init: str = "xavier_uniform", reweight: bool = True, pairs: str = "cross_interest",
                 num_fourier: int = 1, sum_cos_sin: bool = True, rescale: bool = True, inner_steps: int = 20,
                 inner_lr: float = 1.0, inner_momentum: float = 0.9, lambda_p: float = 70.0, decay_pow: float = 2.0,
                 memory: int = 128, memory_ratio: float = 0.9, memory_warmup: int = 10,
                 hsic_weight: float = 0.0, standardize: bool = True) -> None:
        super().__init__(features, embedding_dim=embedding_dim, num_interests=num_interests,
                         hidden_factor=hidden_factor, positional=positional, item_fields=item_fields,
                         item_init=item_init)
        if hsic_weight < 0:
            raise ValueError(f"hsic_weight must be >= 0, got {hsic_weight}")
        self.reweight, self.hsic_weight = reweight, hsic_weight
        self.reweighter = DecorrelationWeights(
            num_interests * embedding_dim, embedding_dim, pairs=pairs, num_fourier=num_fourier,
            sum_cos_sin=sum_cos_sin, rescale=rescale, steps=inner_steps, lr=inner_lr, momentum=inner_momentum,
            lambda_p=lambda_p, decay_pow=decay_pow, memory=memory, memory_ratio=memory_ratio, warmup=memory_warmup,
            standardize=standardize)

    def user_interests(self, batch: Batch) -> RetrievalOutput:
        """[B, K, D]; in training also ``sample_weights`` [B] (Σ = 1), the diagnostics
        ``hsic_uniform`` / ``hsic_weighted`` (the batch's RFF-HSIC across interests with equal
        and with the learned weights, one set of Fourier draws), ``weight_ess`` (effective
        sample size 1 / Σ w², as a share of B) and ``weight_max`` (B · max w), and, with
        ``hsic_weight``, the aux loss ``hsic``."""
        output = super().user_interests(batch)
        if not self.training:
            return output
        features = output.interests.reshape(output.interests.shape[0], -1)             # [B, K·D]
        if not self.reweight:     # the ablation = ComiRec-SA, still reporting how dependent its interests are
            output.diagnostics = self._diagnostics(features.detach(), None)
            return output
        weights = self.reweighter(features)
        output.sample_weights = weights
        output.diagnostics = self._diagnostics(features.detach(), weights)
        if self.hsic_weight > 0:
            output.aux_losses["hsic"] = self.hsic_weight * self.reweighter.hsic(features, weights)
        return output

    @torch.no_grad()
    def _diagnostics(self, features: Tensor, weights: Optional[Tensor]) -> dict:
        """Does the reweighting do its job (DESMIL's claim: a rising HSIC goes with worse
        results)? Both HSICs use the same draws, so their ratio is the weights' effect alone;
        without weights (``reweight: false``) only ``hsic_uniform``."""
        n = features.shape[0]
        draws = fourier_draws(features.shape[1], self.reweighter.num_fourier, features.device)
        uniform = torch.full((n,), 1.0 / n, dtype=features.dtype, device=features.device)
        if weights is None:
            return {"hsic_uniform": self.reweighter.hsic(features, uniform, draws)}
        return {"hsic_uniform": self.reweighter.hsic(features, uniform, draws),
                "hsic_weighted": self.reweighter.hsic(features, weights, draws),
                "weight_ess": 1.0 / (n * weights.pow(2).sum()),
                "weight_max": n * weights.max()}
