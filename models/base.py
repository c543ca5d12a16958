"""What every model shares: the feature spec it is built for and the two family contracts
(ranking: ``forward(batch) -> RankingOutput``; retrieval: interests ``[B, K, D]`` and an item tower)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import Tensor, nn

from recsys.contract import Batch, FeatureSpec


@dataclass
class RankingOutput:
    """logit: [B] (pre-sigmoid click score); aux_losses: named scalar losses the paper adds
    (the task weights and sums them with the BCE)."""

    logit: Tensor
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)


class RankingModel(nn.Module):
    """Base class of ranking models: ``forward(batch) -> RankingOutput``."""

    def __init__(self, features: FeatureSpec) -> None:
        super().__init__()
        self.features = features

    def forward(self, batch: Batch) -> RankingOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def regularization(self, batch: Batch) -> Tensor:
        """Extra penalty added to the loss (embedding L2, weight L2); zero by default."""
        return torch.zeros((), device=next(self.parameters()).device)


@dataclass
class RetrievalOutput:
    """interests: [B, K, D] user interest vectors (K = 1 for single-vector models);
    aux_losses: named scalar losses the paper adds (weighted and summed by the task)."""

    interests: Tensor
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)


class RetrievalModel(nn.Module):
    """Base class of retrieval (candidate generation) models.

    ``user_interests(batch) -> RetrievalOutput`` with interests ``[B, K, D]`` computed from
    the history (and profile/context fields) only, never from the target; the item tower
    ``item_embeddings(items [N]) -> [N, D]`` embeds any item ids (the whole vocabulary for
    the FAISS index and full-ranking evaluation, side fields included when configured).
    A user's score for item i is ``max_k <interest_k, item_i>`` (inner product).

    The training objective (sampled softmax, in-batch negatives, logQ correction) lives in
    the retrieval task; ``select_interest`` is the label-aware selection MIND and ComiRec use
    in training (the interest closest to the target), overridable by models that differ.
    """

    def __init__(self, features: FeatureSpec) -> None:
        super().__init__()
        self.features = features

    def user_interests(self, batch: Batch) -> RetrievalOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def item_embeddings(self, items: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_interest(self, interests: Tensor, target: Tensor) -> Tensor:
        """[B, K, D], target item vectors [B, D] → the interest with the largest inner
        product with the target, [B, D] (hard label-aware selection)."""
        scores = torch.einsum("bkd,bd->bk", interests, target)
        index = scores.argmax(dim=1)
        return interests[torch.arange(interests.shape[0], device=interests.device), index]

    def regularization(self, batch: Batch) -> Tensor:
        """Extra penalty added to the loss; zero by default."""
        return torch.zeros((), device=next(self.parameters()).device)
