"""Turning a Batch into embedded tensors: behaviours (target and history) and the
user-profile / context fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from recsys.contract import Batch, FeatureSpec
from recsys.errors import ConfigError

from .layers.embedding import BehaviorEmbedding
from .layers.features import FeatureEmbedding, ItemSideTable
from .layers.pooling import pool_sequence


@dataclass
class EmbeddedBatch:
    """target [B, D]; history [B, L, D] (padded) or [N, D] (jagged); lengths [B];
    offsets [B + 1] for jagged batches, else None."""

    target: Tensor
    history: Tensor
    lengths: Tensor
    offsets: Optional[Tensor]

    def pooled(self, mode: str = "sum") -> Tensor:
        """Σ_j h_j ("sum") or its mean ("mean") per row, [B, D], either layout."""
        return pool_sequence(self.history, self.lengths, self.offsets, mode)


def embed_batch(embedding: BehaviorEmbedding, batch: Batch, item_side: Optional[ItemSideTable] = None) -> EmbeddedBatch:
    """e(target) and e(history) with the same embedding (side fields through the item ids)."""
    return EmbeddedBatch(
        target=embedding(batch.target_item, batch.target_category, item_side),
        history=embedding(batch.hist_item, batch.hist_category, item_side),
        lengths=batch.lengths,
        offsets=batch.offsets,
    )


def embedding_l2(embedding: BehaviorEmbedding, batch: Batch, weight: float, mode: str) -> Tensor:
    """weight × the embedding L2 penalty over the ids of a batch (targets and histories)."""
    if weight <= 0:
        return embedding.item.weight.new_zeros(())
    items = torch.cat([batch.target_item, batch.hist_item.reshape(-1)])
    categories = torch.cat([batch.target_category, batch.hist_category.reshape(-1)])
    return weight * embedding.penalty(mode, items, categories)


def user_and_context_fields(features: FeatureSpec) -> List[str]:
    """The user-profile side fields, then the context fields, in spec order (the per-sample
    fields beside the behaviours; the user id itself is not among them)."""
    return [f.name for f in features.of("user", side_only=True)] + [f.name for f in features.of("context")]


def field_values(batch: Batch, features: FeatureSpec, name: str):
    """The batch's values of a user-owned (``batch.profile``) or context (``batch.context``) field."""
    owner = features[name].owner
    store = batch.profile if owner == "user" else batch.context
    if name not in store:
        where = "profile" if owner == "user" else "context"
        raise ConfigError(f"the model is built for {owner} field {name!r} but the batch has no {where}[{name!r}] "
                          f"(it has {sorted(store)}); the loader must gather every configured field")
    return store[name]


def embed_fields(embedding: FeatureEmbedding, batch: Batch, features: FeatureSpec, names: Sequence[str]) -> List[Tensor]:
    """[B, W_f] per profile / context field ``names``."""
    return [embedding.embed(name, field_values(batch, features, name)) for name in names]


def profile_embedding(features: FeatureSpec, names: List[str], behaviours: BehaviorEmbedding, dim: int,
                      init_std: float, pooling: str,
                      shared: Optional[Mapping[str, nn.Embedding]] = None) -> Optional[FeatureEmbedding]:
    """The profile / context fields' embedding (None when there are none); a field naming a
    table of the behaviour embedding (item, category, ...) or of ``shared`` (the model's
    user table) uses that table."""
    if not names:
        return None
    tables = {features[n].table for n in names if features[n].embedded}
    available = {t: behaviours.table(t) for t in tables if behaviours.has_table(t)}
    available.update({t: table for t, table in (shared or {}).items() if t in tables})
    return FeatureEmbedding(features, names, dim, init_std=init_std, pooling=pooling, shared=available)


def profile_l2(embedding: BehaviorEmbedding, fields: Optional[FeatureEmbedding], batch: Batch, weight: float,
               mode: str) -> Tensor:
    """DIN / BaseModel embedding L2: the behaviour tables by ``mode``, plus the profile /
    context tables in "full" mode."""
    total = embedding_l2(embedding, batch, weight, mode)
    if weight > 0 and mode == "full" and fields is not None:
        total = total + weight * fields.penalty()
    return total


def sample_field_values(batch: Batch, features: FeatureSpec, item_side: Optional[ItemSideTable], name: str):
    """One value per sample of any field that has one: the user id, the target's item,
    category and item side fields (through the target item), profile and context fields.
    Event fields other than item/category (``behavior``, ...) belong to history behaviours,
    not to a sample: an error."""
    spec = features[name]
    if name == "user":
        return batch.user
    if name in ("item", "category"):
        return batch.target[name]
    if spec.owner == "item":
        if item_side is None:
            raise ConfigError(f"item field {name!r} needs the model's item side table")
        return item_side.lookup(name, batch.target_item)
    if spec.owner in ("user", "context"):
        return field_values(batch, features, name)
    raise ConfigError(f"field {name!r} is a per-behaviour ({spec.owner}) field: a sample has no single value of it")


def check_sample_fields(features: FeatureSpec, names: Sequence[str], where: str) -> None:
    """ConfigError naming the first field of ``names`` that is unknown or has no per-sample value."""
    for name in names:
        if name not in features:
            raise ConfigError(f"{where}: field {name!r} is not in the run's fields "
                              f"{[f.name for f in features.fields]}")
        spec = features[name]
        if spec.owner == "event" and name not in ("item", "category"):
            raise ConfigError(f"{where}: field {name!r} is a per-behaviour field with no per-sample value; "
                              "use user, item, category, item side, profile or context fields")
