"""What every model shares: the feature sizes it is built for and what forward returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch
from torch import Tensor, nn

from data_pipelines.batch import Batch


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes a model is built for; the training spine fills it from the data's vocabularies.

    Vocabulary sizes count padding (id 0) and unknown (id 1), so valid ids are
    ``0 .. num_x - 1``. ``max_length`` is the padded history length L the data was built with.
    """

    num_users: int
    num_items: int
    num_categories: int
    num_behaviors: int = 8
    max_length: int = 100

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "num_categories", "num_behaviors"):
            if getattr(self, name) < 2:
                raise ValueError(f"FeatureSpec.{name} must be >= 2 (padding 0 and unknown 1), got {getattr(self, name)}")
        if self.max_length < 1:
            raise ValueError(f"FeatureSpec.max_length must be >= 1, got {self.max_length}")


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
