"""Turning a Batch into embedded target and history tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from recsys.contract import Batch

from .layers.embedding import BehaviorEmbedding


@dataclass
class EmbeddedBatch:
    """target [B, D]; history [B, L, D] (padded) or [N, D] (jagged); lengths [B];
    offsets [B + 1] for jagged batches, else None."""

    target: Tensor
    history: Tensor
    lengths: Tensor
    offsets: Optional[Tensor]

    def history_mask(self) -> Tensor:
        positions = torch.arange(self.history.shape[1], device=self.history.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)

    def pooled_sum(self) -> Tensor:
        """Σ_j h_j per row [B, D], either layout (padding rows are zero vectors anyway)."""
        if self.offsets is None:
            return (self.history * self.history_mask().unsqueeze(-1)).sum(1)
        owner = torch.repeat_interleave(torch.arange(self.lengths.shape[0], device=self.history.device), self.lengths)
        out = self.history.new_zeros((self.lengths.shape[0], self.history.shape[-1]))
        return out.index_add_(0, owner, self.history)

    def pooled_mean(self) -> Tensor:
        return self.pooled_sum() / self.lengths.clamp_min(1).unsqueeze(1).to(self.history.dtype)


def embed_batch(embedding: BehaviorEmbedding, batch: Batch) -> EmbeddedBatch:
    return EmbeddedBatch(
        target=embedding(batch.target_item, batch.target_category),
        history=embedding(batch.hist_item, batch.hist_category),
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
