"""The FAISS stage without a trained model: index kinds, stamps, multi-interest merge,
seen filtering, ComiRec's λ-greedy diversity, bad input."""

import json
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from recsys.errors import CheckpointError, ConfigError, NonFiniteLossError
from recsys.full_ranking import rank_top_k
from recsys.retrieval.index import FIRST_ITEM, IndexConfig, ItemIndex, build_index, load_index, read_stamp, save_index
from recsys.retrieval.search import merge_interest_lists, multi_interest_search


def _flat(vectors: np.ndarray) -> ItemIndex:
    return build_index(vectors, IndexConfig("flat"), "m" * 64, "v" * 64)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(32, dim)).astype(np.float32)
    return (centres[rng.integers(0, 32, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


# ---------------------------------------------------------------- exact search = full ranking
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), top_n=st.integers(1, 12), seen_per_user=st.integers(0, 15))
def test_exact_multi_interest_search_equals_full_ranking_with_seen_items(seed, k, top_n, seen_per_user):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(50, 6)).astype(np.float32)
    interests = rng.normal(size=(5, k, 6)).astype(np.float32)
    rows = np.repeat(np.arange(5), seen_per_user)
    seen_items = rng.integers(0, 50, len(rows))                 # padding/unknown ids among them are harmless
    found = multi_interest_search(_flat(items), interests, top_n, seen=(rows, seen_items))
    expected = rank_top_k(torch.from_numpy(interests), torch.from_numpy(items), top_n,
                          (torch.from_numpy(rows), torch.from_numpy(seen_items))).numpy()
    assert np.array_equal(found.items, expected)
    best = np.einsum("bkd,nd->bkn", interests, items).max(axis=1)
    assert np.allclose(found.scores, np.take_along_axis(best, expected, axis=1), atol=1e-5)
    assert not np.isin(found.items, [0, 1]).any()


def test_an_interest_that_loses_items_to_the_seen_filter_is_searched_deeper():
    # one interest; the user has seen the 8 best items: the top 3 unseen are ranks 9..11
    items = np.zeros((20, 2), np.float32)
    items[:, 0] = np.arange(20)
    interests = np.array([[[1.0, 0.0]]], np.float32)
    seen = (np.zeros(8, np.int64), np.arange(12, 20))
    found = multi_interest_search(_flat(items), interests, 3, seen=seen)
    assert found.items.tolist() == [[11, 10, 9]] and found.scores.tolist() == [[11.0, 10.0, 9.0]]
    everything = (np.zeros(18, np.int64), np.arange(2, 20))    # nothing left: an empty list, not an error
    empty = multi_interest_search(_flat(items), interests, 3, seen=everything)
    assert empty.items.tolist() == [[0, 0, 0]] and empty.counts.tolist() == [0]


def test_merge_by_hand_drops_repeats_padding_unknown_and_keeps_the_best_score():
    ids = np.array([[[5, 7, 0, 3], [7, 1, 9, 5]]])               # K = 2 lists of one user
    scores = np.array([[[0.9, 0.5, 0.4, 0.1], [0.8, 0.7, 0.6, 0.2]]], np.float32)
    keep = ids >= FIRST_ITEM
    got = merge_interest_lists(ids, scores, keep, top_n=5)
    # 5 (0.9), 7 (0.8 beats its 0.5), 9 (0.6), 3 (0.1); 0 and 1 gone; one slot left empty
    assert got.items.tolist() == [[5, 7, 9, 3, 0]]
    assert got.scores[0, :4].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.1])
    assert got.scores[0, 4] == -np.inf and got.counts.tolist() == [4]


# ---------------------------------------------------------------- ComiRec's λ-greedy diversity
def _comirec_greedy(ids, scores, categories, top_n, coef):
    """THUDM/ComiRec src/train.py evaluate_full, the `coef is not None` branch, transcribed."""
    origin = sorted(zip(ids, scores), key=lambda x: x[1], reverse=True)
    item_list, tmp = [], set()
    for x, y in origin:
        if x not in tmp and x >= FIRST_ITEM:
            item_list.append((x, y, categories[x]))
            tmp.add(x)
    cate_dict, chosen = defaultdict(int), []
    for _ in range(min(top_n, len(item_list))):
        max_index, max_score = 0, item_list[0][1] - coef * cate_dict[item_list[0][2]]
        for k in range(1, len(item_list)):
            if item_list[k][1] - coef * cate_dict[item_list[k][2]] > max_score:
                max_index, max_score = k, item_list[k][1] - coef * cate_dict[item_list[k][2]]
            elif item_list[k][1] < max_score:
                break
        chosen.append(item_list[max_index][0])
        cate_dict[item_list[max_index][2]] += 1
        item_list.pop(max_index)
    return chosen


@pytest.mark.parametrize("coef", [0.05, 0.3, 2.0])
def test_lambda_greedy_equals_the_official_loop(coef):
    rng = np.random.default_rng(3)
    items = rng.normal(size=(80, 5)).astype(np.float32)
    interests = rng.normal(size=(7, 3, 5)).astype(np.float32)
    categories = rng.integers(2, 6, 80)
    index = _flat(items)
    found = multi_interest_search(index, interests, 15, diversity=coef, item_category=categories)
    scores, ids = index.search(interests.reshape(-1, 5), 15)
    for b in range(7):
        expected = _comirec_greedy(ids[b * 3:(b + 1) * 3].reshape(-1).tolist(),
                                   scores[b * 3:(b + 1) * 3].reshape(-1).tolist(), categories, 15, coef)
        assert found.items[b].tolist() == expected, b
    plain = multi_interest_search(index, interests, 15)
    spread = [len(set(categories[row])) for row in found.items]
    assert np.mean(spread) >= np.mean([len(set(categories[row])) for row in plain.items])


def test_lambda_greedy_by_hand():
    ids = np.array([[[2, 3, 4, 5]]])
    scores = np.array([[[1.0, 0.95, 0.9, 0.5]]], np.float32)
    categories = np.array([0, 0, 7, 7, 8, 9])              # items 2, 3 share category 7
    got = merge_interest_lists(ids, scores, ids >= 2, 3, diversity=0.2, item_category=categories)
    # step 1: 2 (1.0); step 2: 3 scores 0.95 − 0.2 = 0.75 < 4's 0.9 → 4; step 3: 3 (0.75) beats 5 (0.5)
    assert got.items.tolist() == [[2, 4, 3]]
    assert got.scores[0].tolist() == pytest.approx([1.0, 0.9, 0.95])


# ---------------------------------------------------------------- approximate indexes
def test_ivf_and_hnsw_find_most_of_the_exact_top_n_and_take_search_parameters():
    vectors = _clustered(4000, 16, 0)
    queries = _clustered(40, 16, 1)[:, None, :]
    exact = multi_interest_search(_flat(vectors), queries, 50).items
    for config, low, high in [(IndexConfig("ivf", nlist=16, nprobe=1), {"nprobe": 1}, {"nprobe": 16}),
                              (IndexConfig("hnsw", m=16, ef_construction=80, ef_search=8), {"ef_search": 8},
                               {"ef_search": 200})]:
        index = build_index(vectors, config)
        recalls = []
        for params in (low, high):
            index.set_search_params(**params)
            found = multi_interest_search(index, queries, 50)
            got = found.items
            exact_scores = np.einsum("qd,qnd->qn", queries[:, 0], vectors[got])        # inner products, not L2
            real = got >= FIRST_ITEM
            assert real.mean() > 0.9 and np.allclose(found.scores[real], exact_scores[real], atol=1e-4), config.kind
            recalls.append(np.mean([len(set(a) & set(e)) / 50 for a, e in zip(got, exact)]))
        assert recalls[1] >= 0.95 and recalls[1] > recalls[0], (config.kind, recalls)
    with pytest.raises(ConfigError, match="nlist = 5000 cells for only 3998 items"):
        build_index(vectors, IndexConfig("ivf", nlist=5000))


def test_index_configs_are_strict():
    assert IndexConfig.from_dict({"kind": "hnsw", "m": 8}).factory(100) == "HNSW8,Flat"
    assert IndexConfig.from_dict({"kind": "ivf"}).factory(1_000_000) == "IVF4000,Flat"
    assert IndexConfig("ivf").factory(2000) == "IVF51,Flat"        # at least 39 training points per cell
    for raw, message in [({"kind": "annoy"}, "index kind 'annoy'"), ({"kind": "flat", "nprobe": 3}, "does not apply"),
                         ({"kind": "hnsw", "ef": 3}, "unknown index key 'ef'"),
                         ({"kind": "ivf", "nprobe": 0}, "positive integer")]:
        with pytest.raises(ConfigError, match=message):
            IndexConfig.from_dict(raw)


# ---------------------------------------------------------------- files and stamps
def test_saved_index_loads_with_its_stamp_and_refuses_tampering_and_other_runs(tmp_path):
    vectors = _clustered(300, 8, 2)
    config = IndexConfig("hnsw", m=8, ef_search=64)
    path = save_index(build_index(vectors, config, "a" * 64, "v1"), tmp_path / "index" / "hnsw.faiss")
    stamp = read_stamp(path)
    assert stamp["factory"] == "HNSW8,Flat" and stamp["params"]["ef_search"] == 64 and stamp["dim"] == 8
    assert stamp["num_items"] == 300 and stamp["metric"] == "inner_product" and stamp["faiss_version"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["hnsw.faiss", "hnsw.json"]   # no temporaries
    loaded = load_index(path, expect={"model_sha256": "a" * 64, "item_vocabulary": "v1"})
    assert loaded.index.hnsw.efSearch == 64 and loaded.size == 298
    queries = vectors[:3][:, None]
    assert np.array_equal(multi_interest_search(loaded, queries, 5).items,
                          multi_interest_search(build_index(vectors, config), queries, 5).items)
    with pytest.raises(CheckpointError, match="another model"):
        load_index(path, expect={"model_sha256": "b" * 64})
    with pytest.raises(CheckpointError, match="another item vocabulary"):
        load_index(path, expect={"model_sha256": "a" * 64, "item_vocabulary": "v2"})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its stamp"):
        load_index(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="has no stamp"):
        load_index(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_index(tmp_path / "none.faiss")


# ---------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_error():
    items = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    index = _flat(items)
    interests = np.ones((2, 4, 4), np.float32)
    with pytest.raises(ConfigError, match=r"4 interests × 5 items each = 20 candidates cannot fill the top 30"):
        multi_interest_search(index, interests, 30, per_interest=5)
    interests[1, 2, 0] = np.nan
    with pytest.raises(NonFiniteLossError, match="for 1 users"):
        multi_interest_search(index, interests, 5)
    items[7, 1] = np.inf
    with pytest.raises(NonFiniteLossError, match=r"ids \[7\]"):
        build_index(items)
    with pytest.raises(ConfigError, match="diversity > 0 needs the item categories"):
        multi_interest_search(index, np.ones((1, 1, 4), np.float32), 5, diversity=0.5)
    # K·per_interest >= top-N but overlapping interests: fewer than N, never padding or repeats
    same = multi_interest_search(index, np.ones((1, 4, 4), np.float32), 20, per_interest=5)
    assert same.counts.tolist() == [5] and len(set(same.items[0, :5])) == 5


def test_index_and_search_import_no_lightning_or_pandas():
    code = ("import sys, recsys.retrieval.index, recsys.retrieval.search; "
            "print([m for m in ('lightning', 'pytorch_lightning', 'pandas', 'pyarrow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().replace("'", '"')) == []
