"""Models (``nn.Module``s only), one file per paper, each registering itself by short name.

Ranking models: ``forward(batch) -> RankingOutput`` (DIN and its pooled-history BaseModel
``EmbeddingMLP``, FinalMLP / DualMLP, DARE and its baselines). Retrieval models:
``user_interests(batch) -> RetrievalOutput`` ``[B, K, D]`` plus an item tower. See
docs/models.md for what each computes and its defaults.

Importing this package imports every model module in it, so ``MODELS`` (short name →
class) is complete afterwards: a new model file decorated with ``@register`` needs no
other edit.
"""

import importlib
import pkgutil

from .base import FeatureSpec, RankingModel, RankingOutput, RetrievalModel, RetrievalOutput
from .registry import MODELS, family, register

_NOT_MODELS = {"base", "registry", "inputs", "layers"}

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_MODELS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FeatureSpec", "MODELS", "RankingModel", "RankingOutput", "RetrievalModel", "RetrievalOutput", "family",
           "register"]
