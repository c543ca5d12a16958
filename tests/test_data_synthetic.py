"""Synthetic generator (determinism, layouts, planted structure) and the loader under
DataLoader workers."""

import gzip

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.data_pipelines.rejections import RejectionReport
from recsys.data_pipelines.sources.amazon import read_amazon
from recsys.data_pipelines.sources.synthetic_source import read_synthetic, synthetic_config
from recsys.data_pipelines.sources.taobao import read_userbehavior
from recsys.data_pipelines.synthetic import SyntheticConfig, generate_amazon, generate_userbehavior, planted_interests

SMALL = SyntheticSource(n_rows=30_000, n_items=3_000, n_categories=60, mean_events=40.0, seed=5)


def test_csv_round_trip_equals_the_in_memory_source(tmp_path):
    cfg = synthetic_config(SMALL)
    path = generate_userbehavior(tmp_path / "ub.csv.gz", n_rows=cfg.n_rows, config=cfg)
    with gzip.open(path, "rt") as f:
        first = f.readline().strip().split(",")
    assert len(first) == 5 and first[3] in {"pv", "cart", "fav", "buy"}
    report = RejectionReport()
    from_csv = pa.concat_tables(read_userbehavior(path, report))
    direct = pa.concat_tables(read_synthetic(SMALL, RejectionReport()))
    assert report.rejected == 0 and from_csv.num_rows == 30_000           # exact row count
    for name in ("user", "item", "category", "behavior", "timestamp"):
        assert np.array_equal(from_csv.column(name).to_numpy(), direct.column(name).to_numpy()), name
    assert not list(tmp_path.glob("*.partial"))


def test_same_seed_same_data_and_another_seed_differs():
    a = pa.concat_tables(read_synthetic(SMALL, RejectionReport()))
    b = pa.concat_tables(read_synthetic(SMALL, RejectionReport()))
    other = SyntheticSource(**{**vars(SMALL), "seed": 6})
    c = pa.concat_tables(read_synthetic(other, RejectionReport()))
    assert a.equals(b) and not a.column("item").equals(c.column("item"))


def test_planted_structure():
    cfg = synthetic_config(SMALL)
    events = pa.concat_tables(read_synthetic(SMALL, RejectionReport()))
    user = events.column("user").to_numpy()
    item = events.column("item").to_numpy()
    category = events.column("category").to_numpy()
    ts = events.column("timestamp").to_numpy()
    # each item owns exactly one category
    pairs = np.unique(np.stack([item, category], 1), axis=0)
    assert len(pairs) == len(np.unique(item))
    # time-ordered per user, long-tailed lengths within the configured bounds
    same = np.diff(user) == 0
    assert np.all(np.diff(ts)[same] > 0)
    lengths = np.bincount(user)[np.unique(user)]
    assert lengths.min() >= 1 and lengths.max() <= cfg.max_events and lengths.max() > 4 * np.median(lengths)
    # Zipf popularity: the top 1% of items take a large share of events
    counts = np.sort(np.bincount(np.unique(item, return_inverse=True)[1]))[::-1]
    assert counts[: len(counts) // 100].sum() > 0.1 * len(item)
    # ground truth: most of a user's events fall in the user's planted interests
    users, interests = planted_interests(cfg)
    assert interests.shape == (len(users), cfg.interests_per_user) and np.array_equal(users, np.unique(user))
    row = np.searchsorted(users, user)
    in_interest = (interests[row] == category[:, None]).any(1)
    assert in_interest.mean() > cfg.interest_prob - 0.05


def test_amazon_layout_is_read_back_with_the_same_structure(tmp_path):
    cfg = SyntheticConfig(n_rows=3_000, n_items=500, n_categories=20, mean_events=20.0, seed=1)
    reviews, meta = generate_amazon(tmp_path / "reviews.json", tmp_path / "meta.json", config=cfg)
    report = RejectionReport()
    table = pa.concat_tables(read_amazon(SourceConfig(format="amazon", paths=[str(reviews), str(meta)]), report))
    assert table.num_rows == 3_000 and report.rejected == 0
    assert table.column("category").null_count == 0
    item = np.array(table.column("item").to_pylist())
    category = np.array(table.column("category").to_pylist())
    assert len(np.unique(np.stack([item, category], 1), axis=0)) == len(np.unique(item))


def test_loader_with_dataloader_workers_sees_every_sample_once(tmp_path):
    config = DataConfig(output=str(tmp_path / "ds"), source=SourceConfig(format="synthetic", synthetic=SMALL),
                        protocol=ProtocolConfig(max_length=16), partitions=2)
    ds = BuiltDataset(build_dataset(config, progress=False))
    loader = SampleLoader(ds, "train", 1000, shuffle=True, seed=1)
    batches = list(DataLoader(loader, batch_size=None, num_workers=2))
    seen = torch.cat([b.sample_index for b in batches]).numpy()
    assert len(batches) == len(loader) and np.array_equal(np.sort(seen), np.arange(loader.num_samples))
    b = batches[0]
    assert b.hist_item.shape == (1000, 16) and b.hist_item.dtype == torch.int64
    # the gathered history is the user's timeline right before the cut
    samples = ds.samples("train")
    offsets, items = ds.flat("offsets"), ds.flat("item")
    i = int(b.sample_index[0])
    row, cut = samples.column("row")[i].as_py(), samples.column("cut")[i].as_py()
    n = int(b.lengths[0])
    assert n == min(cut, 16)
    assert b.hist_item[0, :n].tolist() == items[offsets[row] + cut - n: offsets[row] + cut].tolist()
    assert torch.all(b.hist_item[0, n:] == 0)
