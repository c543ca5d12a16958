"""What every model shares: the feature sizes it is built for and what forward returns."""

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
