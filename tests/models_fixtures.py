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


# ----------------------------------------------------------------- side fields
def side_spec(max_length: int = 6) -> FeatureSpec:
    """Core fields plus one field of every kind and owner: item side id / ids / number /
    frozen dense, an item field naming the ``item`` table and one sharing the ``genres``
    table, user-profile id / number / ids, and a context id and number."""
    from recsys.contract import FieldSpec, core_fields
    core = core_fields(30, 50, 9)
    side = (FieldSpec("brand", "id", "item", size=5),
            FieldSpec("genres", "ids", "item", size=6, max_values=3),
            FieldSpec("price", "number", "item", mean=10.0, std=2.0),
            FieldSpec("text", "dense", "item", size=4, frozen=True),
            FieldSpec("also_viewed", "id", "item", table="item", size=50),
            FieldSpec("moods", "ids", "item", table="genres", size=6, max_values=2),
            FieldSpec("age", "id", "user", size=7),
            FieldSpec("income", "number", "user", mean=3.0, std=0.5),
            FieldSpec("interests", "ids", "user", table="genres", size=6, max_values=4),
            FieldSpec("hour", "id", "context", size=25),
            FieldSpec("discount", "number", "context"))
    return FeatureSpec(core + side, max_length)


def side_tables(spec: FeatureSpec, seed: int = 0) -> dict:
    """Model-ready item side tables for ``side_spec`` (row 0 = the padding item: empty)."""
    g = torch.Generator().manual_seed(seed)
    n = spec.num_items
    genres = torch.randint(0, 6, (n, 3), generator=g)
    genres[genres < 2] = 0                               # some rows shorter, some empty
    genres = torch.sort(genres, dim=1, descending=True).values   # right-padded with 0
    moods = torch.randint(2, 6, (n, 2), generator=g)
    moods[::3, 1] = 0
    price = torch.rand(n, generator=g) * 20
    price[5] = float("nan")                              # a missing price
    tables = {"brand": torch.randint(2, 5, (n,), generator=g), "genres": genres, "price": price,
              "text": torch.randn(n, 4, generator=g), "also_viewed": torch.randint(2, n, (n,), generator=g),
              "moods": moods}
    for value in tables.values():
        value[0] = 0
    return tables


def side_batch(spec: FeatureSpec, batch: int = 8, length: int = 6, seed: int = 0) -> Batch:
    """``random_batch`` with the profile and context fields of ``side_spec``."""
    from recsys.contract import Jagged
    g = torch.Generator().manual_seed(seed + 100)
    core = random_batch(batch, length, seed, features=spec)
    income = torch.rand(batch, generator=g) * 6
    income[1] = float("nan")
    interests = Jagged.from_lists([[2, 3], [], [5], [4, 4, 2, 3], [2], [3, 5], [], [2, 3, 4]][:batch]
                                  + [[2]] * max(0, batch - 8))
    return core.replace(profile={"age": torch.randint(2, 7, (batch,), generator=g), "income": income,
                                 "interests": interests},
                        context={"hour": torch.randint(2, 25, (batch,), generator=g),
                                 "discount": torch.rand(batch, generator=g)})
