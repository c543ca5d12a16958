"""Property tests of the sample builder and the loader (hypothesis)."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader, gather_histories
from recsys.data_pipelines.samples import TEST, TRAIN, VALID, NegativeSampler, build_samples

NUM_ITEMS = 60


@st.composite
def timelines(draw):
    lengths = draw(st.lists(st.integers(0, 40), min_size=1, max_size=12))
    items = [draw(st.lists(st.integers(2, NUM_ITEMS - 1), min_size=n, max_size=n)) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.array([i for row in items for i in row], dtype=np.int32)
    return offsets, flat


protocols = st.sampled_from([
    ProtocolConfig(name="din", max_length=5),
    ProtocolConfig(name="din", max_length=50, validation=False, n_neg=2, negatives="popularity"),
    ProtocolConfig(name="dare", max_length=3, min_length=6, n_train_targets=4, target_stride=2, n_neg=2,
                   negatives="popularity"),
    ProtocolConfig(name="loo", max_length=8),
    ProtocolConfig(name="users", max_length=8),
])


def make(offsets, flat, cfg, seed):
    counts = np.bincount(flat, minlength=NUM_ITEMS).astype(np.int64) + 1
    sampler = NegativeSampler(counts, cfg.negatives)
    user_ids = np.arange(2, 2 + len(offsets) - 1)
    item_category = (np.arange(NUM_ITEMS) % 7 + 2).astype(np.int32)
    return build_samples(offsets, flat, user_ids, item_category, sampler, cfg, seed, 0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines(), protocols, st.integers(0, 3))
def test_histories_never_contain_their_target_or_later_events(data, cfg, seed):
    offsets, flat = data
    lengths = np.diff(offsets)
    if any(n >= NUM_ITEMS - 2 for n in lengths):
        return
    table = make(offsets, flat, cfg, seed)
    rows, cuts = table.column("row").to_numpy(), table.column("cut").to_numpy()
    labels, targets = table.column("label").to_numpy(), table.column("target_item").to_numpy()
    split = table.column("split").to_numpy()
    assert np.all(cuts >= 1) and np.all(cuts < lengths[rows])          # a non-empty strict prefix
    positions, hist_len, valid = gather_histories(offsets, rows, cuts.astype(np.int64), cfg.max_length)
    assert np.all(hist_len <= cfg.max_length) and np.all(hist_len == np.minimum(cuts, cfg.max_length))
    # the history ends right before the target's event: no target, nothing later
    last = positions[np.arange(len(rows)), np.maximum(hist_len - 1, 0)]
    assert np.all(last[hist_len > 0] == (offsets[rows] + cuts - 1)[hist_len > 0])
    assert np.all(positions[valid] < (offsets[rows] + cuts)[np.nonzero(valid)[0]])
    pos = labels == 1
    assert np.array_equal(targets[pos], flat[offsets[rows[pos]] + cuts[pos]])
    # negatives are never in the user's whole timeline
    for r, t in zip(rows[~pos], targets[~pos]):
        assert t not in set(flat[offsets[r]:offsets[r + 1]].tolist())
    if cfg.name in ("din", "loo", "dare"):
        for r in np.unique(rows):
            mine = rows == r
            assert set(cuts[mine & (split == TEST)]) == {lengths[r] - 1}
            if (cfg.name == "dare" or cfg.validation) and lengths[r] >= 3:    # length 2: test pair only
                assert set(cuts[mine & (split == VALID)]) == {lengths[r] - 2}
            assert np.all(cuts[mine & (split == TRAIN)] < lengths[r] - (2 if cfg.name == "dare" or cfg.validation else 1))


@settings(max_examples=25, deadline=None)
@given(timelines(), protocols, st.integers(0, 3))
def test_same_seed_same_samples(data, cfg, seed):
    offsets, flat = data
    if any(n >= NUM_ITEMS - 2 for n in np.diff(offsets)):
        return
    assert make(offsets, flat, cfg, seed).equals(make(offsets, flat, cfg, seed))


def test_dare_protocol_targets_follow_the_official_positions():
    offsets = np.array([0, 30], dtype=np.int64)
    flat = np.arange(2, 32, dtype=np.int32)
    cfg = ProtocolConfig(name="dare", max_length=10, n_train_targets=19, target_stride=5, n_neg=2)
    table = make(offsets, flat, cfg, 0)
    pos = table.filter(__import__("pyarrow").compute.equal(table.column("label"), 1))
    cuts = sorted(zip(pos.column("split").to_pylist(), pos.column("cut").to_pylist()))
    # T = 30 behaviours: test target T (cut 29), valid T-1 (28), train T-2, T-7, ... (27, 22, 17, 12, 7, 2)
    assert cuts == [(TRAIN, 2), (TRAIN, 7), (TRAIN, 12), (TRAIN, 17), (TRAIN, 22), (TRAIN, 27), (VALID, 28), (TEST, 29)]
    assert (table.num_rows == 3 * 8) and table.column("label").to_pylist()[:3] == [1, 0, 0]
    short = make(np.array([0, 19], dtype=np.int64), flat[:19], cfg, 0)      # 19 < L + 10
    assert short.num_rows == 0


def test_padded_and_jagged_batches_agree(tmp_path):
    config = DataConfig(output=str(tmp_path / "ds"), source=SourceConfig(format="synthetic", synthetic=SyntheticSource(
        n_rows=5_000, n_items=500, n_categories=20, mean_events=20.0)), protocol=ProtocolConfig(max_length=7))
    ds = BuiltDataset(build_dataset(config, progress=False))
    padded = SampleLoader(ds, "train", 300, form="padded", with_timestamps=True)
    jagged = SampleLoader(ds, "train", 300, form="jagged", with_timestamps=True)
    for a, b in zip(padded, jagged):
        assert b.is_jagged and b.offsets[-1] == b.lengths.sum()
        back = b.to_padded(max_length=7)
        for name in ("hist_item", "hist_category", "hist_behavior", "hist_timestamp"):
            assert torch.equal(getattr(a, name), getattr(back, name))
        assert torch.equal(a.to_jagged().hist_item, b.hist_item)
        mask = a.history_mask()
        assert torch.all(a.hist_item[~mask] == 0) and torch.all(a.hist_item[mask] >= 1)
