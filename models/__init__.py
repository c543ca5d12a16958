"""Ranking models (nn.Modules only): ``forward(batch) -> RankingOutput``.

DIN (Zhou et al., KDD 2018), its pooled-history BaseModel (``EmbeddingMLP``) and FinalMLP /
DualMLP (Mao et al., AAAI 2023); see docs/models.md for what each computes and its defaults.
"""

from .base import FeatureSpec, RankingModel, RankingOutput
from .din import DIN
from .embedding_mlp import EmbeddingMLP
from .finalmlp import FinalMLP

__all__ = ["DIN", "EmbeddingMLP", "FeatureSpec", "FinalMLP", "RankingModel", "RankingOutput"]
