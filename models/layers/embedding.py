"""The behaviour embedding e(i) = [item ‖ category ‖ item side fields of i (‖ position)],
one class for DIN, its BaseModel, FinalMLP and each of DARE's embedding sets, with
padding row 0 and the embedding L2 penalties."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from recsys.contract import FeatureSpec
from recsys.errors import ConfigError

from .features import FeatureEmbedding, ItemSideTable

L2_MODES = ("mba", "batch", "full")


class BehaviorEmbedding(FeatureEmbedding):
    """e(i) = [E_item(i) ‖ E_cate(c) ‖ s_1(i) ‖ … ‖ s_S(i) (‖ E_pos(p))]: ids [...] → [..., D].

    The same function embeds the target and every history behaviour. ``s_f(i)`` is item
    side field f of item i (``features.of("item", side_only=True)``), looked up by item id
    in the model's :class:`ItemSideTable` and embedded by its kind (see ``FeatureEmbedding``);
    a core-only spec gives DIN's [item ‖ category] exactly. Row 0 of each id table is padding:
    zero and never updated (``padding_idx=0``). The optional position table (DARE's
    target-relative positions, position 0 = the target) has no padding row and comes last,
    so ``semantic_dim`` is the width before it.

    Args:
        features: the spec (item and category sizes; its item side fields are embedded).
        item_dim, category_dim: widths of the item and category tables.
        init_std: N(0, init_std²) init of the tables (None: the owner initialises).
        field_dim: width of each item side field (default ``category_dim``); fields sharing
            a table share its width.
        pooling: "mean" | "sum" for ids side fields.
        position_vocab, position_dim: the position table (0 = none).
        item_frequency, category_frequency: training counts for the MBA L2 (see below).
        frequencies: keep the MBA counts as buffers (False: no "mba" mode).

    L2 penalty (``penalty``), over the item and category tables:
        "mba"   DIN's mini-batch-aware regulariser: only rows present in the batch, each
                scaled by 1/n_j, its occurrence count in the training data (given as
                ``item_frequency`` / ``category_frequency`` at construction, e.g. the
                vocabulary counts, or later with ``set_frequencies``). Fallback when no
                counts are given: n_j = 1 for every id, i.e. exactly the "batch" mode;
                ids with a count of 0 (padding, unseen ids) are clamped to n_j = 1;
        "batch" squared norm of the rows present in the batch;
        "full"  squared norm of the whole tables (FuxiCTR's embedding_regularizer), side
                field tables, numeric vectors and dense projections included.
    """

    def __init__(self, features: FeatureSpec, item_dim: int, category_dim: int, init_std: Optional[float] = 1e-4, *,
                 field_dim: Optional[int] = None, pooling: str = "mean", position_vocab: int = 0,
                 position_dim: int = 0, item_frequency: Optional[Tensor] = None,
                 category_frequency: Optional[Tensor] = None, frequencies: bool = True) -> None:
        side = [f.name for f in features.of("item", side_only=True)]
        super().__init__(features, ["item", "category"] + side, category_dim if field_dim is None else field_dim,
                         dims={"item": item_dim, "category": category_dim}, init_std=init_std, pooling=pooling)
        self.side_fields = side
        self.position = nn.Embedding(position_vocab, position_dim) if position_vocab and position_dim else None
        self.widths: List[int] = [self.width(name) for name in self.fields] + \
                                 ([position_dim] if self.position is not None else [])
        self.position_dim = position_dim if self.position is not None else 0
        self.semantic_dim = sum(self.width(name) for name in self.fields)
        self.dim = self.semantic_dim + self.position_dim
        if frequencies:   # the MBA L2's counts (DARE's sets have no MBA term, hence no buffers)
            self.register_buffer("item_frequency", torch.ones(features.num_items), persistent=True)
            self.register_buffer("category_frequency", torch.ones(features.num_categories), persistent=True)
        if (item_frequency is None) != (category_frequency is None):
            raise ValueError("give both item_frequency and category_frequency, or neither")
        if item_frequency is not None:
            self.set_frequencies(item_frequency, category_frequency)

    def set_frequencies(self, item_counts: Tensor, category_counts: Tensor) -> None:
        """Training-set occurrence counts per id, [num_items] and [num_categories] (zeros are
        clamped to 1; negative or NaN counts are an error)."""
        for name, counts in (("item", item_counts), ("category", category_counts)):
            if not torch.is_tensor(counts):
                raise TypeError(f"{name} frequencies must be a tensor, got {type(counts).__name__}")
            if bool(torch.isnan(counts.float()).any()) or bool((counts < 0).any()):
                raise ValueError(f"{name} frequencies must be non-negative counts (found a negative or NaN)")
        if item_counts.shape != self.item_frequency.shape or category_counts.shape != self.category_frequency.shape:
            raise ValueError(f"frequency shapes {tuple(item_counts.shape)}, {tuple(category_counts.shape)} do not match "
                             f"the tables ({self.item_frequency.shape[0]}, {self.category_frequency.shape[0]})")
        self.item_frequency.copy_(item_counts.clamp_min(1).float())
        self.category_frequency.copy_(category_counts.clamp_min(1).float())

    def forward(self, items: Tensor, categories: Tensor, item_side: Optional[ItemSideTable] = None,
                positions: Optional[Tensor] = None) -> Tensor:
        """items, categories (and positions) [...] → [..., D]; ``item_side`` is the model's
        side table (needed when the spec has item side fields)."""
        parts = [self.item(items), self.category(categories)]
        if self.side_fields:
            if item_side is None:
                raise ConfigError(f"the behaviour embedding has item side fields {self.side_fields}: pass the "
                                  "model's item side table")
            parts += [self.embed(name, item_side.lookup(name, items)) for name in self.side_fields]
        if self.position is not None:
            if positions is None:
                raise ConfigError("this behaviour embedding has a position table: pass positions")
            parts.append(self.position(positions))
        return torch.cat(parts, dim=-1)

    def penalty(self, mode: str, items: Optional[Tensor] = None, categories: Optional[Tensor] = None) -> Tensor:
        """Σ ||w_j||² over the selected rows (scaled by 1/n_j for "mba"); padding excluded."""
        if mode not in L2_MODES:
            raise ValueError(f"unknown L2 mode {mode!r}; expected one of {L2_MODES}")
        if mode == "full":
            return super().penalty()
        if items is None or categories is None:
            raise ValueError(f"L2 mode {mode!r} needs the batch's item and category ids")
        if mode == "mba" and not hasattr(self, "item_frequency"):
            raise ValueError("this behaviour embedding keeps no id frequencies (frequencies=False): no 'mba' L2")
        total = self.item.weight.new_zeros(())
        frequency = (self.item_frequency, self.category_frequency) if mode == "mba" else (None, None)
        for table, freq, ids in ((self.item, frequency[0], items), (self.category, frequency[1], categories)):
            rows = torch.unique(ids)
            rows = rows[rows > 0]
            norms = table.weight[rows].pow(2).sum(-1)
            total = total + (norms / freq[rows] if mode == "mba" else norms).sum()
        return total
