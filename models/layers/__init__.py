"""Small, typed building blocks shared by the models."""

from .activations import Dice, make_activation
from .attention import ActivationUnitAttention
from .embedding import BehaviorEmbedding
from .features import FeatureEmbedding, ItemSideTable
from .mlp import MLP
from .pooling import pool_sequence

__all__ = ["ActivationUnitAttention", "BehaviorEmbedding", "Dice", "FeatureEmbedding", "ItemSideTable", "MLP",
           "make_activation", "pool_sequence"]
