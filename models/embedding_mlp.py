"""DIN's BaseModel: Embedding & MLP with a sum-pooled behaviour history.

The baseline of Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
KDD 2018, §4.2 and Table 3 ("BaseModel"): behaviours are embedded like DIN's (item ⊕
category) and summed into one fixed-length vector regardless of the candidate, then
concatenated with the candidate's embedding into the same MLP as DIN. It is the
pooled-history model DIN's target attention is measured against.

Departures: one logit + sigmoid instead of 2-way softmax; ``pooling="mean"`` is offered
besides the paper's sum. Side fields as in DIN (none in the setups we reproduce): item side
fields extend the behaviour embedding of the target and of every history behaviour;
user-profile and context fields are concatenated to the MLP input,
[pooled, v_t, profile..., context...]. A core-only spec is the first-phase model exactly.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from recsys.contract import Batch

from .base import FeatureSpec, RankingModel, RankingOutput
from .registry import register
from .inputs import embed_batch, embed_fields, profile_embedding, profile_l2, user_and_context_fields
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
        field_dim: width of each side field (item, profile, context); None = category_dim.
        ids_pooling: "mean" | "sum" over the ids of a multi-valued field.
    """

    def __init__(self, features: FeatureSpec, *, item_dim: int = 64, category_dim: int = 64,
                 pooling: str = "sum", mlp_units: List[int] = [200, 80], mlp_activation: str = "prelu",
                 dropout: float = 0.0, batch_norm: bool = False, l2_embedding: float = 0.0, l2_mode: str = "mba",
                 embedding_init_std: float = 1e-4, field_dim: Optional[int] = None,
                 ids_pooling: str = "mean") -> None:
        super().__init__(features)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', got {pooling!r}")
        self.embedding = BehaviorEmbedding(features, item_dim, category_dim, embedding_init_std,
                                           field_dim=field_dim, pooling=ids_pooling)
        self.pooling = pooling
        self.field_names = user_and_context_fields(features)
        self.fields = profile_embedding(features, self.field_names, self.embedding,
                                        category_dim if field_dim is None else field_dim, embedding_init_std,
                                        ids_pooling)
        in_dim = 2 * self.embedding.dim
        in_dim += sum(self.fields.width(name) for name in self.field_names) if self.fields is not None else 0
        self.mlp = MLP(in_dim, mlp_units, mlp_activation, dropout, batch_norm, output_dim=1)
        self.l2_embedding, self.l2_mode = l2_embedding, l2_mode

    def forward(self, batch: Batch) -> RankingOutput:
        emb = embed_batch(self.embedding, batch, self.item_side)
        parts = [emb.pooled(self.pooling), emb.target]
        if self.fields is not None:
            parts += embed_fields(self.fields, batch, self.features, self.field_names)
        return RankingOutput(logit=self.mlp(torch.cat(parts, dim=-1)).squeeze(-1))

    def regularization(self, batch: Batch) -> Tensor:
        return profile_l2(self.embedding, self.fields, batch, self.l2_embedding, self.l2_mode)

    def set_id_frequencies(self, item_counts: Tensor, category_counts: Tensor) -> None:
        self.embedding.set_frequencies(item_counts, category_counts)
