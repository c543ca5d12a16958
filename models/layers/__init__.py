"""Small, typed building blocks shared by the models."""

from .activations import Dice, make_activation
from .attention import ActivationUnitAttention
from .embedding import BehaviorEmbedding
from .mlp import MLP
from .pooling import masked_mean, masked_sum

__all__ = ["ActivationUnitAttention", "BehaviorEmbedding", "Dice", "MLP", "make_activation", "masked_mean",
           "masked_sum"]
