"""ComiRec (Cen, Zhang, Zou, Zhou, Yang, Tang, "Controllable Multi-Interest Framework for
Recommendation", KDD 2020): ComiRec-SA and ComiRec-DR, as THUDM/ComiRec ``src/model.py``.

Both embed the history with the item table E (padded positions zeroed) and extract K
interest vectors; the candidate side is the **same** table (the code's sampled softmax
uses ``mid_embeddings_var`` as its weights, bias zero and frozen)::

    ComiRec-SA:  V = softmax_L(W₂ tanh(W₁ (E + P)ᵀ)) · E          [B, K, D]   (§3.3, self-attentive)
    ComiRec-DR:  V = B2I-routing(E; W ∈ R^{L×(K·D)×D}, β₀ = 0, 3 iterations)   (§3.3, dynamic routing)
    score(u, i) = max_k <v_k, E[i]>                               (serving: every interest)

Training (the retrieval task): the interest with the largest inner product with the target
(hard label-aware readout, ``hard_readout=True`` in the code) against sampled negatives;
ComiRec's ``tf.nn.sampled_softmax_loss`` draws 10·B log-uniform ids with logQ correction
over popularity-ordered ids, i.e. ``retrieval.negatives: popularity``, ``num_negatives:
10 × batch_size``, ``logq_correction: true`` (the configs). The controllable aggregation
(λ-greedy diversity) is a test-time re-ranking of the retrieved set, not part of the model.

Defaults are the code's: D = 64, K = 4, SA hidden width 4·D with positions added to the
score, DR 3 iterations; the item table is Glorot-uniform (``get_variable``'s default).

Deliberate departures:

* Item side fields may be summed into the item vector (``item_fields``; default none, as
  the paper), on the history and candidate side alike.
* Jagged batches are padded to their longest row first; the per-position DR map and the
  positional table are indexed by position in the (oldest-first) history window, as the
  code's left-aligned, end-padded histories.
"""

from __future__ import annotations

from typing import List, Optional

from torch import Tensor

from recsys.contract import Batch

from .base import FeatureSpec, RetrievalModel, RetrievalOutput
from .layers.capsule import B2IRouting
from .layers.item_tower import ItemTower, embedded_history
from .layers.self_attentive import SelfAttentiveExtractor
from .registry import register


class _TiedItemModel(RetrievalModel):
    """One item table for history and candidates (``self.items``)."""

    def __init__(self, features: FeatureSpec, embedding_dim: int, item_fields: Optional[List[str]],
                 item_init: str) -> None:
        super().__init__(features)
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.items = ItemTower(features, embedding_dim, item_fields or (), init=item_init)

    def history(self, batch: Batch) -> "tuple[Tensor, Tensor]":
        """(E [B, L, D] padded entries zero, mask [B, L])."""
        return embedded_history(self.items, batch, self.item_side)

    def item_embeddings(self, items: Tensor) -> Tensor:
        """items [N] → [N, D] (the table the history is embedded with)."""
        return self.items(items, self.item_side)


@register
class ComiRecSA(_TiedItemModel):
    """Self-attentive multi-interest extractor (see module docstring).

    Args:
        features: the run's feature spec (``max_length`` sizes the positional table).
        embedding_dim: D (64 in the code).
        num_interests: K (4).
        hidden_factor: the tanh layer's width in units of D (4).
        positional: add learned positions to the attention score (``add_pos=True``).
        item_fields: item side fields summed into the item vectors (default none).
        item_init: init of the item table (``xavier_uniform``: TF's default).
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 64, num_interests: int = 4,
                 hidden_factor: int = 4, positional: bool = True, item_fields: Optional[List[str]] = None,
                 item_init: str = "xavier_uniform") -> None:
        super().__init__(features, embedding_dim, item_fields, item_init)
        if num_interests < 1:
            raise ValueError(f"num_interests must be >= 1, got {num_interests}")
        self.extractor = SelfAttentiveExtractor(embedding_dim, features.max_length, num_interests, hidden_factor,
                                                positional)

    def user_interests(self, batch: Batch) -> RetrievalOutput:
        """[B, K, D] from the history only."""
        history, mask = self.history(batch)
        return RetrievalOutput(self.extractor(history, mask))


@register
class ComiRecDR(_TiedItemModel):
    """Dynamic-routing multi-interest extractor (see module docstring).

    Args:
        features: the run's feature spec (``max_length`` sizes the per-position map).
        embedding_dim: D (64).
        num_interests: K (4).
        iterations: routing iterations (3).
        stop_gradient: route on a gradient-free ê in the intermediate iterations (True).
        item_fields: item side fields summed into the item vectors (default none).
        item_init: init of the item table (``xavier_uniform``).
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 64, num_interests: int = 4,
                 iterations: int = 3, stop_gradient: bool = True, item_fields: Optional[List[str]] = None,
                 item_init: str = "xavier_uniform") -> None:
        super().__init__(features, embedding_dim, item_fields, item_init)
        self.routing = B2IRouting(embedding_dim, features.max_length, num_interests, bilinear="per_position",
                                  iterations=iterations, routing_init="zeros", stop_gradient=stop_gradient)

    def user_interests(self, batch: Batch) -> RetrievalOutput:
        """[B, K, D] from the history only (deterministic: routing logits start at 0)."""
        history, mask = self.history(batch)
        return RetrievalOutput(self.routing(history, mask))
