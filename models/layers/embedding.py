"""Item ⊕ category embedding tables with padding row 0 and embedding L2 penalties."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

L2_MODES = ("mba", "batch", "full")


class BehaviorEmbedding(nn.Module):
    """e(i) = [E_item(i) ‖ E_cate(c(i))] as in DIN: ids [...] → [..., item_dim + category_dim].

    Row 0 of each table is padding: zero and never updated (``padding_idx=0``).

    L2 penalty (``penalty``):
        "mba"   DIN's mini-batch-aware regulariser: only rows present in the batch, each
                scaled by 1/n_j, its occurrence count in the training data (given as
                ``item_frequency`` / ``category_frequency`` at construction, e.g. the
                vocabulary counts, or later with ``set_frequencies``). Fallback when no
                counts are given: n_j = 1 for every id, i.e. exactly the "batch" mode;
                ids with a count of 0 (padding, unseen ids) are clamped to n_j = 1;
        "batch" squared norm of the rows present in the batch;
        "full"  squared norm of the whole tables (FuxiCTR's embedding_regularizer).
    """

    def __init__(self, num_items: int, num_categories: int, item_dim: int, category_dim: int,
                 init_std: float = 1e-4, item_frequency: Optional[Tensor] = None,
                 category_frequency: Optional[Tensor] = None) -> None:
        super().__init__()
        self.item = nn.Embedding(num_items, item_dim, padding_idx=0)
        self.category = nn.Embedding(num_categories, category_dim, padding_idx=0)
        for table in (self.item, self.category):
            nn.init.normal_(table.weight, std=init_std)
            with torch.no_grad():
                table.weight[0].zero_()
        self.register_buffer("item_frequency", torch.ones(num_items), persistent=True)
        self.register_buffer("category_frequency", torch.ones(num_categories), persistent=True)
        self.dim = item_dim + category_dim
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

    def forward(self, items: Tensor, categories: Tensor) -> Tensor:
        return torch.cat([self.item(items), self.category(categories)], dim=-1)

    def penalty(self, mode: str, items: Optional[Tensor] = None, categories: Optional[Tensor] = None) -> Tensor:
        """Σ ||w_j||² over the selected rows (scaled by 1/n_j for "mba"); padding excluded."""
        if mode not in L2_MODES:
            raise ValueError(f"unknown L2 mode {mode!r}; expected one of {L2_MODES}")
        if mode == "full":
            return self.item.weight[1:].pow(2).sum() + self.category.weight[1:].pow(2).sum()
        if items is None or categories is None:
            raise ValueError(f"L2 mode {mode!r} needs the batch's item and category ids")
        total = self.item.weight.new_zeros(())
        for table, freq, ids in ((self.item, self.item_frequency, items),
                                 (self.category, self.category_frequency, categories)):
            rows = torch.unique(ids)
            rows = rows[rows > 0]
            norms = table.weight[rows].pow(2).sum(-1)
            total = total + (norms / freq[rows] if mode == "mba" else norms).sum()
        return total
