"""Every ranking model by short name (configs may use the name or the full class path)."""

from __future__ import annotations

from typing import Dict, Type

from .base import RankingModel
from .dare import DARE
from .din import DIN
from .embedding_mlp import EmbeddingMLP
from .finalmlp import FinalMLP

MODELS: Dict[str, Type[RankingModel]] = {
    "DARE": DARE,
    "DIN": DIN,
    "EmbeddingMLP": EmbeddingMLP,
    "FinalMLP": FinalMLP,
}


def register(cls: Type[RankingModel]) -> Type[RankingModel]:
    """Decorator adding a model class to the registry (new model files use it)."""
    MODELS[cls.__name__] = cls
    return cls
