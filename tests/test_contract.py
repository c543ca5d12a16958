"""The feature contract (recsys.contract): field specs, feature spec, jagged ids, keyed batch."""

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.contract import Batch, ContractError, FeatureSpec, FieldSpec, Jagged, core_fields


def spec_with_side_fields() -> FeatureSpec:
    return FeatureSpec(core_fields(10, 20, 5, 8) + (
        FieldSpec("genres", "ids", "item", size=7, max_values=3),
        FieldSpec("brand", "id", "item", table="attribute", size=9),
        FieldSpec("maker", "id", "item", table="attribute", size=9),
        FieldSpec("age", "number", "user", mean=30.0, std=10.0),
        FieldSpec("text", "dense", "item", size=16, frozen=True),
        FieldSpec("hour", "id", "context", size=26),
    ), max_length=12)


def test_field_spec_rejects_what_makes_no_sense():
    with pytest.raises(ContractError, match="kind must be one of"):
        FieldSpec("x", "float", "item", size=3)
    with pytest.raises(ContractError, match="owner must be one of"):
        FieldSpec("x", "id", "shop", size=3)
    with pytest.raises(ContractError, match="needs size >= 2"):
        FieldSpec("x", "ids", "item", size=1)
    with pytest.raises(ContractError, match="only dense fields can be frozen"):
        FieldSpec("x", "id", "item", size=3, frozen=True)
    with pytest.raises(ContractError, match="std > 0"):
        FieldSpec("x", "number", "user", std=0.0)
    assert FieldSpec("x", "number", "user").size == 1
    assert FieldSpec("genres", "ids", "item", size=4).table == "genres"


def test_feature_spec_round_trips_and_reads_the_legacy_form():
    spec = spec_with_side_fields()
    again = FeatureSpec.from_dict(spec.to_dict())
    assert again == spec and hash(again) == hash(spec)
    legacy = FeatureSpec.from_dict({"num_users": 10, "num_items": 20, "num_categories": 5, "num_behaviors": 8,
                                    "max_length": 12})
    assert legacy == FeatureSpec(num_users=10, num_items=20, num_categories=5, num_behaviors=8, max_length=12)
    assert (legacy.num_users, legacy.num_items, legacy.num_categories, legacy.num_behaviors) == (10, 20, 5, 8)
    with pytest.raises(ContractError, match="unknown key"):
        FeatureSpec.from_dict({"max_length": 3, "fields": [{"name": "user", "kind": "id", "owner": "user",
                                                             "size": 4, "colour": 1}]})
    with pytest.raises(AttributeError, match="immutable"):
        spec.max_length = 3


def test_feature_spec_checks_core_fields_duplicates_and_shared_tables():
    with pytest.raises(ContractError, match="missing"):
        FeatureSpec(core_fields(10, 20, 5)[:3])
    with pytest.raises(ContractError, match="duplicate"):
        FeatureSpec(core_fields(10, 20, 5) + (FieldSpec("item", "id", "item", size=20),))
    with pytest.raises(ContractError, match="share table"):
        FeatureSpec(core_fields(10, 20, 5) + (FieldSpec("a", "id", "item", table="t", size=3),
                                              FieldSpec("b", "id", "item", table="t", size=4)))


def test_select_keeps_the_core_fields_plus_the_named_ones():
    spec = spec_with_side_fields()
    assert [f.name for f in spec.select(None).fields] == ["user", "item", "category", "behavior"]
    assert spec.select([]) == spec.select(None)
    chosen = spec.select(["hour", "genres"], max_length=5)
    assert [f.name for f in chosen.fields] == ["user", "item", "category", "behavior", "genres", "hour"]
    assert chosen.max_length == 5
    assert [f.name for f in spec.of("item", side_only=True)] == ["genres", "brand", "maker", "text"]
    assert spec.table_sizes()["attribute"] == 9
    with pytest.raises(ContractError, match="not in the data"):
        spec.select(["colour"])


def test_jagged_to_padded():
    rows = [[3, 4], [], [5, 6, 7]]
    jagged = Jagged.from_lists(rows)
    assert jagged.lengths.tolist() == [2, 0, 3]
    assert jagged.to_padded().tolist() == [[3, 4, 0], [0, 0, 0], [5, 6, 7]]
    assert jagged.to_padded(4).shape == (3, 4)


def padded_batch(lengths, length=5, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    b = len(lengths)
    return Batch(user=torch.arange(b), label=torch.ones(b), lengths=lengths,
                 target={"item": torch.randint(2, 20, (b,), generator=g), "category": torch.randint(2, 5, (b,))},
                 history={"item": torch.randint(2, 20, (b, length), generator=g) * mask,
                          "category": torch.randint(2, 5, (b, length), generator=g) * mask,
                          "behavior": mask.long()},
                 profile={"age": torch.rand(b, generator=g),
                          "tags": Jagged.from_lists([[2] * (i % 3) for i in range(b)])},
                 context={"hour": torch.randint(2, 26, (b,), generator=g)})


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_padded_and_jagged_round_trip_every_history_field(lengths):
    batch = padded_batch(lengths)
    jagged = batch.to_jagged()
    assert jagged.is_jagged and jagged.offsets.tolist()[-1] == sum(lengths)
    back = jagged.to_padded(5)
    for name in batch.history:
        assert torch.equal(back.history[name], batch.history[name]), name
    assert back.profile["tags"] is batch.profile["tags"] and back.context == batch.context


def test_named_fields_read_and_write_the_keyed_dicts():
    batch = padded_batch([2, 0, 5])
    assert batch.hist_item is batch.history["item"] and batch.target_item is batch.target["item"]
    assert batch.hist_timestamp is None
    batch.hist_timestamp = torch.zeros(3, 5, dtype=torch.long)
    assert "timestamp" in batch.history
    legacy = Batch(user=batch.user, label=batch.label, lengths=batch.lengths, target_item=batch.target_item,
                   target_category=batch.target_category, hist_item=batch.hist_item,
                   hist_category=batch.hist_category)
    assert torch.equal(legacy.history["category"], batch.hist_category)
    with pytest.raises(ContractError, match="given twice"):
        Batch(user=batch.user, label=batch.label, lengths=batch.lengths, target=batch.target,
              target_item=batch.target_item, history=batch.history)
    with pytest.raises(ContractError, match="needs history"):
        Batch(user=batch.user, label=batch.label, lengths=batch.lengths, target=batch.target)


def test_slice_replace_and_to_keep_every_field():
    batch = padded_batch([2, 0, 5, 1])
    part = batch.slice(1, 3)
    assert part.size == 2 and part.lengths.tolist() == [0, 5]
    assert part.profile["tags"].to_padded(2).tolist() == [[2, 0], [2, 2]]
    assert torch.equal(part.context["hour"], batch.context["hour"][1:3])
    changed = batch.replace(hist_item=torch.zeros_like(batch.hist_item), label=torch.zeros(4))
    assert changed.hist_item.sum() == 0 and changed.label.sum() == 0 and batch.label.sum() == 4
    moved = batch.to("cpu")
    assert torch.equal(moved.profile["tags"].values, batch.profile["tags"].values)
    with pytest.raises(ContractError, match="no attribute"):
        batch.replace(colour=1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=6), st.data())
def test_take_gathers_rows_jagged_fields_included(lengths, data):
    batch = padded_batch(lengths)
    rows = data.draw(st.lists(st.integers(0, len(lengths) - 1), max_size=10))
    taken = batch.take(torch.tensor(rows, dtype=torch.int64))
    assert taken.size == len(rows)
    tags = batch.profile["tags"]
    expected = [tags.values[int(tags.offsets[r]):int(tags.offsets[r + 1])].tolist() for r in rows]
    got = taken.profile["tags"]
    assert [got.values[int(got.offsets[i]):int(got.offsets[i + 1])].tolist() for i in range(len(rows))] == expected
    for name in batch.history:
        assert torch.equal(taken.history[name], batch.history[name][rows])
    assert torch.equal(taken.context["hour"], batch.context["hour"][rows])
    assert torch.equal(taken.lengths, batch.lengths[rows])


def test_the_contract_imports_only_torch():
    code = ("import sys, recsys.contract, recsys.errors\n"
            "heavy = [m for m in ('pyarrow', 'lightning', 'pandas', 'numpy.lib.recfunctions', 'recsys.models', "
            "'recsys.data_pipelines') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
