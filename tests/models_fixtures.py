"""Small batches and helpers shared by the tests/test_models_*.py files."""

from __future__ import annotations

from typing import Sequence

import torch

from recsys.contract import Batch
from recsys.models.base import FeatureSpec

FEATURES = FeatureSpec(num_users=30, num_items=50, num_categories=9, max_length=6)


def random_batch(batch: int = 8, length: int = 6, seed: int = 0, empty_rows: Sequence[int] = (0,),
                 features: FeatureSpec = FEATURES) -> Batch:
    """A right-padded batch with random ids >= 2, rows ``empty_rows`` without history."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    for r in empty_rows:
        lengths[r] = 0
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    items = torch.randint(2, features.num_items, (batch, length), generator=g) * mask
    categories = torch.randint(2, features.num_categories, (batch, length), generator=g) * mask
    return Batch(user=torch.randint(2, features.num_users, (batch,), generator=g),
                 target_item=torch.randint(2, features.num_items, (batch,), generator=g),
                 target_category=torch.randint(2, features.num_categories, (batch,), generator=g),
                 label=torch.randint(0, 2, (batch,), generator=g).float(),
                 lengths=lengths, hist_item=items, hist_category=categories,
                 hist_behavior=mask.long(), sample_index=torch.arange(batch))


def with_garbage_padding(batch: Batch, item: int = 7, category: int = 3) -> Batch:
    """The same batch with real ids written into every padded position."""
    mask = batch.history_mask()
    return batch.replace(hist_item=torch.where(mask, batch.hist_item, item),
                         hist_category=torch.where(mask, batch.hist_category, category))


def rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of a padded batch (training-mode BatchNorm/Dice need at least two)."""
    return batch.slice(start, stop)
