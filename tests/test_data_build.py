"""Build steps: vocabularies, timelines, samples on disk, atomic/no-op rebuilds, real datasets."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource, load_data_config
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.data_pipelines.rejections import DataError
from recsys.data_pipelines.vocab import Vocabulary, build_vocabulary
from tests.conftest import shared_dataset


def synthetic(tmp_path, rows=20_000, protocol=None, **source):
    src = SourceConfig(format="synthetic", synthetic=SyntheticSource(n_rows=rows, n_items=2_000, n_categories=40,
                                                                     mean_events=30.0, **source))
    return DataConfig(output=str(tmp_path / "ds"), source=src, protocol=protocol or ProtocolConfig(max_length=20),
                      partitions=3)


def test_vocabulary_ids_by_descending_frequency_with_pad_and_unknown(tmp_path):
    values = pa.array([7, 7, 7, 3, 3, 9, 5, 5, 5, 5, 11])
    vocab = build_vocabulary(values, min_count=2)
    assert vocab.raw.to_pylist() == [5, 7, 3]          # 4x, 3x, 2x; 9 and 11 are rare
    assert vocab.size == 5 and vocab.rare_values == 2 and vocab.rare_count == 2
    assert vocab.encode(pa.array([5, 7, 3, 9, 42, None])).tolist() == [2, 3, 4, 1, 1, 1]
    assert vocab.decode(np.array([0, 1, 2])).to_pylist() == [None, None, 5]
    vocab.save(tmp_path / "v.parquet")
    again = Vocabulary.load(tmp_path / "v.parquet")
    assert again.raw.equals(vocab.raw) and again.rare_count == 2
    ties = build_vocabulary(pa.array(["b", "a", "c", "a", "b"]))
    assert ties.raw.to_pylist() == ["a", "b", "c"]        # equal counts: raw id order


def test_build_writes_consistent_timelines_and_samples(tmp_path):
    out = build_dataset(synthetic(tmp_path), progress=False)
    ds = BuiltDataset(out)
    m = ds.manifest
    assert m["events"] == 20_000 and sum(m["rows_per_partition"]) == m["users"]
    timelines = ds.timelines()
    assert timelines.num_rows == m["users"]
    offsets = ds.flat("offsets")
    items = ds.flat("item")
    assert offsets[-1] == 20_000 == len(items)
    # timelines are time-sorted per user
    ts = ds.flat("timestamp")
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    assert np.all((np.diff(ts) >= 0) | (np.diff(owner) != 0))
    # the flat arrays are the timelines' list values, in row order
    assert np.array_equal(np.concatenate(timelines.column("items").to_pylist()), items)
    train = ds.samples("train")
    rows, cuts = train.column("row").to_numpy(), train.column("cut").to_numpy()
    assert np.all(cuts >= 1) and np.all(cuts < np.diff(offsets)[rows])
    positives = train.filter(pa.compute.equal(train.column("label"), 1))
    pos_rows, pos_cuts = positives.column("row").to_numpy(), positives.column("cut").to_numpy()
    assert np.array_equal(items[offsets[pos_rows] + pos_cuts], positives.column("target_item").to_numpy())
    assert m["split_users"]["test"] == m["users"]       # every user (>= 5 events) has a test pair


def test_rebuild_is_a_noop_and_a_different_config_needs_overwrite(tmp_path):
    config = synthetic(tmp_path)
    out = build_dataset(config, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert build_dataset(config, progress=False) == out
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    other = synthetic(tmp_path, protocol=ProtocolConfig(max_length=10))
    with pytest.raises(FileExistsError, match="different config"):
        build_dataset(other, progress=False)
    build_dataset(other, overwrite=True, progress=False)
    assert BuiltDataset(out).max_length == 10
    assert not list(tmp_path.glob(".ds.building-*"))      # no half-written leftovers


def test_half_written_output_is_never_taken_as_complete(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "junk.parquet").write_text("partial")
    with pytest.raises(FileExistsError, match="not a complete dataset"):
        build_dataset(synthetic(tmp_path), progress=False)


def test_a_source_with_only_bad_rows_fails_with_the_report(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,e\n1,2\n")
    config = DataConfig(output=str(tmp_path / "ds"), source=SourceConfig(format="taobao", paths=[str(bad)]),
                        max_reject_rate=1.0)
    with pytest.raises(DataError, match="bad.csv: none of its 2 lines was accepted"):
        build_dataset(config, progress=False)


def test_config_typos_and_wrong_types_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output: x\nprotocol:\n  nmae: din\n")
    with pytest.raises(ValueError, match=r"protocol: unknown key\(s\) \['nmae'\]"):
        load_data_config(path)
    path.write_text("output: x\nprotocol:\n  max_length: long\n")
    with pytest.raises(ValueError, match="protocol.max_length: expected int"):
        load_data_config(path)
    path.write_text("output: x\nprotocol:\n  name: sasrec\n")
    with pytest.raises(ValueError, match="protocol.name must be one of"):
        load_data_config(path)


def test_behaviour_filter_is_counted(tmp_path):
    config = synthetic(tmp_path)
    config.source.behaviors = ["pv"]
    m = BuiltDataset(build_dataset(config, progress=False)).manifest
    assert m["events"] + m["events_filtered_by_behavior"] == 20_000
    assert 0 < m["events_filtered_by_behavior"] < 4_000


@pytest.mark.parametrize("name,files,expected", [
    ("Beauty", ("Beauty.txt.gz", "Beauty_item2attributes.json.gz"), (22_363, 12_101, 198_502)),
    ("Toys", ("Toys_and_Games.txt.gz", "Toys_and_Games_item2attributes.json.gz"), (19_412, 11_924, 167_597)),
])
def test_real_s3rec_counts_match_source_md(tmp_path, name, files, expected):
    folder = shared_dataset("amazon_s3rec_5core")
    config = DataConfig(output=str(tmp_path / name), source=SourceConfig(format="s3rec",
                        paths=[str(folder / f) for f in files]), protocol=ProtocolConfig(name="din", max_length=50))
    ds = BuiltDataset(build_dataset(config, progress=False))
    users, items, events = expected
    assert ds.manifest["users"] == users and ds.num_items == items + 2 and ds.manifest["events"] == events
    lengths = np.diff(ds.flat("offsets"))
    assert lengths.min() == 5 and lengths.max() == (204 if name == "Beauty" else 550)
    assert ds.manifest["split_samples"]["test"] == 2 * users     # one (positive, negative) pair per user


def test_real_movielens_counts_and_labels(tmp_path):
    folder = shared_dataset("movielens_100k")
    config = DataConfig(output=str(tmp_path / "ml"), source=SourceConfig(format="movielens",
                        paths=[str(folder / "ml-100k.inter.gz"), str(folder / "ml-100k.item.gz")]),
                        protocol=ProtocolConfig(name="din", max_length=50))
    ds = BuiltDataset(build_dataset(config, progress=False))
    assert ds.manifest["events"] == 100_000 and ds.manifest["users"] == 943 and ds.num_items == 1_682 + 2
    assert ds.num_categories == 19 + 2          # 18 genres + "unknown" listed in the item file
    assert ds.manifest["split_samples"] == {"train": 100_000 - 3 * 943, "valid": 943, "test": 943}
    labels = ds.flat("label")
    assert abs(labels.mean() - 0.5536) < 1e-3   # 55,375 of 100,000 ratings are 4 or 5


def test_loader_batches_cover_the_split_once(tmp_path):
    ds = BuiltDataset(build_dataset(synthetic(tmp_path), progress=False))
    loader = SampleLoader(ds, "train", 512, shuffle=True, seed=3)
    seen = np.concatenate([b.sample_index.numpy() for b in loader])
    assert len(seen) == loader.num_samples and len(np.unique(seen)) == loader.num_samples
    assert len(loader) == int(np.ceil(loader.num_samples / 512))
    shards = [np.concatenate([b.sample_index.numpy() for b in SampleLoader(ds, "train", 512, rank=r, world_size=3)])
              for r in range(3)]
    assert len({len(s) for s in shards}) == 1                 # equal shards for DDP
    assert len(np.unique(np.concatenate(shards))) == sum(len(s) for s in shards)


def test_split_columns_match_the_parquet_samples(tmp_path):
    ds = BuiltDataset(build_dataset(synthetic(tmp_path), progress=False))
    for split in ("train", "valid", "test"):
        columns = ds.sample_columns(split)
        table = ds.samples(split)
        assert all(isinstance(v, np.memmap) for v in columns.values())     # not loaded into RAM
        for name, values in columns.items():
            assert values.dtype == table.column(name).type.to_pandas_dtype()
            assert np.array_equal(values, table.column(name).to_numpy()), (split, name)


def test_truncated_split_column_is_reported(tmp_path):
    ds = BuiltDataset(build_dataset(synthetic(tmp_path), progress=False))
    path = ds.path / "split_columns" / "train" / "cut.npy"
    header = np.lib.format.read_magic(open(path, "rb"))
    assert header == (1, 0)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError):
        ds.sample_columns("train")


def test_default_shuffle_is_uniform_up_to_the_limit_then_blocks(tmp_path, monkeypatch):
    import recsys.data_pipelines.loader as loader_module

    ds = BuiltDataset(build_dataset(synthetic(tmp_path), progress=False))
    n = ds.split_counts["train"]
    loader = SampleLoader(ds, "train", 64, shuffle=True, seed=5)
    assert loader.shuffle_block == n                    # one block: a uniform permutation
    order = loader._order()
    assert np.array_equal(np.sort(order), np.arange(n))
    # samples are user-sorted; a uniform order mixes the first and last users in the first batch
    assert order[:64].min() < n // 4 and order[:64].max() > 3 * n // 4
    monkeypatch.setattr(loader_module, "FULL_SHUFFLE_MAX_SAMPLES", n - 1)
    monkeypatch.setattr(loader_module, "DEFAULT_SHUFFLE_BLOCK", 97)
    assert SampleLoader(ds, "train", 64, shuffle=True, seed=5).shuffle_block == 97
    assert SampleLoader(ds, "train", 64, shuffle=True, seed=5, shuffle_block=13).shuffle_block == 13


@pytest.mark.parametrize("block", [1, 97, 1 << 16])
def test_block_shuffle_sees_every_sample_once_under_sharding(tmp_path, block):
    ds = BuiltDataset(build_dataset(synthetic(tmp_path), progress=False))
    n = ds.split_counts["train"]
    loader = SampleLoader(ds, "train", 64, shuffle=True, seed=5, shuffle_block=block)
    first = np.concatenate([b.sample_index.numpy() for b in loader])
    assert np.array_equal(np.sort(first), np.arange(n))
    assert not np.array_equal(first, np.arange(n))
    loader.set_epoch(1)
    second = np.concatenate([b.sample_index.numpy() for b in loader])
    assert np.array_equal(np.sort(second), np.arange(n)) and not np.array_equal(first, second)
    assert np.array_equal(loader._order(), second)
    shards = [np.concatenate([b.sample_index.numpy() for b in
                              SampleLoader(ds, "train", 64, shuffle=True, seed=5, rank=r, world_size=3,
                                           shuffle_block=block)]) for r in range(3)]
    union = np.concatenate(shards)
    assert {len(s) for s in shards} == {n // 3} and len(np.unique(union)) == len(union)
    blocks, starts = loader._block_layout()   # epoch 1: each block's samples stay together
    for k, b in enumerate(blocks):
        assert np.all(second[starts[k]:starts[k + 1]] // block == b)


def test_two_worker_build_is_identical_to_the_in_process_build(tmp_path):
    config = synthetic(tmp_path)
    one = Path(build_dataset(config, progress=False, workers=1))
    config.output = str(tmp_path / "two")
    two = Path(build_dataset(config, progress=False, workers=2))
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert any(str(f).startswith("split_columns") for f in files) and not (one / "_parts").exists()
    for f in files:
        if f.suffix == ".parquet":
            assert pq.read_table(one / f).equals(pq.read_table(two / f)), f
        elif f.name == "manifest.json":
            a, b = json.loads((one / f).read_text()), json.loads((two / f).read_text())
            a.pop("build_seconds"), b.pop("build_seconds")
            assert a == b
        else:
            assert (one / f).read_bytes() == (two / f).read_bytes(), f


def test_background_writer_keeps_order_and_raises_a_failed_write():
    from recsys.data_pipelines.build import BackgroundWriter
    done = []
    io = BackgroundWriter(max_pending=2)
    for i in range(20):
        io.submit(done.append, i)
    io.close()
    assert done == list(range(20))

    def fail():
        raise OSError("disk full")
    io = BackgroundWriter()
    io.submit(fail)
    with pytest.raises(OSError, match="disk full"):
        io.close()


def test_the_partition_cache_does_not_outlive_an_in_process_build(tmp_path):
    from recsys.data_pipelines import build as build_module
    from recsys.data_pipelines.config import DataConfig, SyntheticSource, SourceConfig
    config = DataConfig(output=str(tmp_path / "ds"), partitions=2,
                        source=SourceConfig(synthetic=SyntheticSource(n_rows=3000, n_items=200, n_categories=10)))
    build_module.build_dataset(config, progress=False)
    assert build_module._PARTITION_STATE == {}


def test_longest_prefix_samples_by_hand_and_against_a_groupby():
    import pandas as pd
    from hypothesis import given, settings, strategies as st

    from recsys.data_pipelines.loader import longest_prefix_samples
    rows = np.array([0, 0, 0, 2, 2, 5, 5, 5])
    cuts = np.array([1, 2, 3, 4, 4, 1, 3, 2])   # row 2: a positive and its negative at cut 4
    assert longest_prefix_samples(rows, cuts).tolist() == [2, 3, 4, 6]
    assert longest_prefix_samples(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 9)), min_size=1, max_size=200))
    def agrees(pairs):
        frame = pd.DataFrame(pairs, columns=["row", "cut"])
        expected = frame.index[frame["cut"] == frame.groupby("row")["cut"].transform("max")].to_numpy()
        got = longest_prefix_samples(frame["row"].to_numpy(), frame["cut"].to_numpy())
        assert np.array_equal(got, expected)

    agrees()


def test_loader_with_longest_prefixes_gives_each_user_one_history(tmp_path):
    ds = BuiltDataset(build_dataset(synthetic(tmp_path, protocol=ProtocolConfig(name="loo", max_length=20)),
                                    progress=False))
    cols = ds.sample_columns("train")
    every = SampleLoader(ds, "train", 64, shuffle=True, seed=3)
    longest = SampleLoader(ds, "train", 64, shuffle=True, seed=3, prefixes="longest")
    users = np.unique(cols["user"])
    assert every.num_samples == len(cols["row"]) > longest.num_samples == len(users)
    seen = np.concatenate([b.sample_index.numpy() for b in longest])
    assert np.array_equal(np.sort(seen), np.sort(longest._order()))
    assert len(np.unique(seen)) == len(seen) == len(users)       # each user once per epoch
    assert np.array_equal(np.sort(cols["user"][seen]), np.sort(users))
    largest = {}
    for row, cut in zip(cols["row"], cols["cut"]):
        largest[int(row)] = max(largest.get(int(row), 0), int(cut))
    assert all(int(cols["cut"][i]) == largest[int(cols["row"][i])] for i in seen)
    batch = next(iter(SampleLoader(ds, "train", 8, prefixes="longest")))   # unshuffled: the first 8 selected
    index = batch.sample_index.numpy()
    assert np.array_equal(index, longest._selected[:8])
    assert np.array_equal(batch.target_item.numpy(), cols["target_item"][index].astype(np.int64))
    assert np.array_equal(batch.lengths.numpy(), np.minimum(cols["cut"][index], 20))
    with pytest.raises(ValueError, match="prefixes"):
        SampleLoader(ds, "train", 8, prefixes="last")
