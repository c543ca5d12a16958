"""DIN's BaseModel: Embedding & MLP with a sum-pooled behaviour history.

The baseline of Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
KDD 2018, §4.2 and Table 3 ("BaseModel"): behaviours are embedded like DIN's (item ⊕
category) and summed into one fixed-length vector regardless of the candidate, then
concatenated with the candidate's embedding into the same MLP as DIN. It is the
pooled-history model DIN's target attention is measured against.

Departures: one logit + sigmoid instead of 2-way softmax; no user-profile or context
fields (none in the setups we reproduce); ``pooling="mean"`` is offered besides the
paper's sum.
"""

from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from recsys.contract import Batch

from .base import FeatureSpec, RankingModel, RankingOutput
from .registry import register
from .inputs import embed_batch, embedding_l2
from .layers.embedding import BehaviorEmbedding
from .layers.mlp import MLP


@register
class EmbeddingMLP(RankingModel):
    """Pooled-history baseline (see module docstring).

    Args:
        features: vocabulary sizes from the data.
        item_dim, category_dim: embedding widths.
        pooling: "sum" (paper) or "mean".
        mlp_units, mlp_activation, dropout, batch_norm: the main MLP (as DIN's).
        l2_embedding, l2_mode: embedding L2 (as DIN's).
        embedding_init_std: std of the normal init of the embedding tables.
    """

    def __init__(self, features: FeatureSpec, *, item_dim: int = 64, category_dim: int = 64,
                 pooling: str = "sum", mlp_units: List[int] = [200, 80], mlp_activation: str = "prelu",
                 dropout: float = 0.0, batch_norm: bool = False, l2_embedding: float = 0.0, l2_mode: str = "mba",
                 embedding_init_std: float = 1e-4) -> None:
        super().__init__(features)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.embedding = BehaviorEmbedding(features.num_items, features.num_categories, item_dim, category_dim,
                                           embedding_init_std)
        self.pooling = pooling
        self.mlp = MLP(2 * self.embedding.dim, mlp_units, mlp_activation, dropout, batch_norm, output_dim=1)
        self.l2_embedding, self.l2_mode = l2_embedding, l2_mode

    def forward(self, batch: Batch) -> RankingOutput:
        emb = embed_batch(self.embedding, batch)
        pooled = emb.pooled_sum() if self.pooling == "sum" else emb.pooled_mean()
        return RankingOutput(logit=self.mlp(torch.cat([pooled, emb.target], dim=-1)).squeeze(-1))

    def regularization(self, batch: Batch) -> Tensor:
        return embedding_l2(self.embedding, batch, self.l2_embedding, self.l2_mode)

    def set_id_frequencies(self, item_counts: Tensor, category_counts: Tensor) -> None:
        self.embedding.set_frequencies(item_counts, category_counts)
