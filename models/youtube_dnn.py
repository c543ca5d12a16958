"""YouTube DNN candidate generation (Covington, Adams, Sargin, "Deep Neural Networks for
YouTube Recommendations", RecSys 2016, §3, Fig. 3); ComiRec's single-interest baseline.

The user vector is a feed-forward tower over the averaged embeddings of the watch history::

    h_items = mean_{j < n} E_in[item_j]            [B, D]   (embedded, then averaged: §3.1)
    h_cats  = mean_{j < n} C_in[category_j]        [B, D]   (with use_category)
    u       = ReLU-tower([h_items ‖ h_cats])        [B, H]   ("depth" layers of ReLU, §3.3)
    score(u, i) = <u, E_out[i]>                             E_out [N, H]: the softmax weights

so ``user_interests`` returns K = 1 interest ``[B, 1, H]`` and ``item_embeddings`` is the
softmax weight table ``E_out``. Training is the paper's sampled softmax (a few thousand
negatives per example, importance-weighted): the retrieval task draws shared negatives
per batch, with the logQ correction for popularity sampling; serving is an inner-product
nearest-neighbour search over ``E_out`` (FAISS).

Defaults are the paper's: embeddings of 256 floats (§4.3) and the "depth 3" tower
1024 → 512 → 256 ReLU (Fig. 6), the user vector being the last ReLU layer's output, as in
Fig. 3. The config for Amazon Beauty uses ComiRec's sizes instead (64-wide, one layer).

Deliberate departures:

* Inputs are the history's items and their categories only. The paper also feeds search
  tokens, geography, age, gender and the "example age" feature, which the datasets we
  reproduce do not have (user-profile side fields are not used yet).
* ``share_item_embeddings=True`` ties the input table to the softmax weights, as ComiRec's
  DNN baseline does (the paper keeps them separate, the default here); it needs
  ``embedding_dim == hidden_units[-1]``.
* Tables are initialised ``N(0, embedding_init_std²)`` with a zero padding row (the paper
  does not say).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from recsys.contract import Batch

from .base import FeatureSpec, RetrievalModel, RetrievalOutput
from .layers.mlp import MLP
from .layers.pooling import pool_sequence
from .registry import register


@register
class YouTubeDNN(RetrievalModel):
    """Mean-pooled history → ReLU tower → one user vector (see module docstring).

    Args:
        features: the feature spec (vocabulary sizes) of the data.
        embedding_dim: width D of the history item (and category) embeddings.
        hidden_units: the ReLU tower; the last width H is the user / item vector width.
        use_category: also average the history's category embeddings.
        share_item_embeddings: use the input item table as the softmax weights (ComiRec).
        dropout: dropout after each tower layer.
        embedding_init_std: std of the embedding init; None = 1 / sqrt(width).
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 256, hidden_units: List[int] = [1024, 512, 256],
                 use_category: bool = True, share_item_embeddings: bool = False, dropout: float = 0.0,
                 embedding_init_std: Optional[float] = None) -> None:
        super().__init__(features)
        if not hidden_units:
            raise ValueError("hidden_units needs at least one layer (the user vector is its output)")
        if share_item_embeddings and embedding_dim != hidden_units[-1]:
            raise ValueError(f"share_item_embeddings needs embedding_dim ({embedding_dim}) == hidden_units[-1] "
                             f"({hidden_units[-1]})")
        self.item_input = _table(features.num_items, embedding_dim, embedding_init_std)
        self.category_input = _table(features.num_categories, embedding_dim, embedding_init_std) if use_category \
            else None
        in_dim = embedding_dim * (2 if use_category else 1)
        self.tower = MLP(in_dim, hidden_units, activation="relu", dropout=dropout)
        self.item_output = self.item_input if share_item_embeddings else \
            _table(features.num_items, hidden_units[-1], embedding_init_std)

    def user_interests(self, batch: Batch) -> RetrievalOutput:
        """[B, 1, H]: one interest per user, from the history only (never the target)."""
        pooled = [pool_sequence(self.item_input(batch.hist_item), batch.lengths, batch.offsets, mode="mean")]
        if self.category_input is not None:
            pooled.append(pool_sequence(self.category_input(batch.hist_category), batch.lengths, batch.offsets,
                                        mode="mean"))
        return RetrievalOutput(self.tower(torch.cat(pooled, dim=-1)).unsqueeze(1))

    def item_embeddings(self, items: Tensor) -> Tensor:
        """items [N] → the softmax weights [N, H]."""
        return self.item_output(items)


def _table(rows: int, dim: int, std: Optional[float]) -> nn.Embedding:
    table = nn.Embedding(rows, dim, padding_idx=0)
    nn.init.normal_(table.weight, std=dim ** -0.5 if std is None else std)
    with torch.no_grad():
        table.weight[0].zero_()
    return table
