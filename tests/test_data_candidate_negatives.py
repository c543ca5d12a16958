"""Negatives drawn from the retrieval stage's candidates (``protocol.negatives: candidates``):
the sampler on hand-made timelines and pools, the candidates file reader (counts, bad files),
the config keys, and real builds (manifest counts, workers, the changed-file refusal, and a
candidates file written by ``recsys retrieve`` on a tiny trained run)."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data_pipelines.build import build_dataset, ensure_dataset
from recsys.data_pipelines.candidate_pools import read_candidate_pool
from recsys.data_pipelines.config import (DataConfig, ProtocolConfig, SourceConfig, SyntheticSource, load_data_config,
                                          to_dict)
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.samples import CandidateNegativeSampler, build_samples
from recsys.data_pipelines.vocab import build_vocabulary
from recsys.errors import ConfigError, DataError

NUM_ITEMS = 10          # internal ids 2..9
SOURCE = SyntheticSource(n_rows=3000, n_items=200, n_categories=8, mean_events=20.0, interests_per_user=2)


def hand_partition():
    """Three timelines (partition rows 0, 1, 2 = internal users 2, 3, 4) and their pools:
    user 2 has seen {2, 3, 4}, pool {3, 5, 6} → draws from {5, 6};
    user 3 has seen {5, 6}, no pool → uniform;
    user 4 has seen {7, 8, 9}, pool {7, 8} (inside the timeline) → uniform."""
    timelines = [[2, 3, 4, 2, 3, 4, 2, 3], [5, 6], [7, 8, 9]]
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in timelines])]).astype(np.int64)
    items = np.concatenate(timelines).astype(np.int32)
    pools = {2: [3, 5, 6], 4: [7, 8]}
    sizes = [len(pools.get(u, [])) for u in range(5)]
    pool_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pool_items = np.array([i for u in range(5) for i in pools.get(u, [])], np.int32)
    sampler = CandidateNegativeSampler(np.ones(NUM_ITEMS, np.int64), pool_offsets, pool_items)
    return offsets, items, np.array([2, 3, 4]), sampler, timelines


def candidate_protocol(path="unused.parquet", **kw):
    return ProtocolConfig(name="din", max_length=5, negatives="candidates", negatives_file=str(path), **kw)


def test_negatives_come_from_the_pool_minus_the_timeline_and_the_rest_are_counted_uniform():
    offsets, items, user_ids, sampler, timelines = hand_partition()
    counts = {}
    table = build_samples(offsets, items, user_ids, np.full(NUM_ITEMS, 2, np.int32), sampler,
                          candidate_protocol(n_neg=4), seed=0, partition=0, counts=counts)
    row, label, target = (table.column(c).to_numpy() for c in ("row", "label", "target_item"))
    negatives = {r: target[(row == r) & (label == 0)] for r in range(3)}
    # row 0: 7 cuts x 4 negatives, all in {5, 6} (3 is in the pool but seen), both drawn
    assert len(negatives[0]) == 28 and set(negatives[0]) == {5, 6}
    # rows 1 (1 cut) and 2 (2 cuts): uniform, never their own items
    assert len(negatives[1]) == 4 and not set(negatives[1]) & {5, 6}
    assert len(negatives[2]) == 8 and not set(negatives[2]) & {7, 8, 9}
    assert counts == {"candidate_negatives": 28, "uniform_fallback_negatives": 12, "users_without_candidates": 1,
                      "users_with_candidates_all_in_timeline": 1}


def test_the_draw_is_uniform_over_the_usable_pool():
    pool = np.array([3, 4, 5, 6, 7], np.int32)     # 7 is in the timeline
    sampler = CandidateNegativeSampler(np.ones(NUM_ITEMS, np.int64), np.array([0, 0, 0, 5]), pool)
    offsets, items = np.array([0, 2]), np.array([7, 9], np.int32)
    rows = np.zeros(8000, np.int64)
    (drawn,), counts = sampler.negatives(np.random.default_rng(1), rows, offsets, items, np.array([2]), 1)
    share = np.bincount(drawn, minlength=NUM_ITEMS)[[3, 4, 5, 6]] / len(drawn)
    assert set(drawn) == {3, 4, 5, 6} and np.all(np.abs(share - 0.25) < 0.02)   # 4 sigma ≈ 0.019
    assert counts["candidate_negatives"] == 8000


@st.composite
def partitions_with_pools(draw):
    """Timelines of 1-6 users over items 2..9 (never all of them) and a pool per user id."""
    n = draw(st.integers(1, 6))
    timelines = [draw(st.lists(st.integers(2, NUM_ITEMS - 1), min_size=2, max_size=12)
                      .filter(lambda t: len(set(t)) < NUM_ITEMS - 2)) for _ in range(n)]
    pools = [sorted(draw(st.sets(st.integers(2, NUM_ITEMS - 1), max_size=6))) for _ in range(n)]
    return timelines, pools


@settings(max_examples=60, deadline=None)
@given(partitions_with_pools(), st.integers(1, 3), st.integers(0, 3))
def test_property_negatives_are_usable_pool_items_or_counted_uniform_never_seen(data, n_neg, seed):
    timelines, pools = data
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in timelines])]).astype(np.int64)
    items = np.concatenate(timelines).astype(np.int32)
    user_ids = np.arange(2, 2 + len(timelines))            # row r = user id r + 2; ids 0, 1 have no pool
    pool_offsets = np.concatenate([[0, 0, 0], np.cumsum([len(p) for p in pools])]).astype(np.int64)
    pool_items = np.array([i for p in pools for i in p], np.int32)
    sampler = CandidateNegativeSampler(np.ones(NUM_ITEMS, np.int64), pool_offsets, pool_items)
    counts = {}
    table = build_samples(offsets, items, user_ids, np.full(NUM_ITEMS, 2, np.int32), sampler,
                          candidate_protocol(n_neg=n_neg), seed, 0, counts=counts)
    row, label, target = (table.column(c).to_numpy() for c in ("row", "label", "target_item"))
    uniform = 0
    for r, t in zip(row[label == 0], target[label == 0]):
        usable = set(pools[r]) - set(timelines[r])
        assert t not in set(timelines[r]) and (t in usable or not usable)
        uniform += not usable
    assert counts["uniform_fallback_negatives"] == uniform
    assert counts["candidate_negatives"] == int((label == 0).sum()) - uniform
    assert counts["users_without_candidates"] == sum(not p for p in pools)
    assert counts["users_with_candidates_all_in_timeline"] == sum(bool(p) and not set(p) - set(t)
                                                                 for p, t in zip(pools, timelines))


def test_same_seed_same_samples_another_seed_others():
    offsets, items, user_ids, sampler, _ = hand_partition()
    cfg = candidate_protocol(n_neg=4)
    cats = np.full(NUM_ITEMS, 2, np.int32)
    one, two = (build_samples(offsets, items, user_ids, cats, sampler, cfg, 5, 0) for _ in range(2))
    assert one.equals(two)
    assert not one.equals(build_samples(offsets, items, user_ids, cats, sampler, cfg, 6, 0))


# ---------------------------------------------------------------- the candidates file
def write_candidates(path, users, items, ranks=None, fallback=None, **types):
    n = len(users)
    pq.write_table(pa.table({
        "user": pa.array(users, types.get("user", pa.int64())),
        "rank": pa.array(ranks if ranks is not None else np.arange(n) % 1000, pa.int32()),
        "item": pa.array(items, types.get("item", pa.int64())),
        "score": pa.array(np.zeros(n), pa.float32()),
        "fallback": pa.array(fallback if fallback is not None else np.zeros(n, bool)),
    }), str(path))
    return path


def hand_vocabularies():
    # raw users 10 (id 2), 20 (id 3); raw items 100 (id 2), 200 (id 3), 300 (id 4); by frequency
    return build_vocabulary(pa.array([10, 10, 20])), build_vocabulary(pa.array([100, 100, 100, 200, 200, 300]))


def test_pool_rows_counted_by_reason_and_the_csr_by_hand(tmp_path):
    users, items = hand_vocabularies()
    path = write_candidates(
        tmp_path / "c.parquet",
        users=[10, 10, 10, 10, 10, 20, 20, 20, 99, 20],
        items=[300, 100, 300, 200, 555, 200, 100, 300, 100, 300],
        ranks=[0, 1, 2, 3, 4, 0, 1, 2, 0, 5],
        fallback=[False] * 9 + [True])
    offsets, pool, counts = read_candidate_pool(str(path), users, items)
    # user id 2 (raw 10): items 300, 100, 300 (dup), 200, 555 (unknown) → {2, 3, 4}; user id 3: {2, 3, 4}
    assert offsets.tolist() == [0, 0, 0, 3, 6] and pool.tolist() == [2, 3, 4, 2, 3, 4]
    assert counts == {"rows": 10, "fallback_rows": 1, "beyond_top_rows": 0, "unknown_user_rows": 1,
                      "unknown_item_rows": 1, "duplicate_rows": 1, "pool_items": 6, "users_with_pool": 2}
    offsets, pool, counts = read_candidate_pool(str(path), users, items, top=2)
    # ranks 0, 1 only: user 2 {300, 100}, user 3 {200, 100}; rank 0 of unknown user 99 counted unknown
    assert offsets.tolist() == [0, 0, 0, 2, 4] and pool.tolist() == [2, 4, 2, 3]
    assert counts["beyond_top_rows"] == 4 and counts["unknown_user_rows"] == 1 and counts["duplicate_rows"] == 0
    assert counts["fallback_rows"] == 1 and counts["unknown_item_rows"] == 0


def test_raw_ids_are_cast_to_the_vocabulary_type(tmp_path):
    users, items = hand_vocabularies()
    path = write_candidates(tmp_path / "c.parquet", users=["10", "20"], items=[200, 300], user=pa.string(),
                            item=pa.int32())
    offsets, pool, _ = read_candidate_pool(str(path), users, items)
    assert offsets.tolist() == [0, 0, 0, 1, 2] and pool.tolist() == [3, 4]


def test_bad_candidate_files_are_data_errors_naming_the_file(tmp_path):
    users, items = hand_vocabularies()
    with pytest.raises(DataError, match="nothere.parquet.*does not exist"):
        read_candidate_pool(str(tmp_path / "nothere.parquet"), users, items)
    pq.write_table(pa.table({"user": [10], "item": [100], "rank": pa.array([0], pa.int32())}),
                   str(tmp_path / "nofallback.parquet"))
    with pytest.raises(DataError, match=r"nofallback.parquet.*\['fallback'\]"):
        read_candidate_pool(str(tmp_path / "nofallback.parquet"), users, items)
    write_candidates(tmp_path / "strings.parquet", users=["u10", "u20"], items=[100, 200], user=pa.string())
    with pytest.raises(DataError, match="strings.parquet: column 'user' \\(string\\) cannot be read as int64"):
        read_candidate_pool(str(tmp_path / "strings.parquet"), users, items)
    whole = write_candidates(tmp_path / "whole.parquet", users=[10] * 500, items=[100] * 500).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match="cut.parquet.*not a readable Parquet file"):
        read_candidate_pool(str(tmp_path / "cut.parquet"), users, items)
    write_candidates(tmp_path / "foreign.parquet", users=[7, 8], items=[100, 200])
    with pytest.raises(DataError, match="foreign.parquet: no usable candidates"):
        read_candidate_pool(str(tmp_path / "foreign.parquet"), users, items)


def test_config_keys_are_checked_and_left_out_of_the_reuse_key_when_unused(tmp_path):
    with pytest.raises(ValueError, match="needs protocol.negatives_file"):
        ProtocolConfig(negatives="candidates")
    with pytest.raises(ValueError, match="apply only to negatives: candidates"):
        ProtocolConfig(negatives="uniform", negatives_file="c.parquet")
    with pytest.raises(ValueError, match="apply only to negatives: candidates"):
        ProtocolConfig(negatives_top=5)
    with pytest.raises(ValueError, match="negatives_top must be >= 0"):
        candidate_protocol(negatives_top=-1)
    with pytest.raises(ValueError, match="'loo' protocol draws no negatives"):
        ProtocolConfig(name="loo", negatives="candidates", negatives_file="c.parquet")
    with pytest.raises(ValueError, match="n_neg: 0"):
        candidate_protocol(n_neg=0)
    yaml_path = tmp_path / "data.yaml"
    yaml_path.write_text("output: out\nprotocol: {negatives: candidates, negatives_top: 20}\n")
    with pytest.raises(ConfigError, match="data.yaml: protocol.negatives: candidates needs protocol.negatives_file"):
        load_data_config(yaml_path)
    # builds made before these keys existed keep their reuse key
    assert set(to_dict(DataConfig(output="o"))["protocol"]) >= {"negatives"}
    assert not {"negatives_file", "negatives_top"} & set(to_dict(DataConfig(output="o"))["protocol"])
    assert to_dict(DataConfig(output="o", protocol=candidate_protocol(negatives_top=3)))["protocol"][
        "negatives_top"] == 3


def test_shipped_candidate_config_parses():
    config = load_data_config(Path(__file__).parent.parent / "configs" / "data" / "amazon_beauty_candneg.yaml")
    assert config.protocol.negatives == "candidates" and config.output == "runs/data/amazon_beauty_candneg"
    assert config.protocol.negatives_file == "runs/cascade/candidates_sasrec_beauty_seed0_train.parquet"


# ---------------------------------------------------------------- real builds
def build(root: Path, name: str, protocol: ProtocolConfig, **kw) -> Path:
    return build_dataset(DataConfig(output=str(root / name), source=SourceConfig(format="synthetic", synthetic=SOURCE),
                                    protocol=protocol, partitions=3), progress=False, **kw)


def hand_candidates(loo: Path, path: Path, per_user=30, skip_users=3, fallback_users=2) -> Path:
    """A ``recsys retrieve``-format file over the loo build's raw ids: ``per_user`` seeded items
    per user (ranks 0..), the first ``skip_users`` users absent, the next ``fallback_users``
    with fallback rows only, one unknown user and one unknown item row."""
    ds = BuiltDataset(loo)
    raw_users, raw_items = ds.vocabulary("user").raw.to_numpy(), ds.vocabulary("item").raw.to_numpy()
    rng = np.random.default_rng(0)
    users = np.repeat(raw_users[skip_users:], per_user)
    items = np.concatenate([rng.choice(raw_items, per_user, replace=False) for _ in raw_users[skip_users:]])
    ranks = np.tile(np.arange(per_user), len(raw_users) - skip_users)
    fallback = np.repeat(np.arange(len(raw_users) - skip_users) < fallback_users, per_user)
    users = np.append(users, [raw_users.max() + 1, raw_users[-1]])
    items = np.append(items, [raw_items[0], raw_items.max() + 1])
    return write_candidates(path, users, items, np.append(ranks, [0, 0]), np.append(fallback, [False, False]))


@pytest.fixture(scope="module")
def loo_and_candidates(tmp_path_factory):
    root = tmp_path_factory.mktemp("candneg")
    loo = build(root, "loo", ProtocolConfig(name="loo", max_length=20))
    return root, loo, hand_candidates(loo, root / "candidates.parquet")


def test_a_din_build_with_candidate_negatives_end_to_end(loo_and_candidates):
    root, loo, candidates = loo_and_candidates
    out = build(root, "din", candidate_protocol(candidates, negatives_top=20, n_neg=2))
    ds = BuiltDataset(out)
    pool = ds.manifest["negative_pool"]
    users = BuiltDataset(loo).vocabulary("user")
    n_users = users.size - 2
    assert pool["rows"] == (n_users - 3) * 30 + 2 and pool["fallback_rows"] == 2 * 30
    assert pool["beyond_top_rows"] == (n_users - 5) * 10
    assert pool["unknown_user_rows"] == 1 and pool["unknown_item_rows"] == 1 and pool["duplicate_rows"] == 0
    assert pool["users_with_pool"] == n_users - 5 and pool["pool_items"] == (n_users - 5) * 20
    # the same vocabularies as the loo build, so the hand file's raw ids mean the same users
    assert ds.vocabulary("user").raw.equals(users.raw)
    table = pq.read_table(candidates).to_pandas()
    table = table[(~table.fallback) & (table["rank"] < 20)]
    pools = {}
    for user, item in zip(ds.vocabulary("user").encode(pa.array(table.user.to_numpy())),
                          ds.vocabulary("item").encode(pa.array(table["item"].to_numpy()))):
        pools.setdefault(int(user), set()).add(int(item))
    offsets, flat = ds.flat("offsets"), ds.flat("item")
    # every negative: from the user's top-20 non-fallback candidates minus the timeline when
    # that is not empty, else a uniform draw; never an item of the timeline
    expected_uniform = negatives_seen = 0
    for split in ("train", "valid", "test"):
        s = ds.samples(split).to_pandas()
        negatives = s[s.label == 0]
        assert len(negatives) == 2 * (s.label == 1).sum()
        negatives_seen += len(negatives)
        for row, user, item in zip(negatives["row"], negatives.user, negatives.target_item):
            timeline = set(flat[offsets[row]:offsets[row + 1]].tolist())
            assert item not in timeline
            usable = pools.get(user, set()) - timeline
            if usable:
                assert item in usable
            else:
                expected_uniform += 1
    assert pool["uniform_fallback_negatives"] == expected_uniform > 0
    assert pool["candidate_negatives"] == negatives_seen - expected_uniform
    assert (out / "negative_pool" / "offsets.npy").exists()


def test_workers_give_the_same_build_and_a_changed_file_is_refused_then_rebuilt(loo_and_candidates, tmp_path):
    root, loo, _ = loo_and_candidates
    candidates = hand_candidates(loo, tmp_path / "c.parquet")
    protocol = candidate_protocol(candidates)
    one = build(tmp_path, "one", protocol)
    two = build(tmp_path, "two", protocol, workers=2)
    for f in sorted(p.relative_to(one) for p in (one / "split_columns").rglob("*.npy")):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    manifest = [json.loads((d / "manifest.json").read_text())["negative_pool"] for d in (one, two)]
    assert manifest[0] == manifest[1]
    config = DataConfig(output=str(one), source=SourceConfig(format="synthetic", synthetic=SOURCE),
                        protocol=protocol, partitions=3)
    assert ensure_dataset(config, progress=False)[1] == "reused"
    before = BuiltDataset(one).samples("train").column("target_item")
    hand_candidates(loo, candidates, per_user=10)        # the retrieval stage ran again
    with pytest.raises(FileExistsError, match="c.parquet changed"):
        ensure_dataset(config, progress=False)
    assert ensure_dataset(config, overwrite=True, progress=False)[1] == "built"
    assert BuiltDataset(one).manifest["negative_pool"]["rows"] == (manifest[0]["rows"] - 2) // 3 + 2
    assert not BuiltDataset(one).samples("train").column("target_item").equals(before)
    candidates.unlink()
    with pytest.raises(DataError, match="c.parquet: protocol.negatives_file does not exist"):
        build(tmp_path, "three", protocol)


@pytest.mark.slow
def test_candidates_from_recsys_retrieve_on_the_training_histories(loo_and_candidates, tmp_path):
    """The cascade recipe: a retrieval run on the loo build, candidates retrieved from each
    user's training part (users file with a ``history`` column), a din build drawing from them."""
    from recsys.retrieval.batch import RetrieveOptions, retrieve
    from tests.cascade_fixtures import fit_run, users_file
    root, loo, _ = loo_and_candidates
    run = fit_run(loo, tmp_path / "yt", "YouTubeDNN", {"embedding_dim": 16, "hidden_units": [16]}, retrieval=True)
    ds = BuiltDataset(loo)
    raw_users, raw_items = ds.vocabulary("user"), ds.vocabulary("item")
    offsets, flat = ds.flat("offsets"), ds.flat("item")
    user_of_row = ds.timelines().column("user").to_numpy()
    histories = [raw_items.decode(flat[offsets[r]:offsets[r + 1] - 2]).to_pylist() for r in range(len(user_of_row))]
    users = users_file(tmp_path / "users.parquet", raw_users.decode(user_of_row).to_pylist(), histories)
    retrieve(run, users, tmp_path / "candidates.parquet", RetrieveOptions(top_n=30), progress=False)
    out = build(tmp_path, "din", candidate_protocol(tmp_path / "candidates.parquet"))
    pool = BuiltDataset(out).manifest["negative_pool"]
    assert pool["rows"] == pool["pool_items"] == len(user_of_row) * 30 and pool["fallback_rows"] == 0
    assert pool["unknown_user_rows"] == pool["unknown_item_rows"] == pool["duplicate_rows"] == 0
    assert pool["users_with_pool"] == len(user_of_row) and pool["uniform_fallback_negatives"] == 0
    # the pool never holds a training-history item (retrieve excludes the history it was given)
    pool_offsets, pool_items = (np.load(out / "negative_pool" / f"{n}.npy") for n in ("offsets", "items"))
    for r in range(0, len(user_of_row), 7):
        u = user_of_row[r]
        assert not set(pool_items[pool_offsets[u]:pool_offsets[u + 1]].tolist()) & set(
            flat[offsets[r]:offsets[r + 1] - 2].tolist())
