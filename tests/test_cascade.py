"""The cascade core (recsys/cascade.py) on real (randomly initialised) models: stage subsets
and orders, equality with retrieval alone and with forward, counted short lists, popularity
fallback, the vocabulary check of from_runs, and the import footprint serving relies on."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from recsys.cascade import Cascade, CascadeConfig, CascadeResult, _last_behaviours, check_same_vocabulary
from recsys.contract import Batch, FeatureSpec
from recsys.errors import ConfigError
from recsys.models.din import DIN
from recsys.models.finalmlp import FinalMLP
from recsys.models.hcn import HCN
from recsys.models.youtube_dnn import YouTubeDNN
from recsys.models.comirec import ComiRecSA
from recsys.retrieval.index import FIRST_ITEM, build_index, item_vectors
from recsys.retrieval.search import multi_interest_search

FEATURES = FeatureSpec(num_users=40, num_items=120, num_categories=7, max_length=8)
CATEGORY = np.r_[0, 0, np.arange(FEATURES.num_items - 2) % 5 + 2].astype(np.int64)
POPULARITY = np.r_[0, 0, np.arange(FEATURES.num_items - 2)[::-1] * 3 % 97 + 1]


def _batch(size: int = 12, length: int = 10, empty=(3,), seed: int = 0) -> "tuple[Batch, tuple]":
    """Padded users (row ``empty`` without history) and their seen (row, item) pairs: the
    history plus two earlier items per user."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (size,), generator=g)
    lengths[list(empty)] = 0
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    items = torch.randint(FIRST_ITEM, FEATURES.num_items, (size, length), generator=g) * mask
    zeros = torch.zeros(size, dtype=torch.long)
    batch = Batch(user=torch.randint(2, FEATURES.num_users, (size,), generator=g), label=torch.zeros(size),
                  lengths=lengths, target_item=zeros, target_category=zeros, hist_item=items,
                  hist_category=torch.from_numpy(CATEGORY)[items] * mask, hist_behavior=mask.long())
    rows, seen = np.nonzero(mask.numpy())
    seen = items.numpy()[rows, seen]
    extra_rows = np.repeat(np.arange(size), 2)
    extra = np.random.default_rng(seed).integers(FIRST_ITEM, FEATURES.num_items, 2 * size)
    return batch, (np.r_[rows, extra_rows], np.r_[seen, extra])


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    retrieval = ComiRecSA(FEATURES, embedding_dim=16, num_interests=3).eval()
    index = build_index(item_vectors(retrieval))
    coarse = FinalMLP(FEATURES, embedding_dim=8, mlp1_units=[16], mlp2_units=[16], fs_hidden_units=[16],
                      num_heads=2).eval()
    fine = DIN(FEATURES, item_dim=8, category_dim=8, attention_units=[8], mlp_units=[16, 8]).eval()
    return retrieval, index, coarse, fine


def _cascade(models, **config) -> Cascade:
    retrieval, index, coarse, fine = models
    config = CascadeConfig(**config)
    return Cascade(retrieval, index, coarse if config.coarse_m else None, fine if config.fine_n else None,
                   item_category=CATEGORY, popularity=POPULARITY, config=config)


def _seen_sets(seen, size):
    out = [set() for _ in range(size)]
    for r, i in zip(*seen):
        out[r].add(int(i))
    return out


def _valid(c, row):
    return [int(i) for i in c.items[row] if i >= FIRST_ITEM]


def test_each_stage_is_a_subset_of_the_previous_ordered_by_its_own_score_without_seen_or_padding(models):
    batch, seen = _batch()
    result = _cascade(models, retrieve_n=40, per_interest=20, coarse_m=15, fine_n=6).run(batch, seen)
    seen_sets = _seen_sets(seen, batch.size)
    assert result.stages == ("retrieval", "coarse", "fine") and result.final is result.fine
    for stage, n in (("retrieval", 40), ("coarse", 15), ("fine", 6)):
        assert getattr(result, stage).items.shape == (batch.size, n)
    for row in range(batch.size):
        lists = [_valid(result.retrieval, row), _valid(result.coarse, row), _valid(result.fine, row)]
        assert set(lists[2]) <= set(lists[1]) <= set(lists[0])
        for items in lists:
            assert len(items) == len(set(items))                          # no repeats
            assert not set(items) & seen_sets[row] and min(items) >= FIRST_ITEM
        if result.fallback[row]:
            continue
        for stage in ("retrieval", "coarse", "fine"):
            scores = getattr(result, stage).scores[row]
            valid = getattr(result, stage).items[row] >= FIRST_ITEM
            assert valid.sum() == np.isfinite(scores).sum() and valid[:valid.sum()].all()   # padding last
            assert np.all(np.diff(scores[valid]) <= 0), stage             # best first by the stage's own score
    # the ranking stage keeps the best of the previous list by its score: nothing it dropped beats what it kept
    fine_scores = _score(models[3], batch, result.coarse)
    for row in np.flatnonzero(~result.fallback):
        kept = result.fine.scores[row][-1]
        dropped = [s for i, s in zip(result.coarse.items[row], fine_scores[row]) if i not in result.fine.items[row]]
        assert max(dropped) <= kept + 1e-6


def _score(model, batch, candidates):
    """forward(batch) on one (user, candidate) row at a time: [B, n]."""
    out = np.full(candidates.items.shape, np.nan, dtype=np.float32)
    with torch.no_grad():
        for b in range(batch.size):
            for j, item in enumerate(candidates.items[b]):
                one = batch.slice(b, b + 1).replace(target={"item": torch.tensor([int(item)]),
                                                             "category": torch.tensor([int(CATEGORY[item])])})
                out[b, j] = model(_last_behaviours(one, model.features.max_length)).logit.item()
    return out


def test_ranking_stage_scores_equal_forward_on_those_rows(models):
    batch, seen = _batch(size=6, empty=())
    result = _cascade(models, retrieve_n=12, coarse_m=8, fine_n=4, max_rows=7).run(batch, seen)
    for stage, model in (("coarse", models[2]), ("fine", models[3])):
        candidates = getattr(result, stage)
        expected = _score(model, batch, candidates)
        np.testing.assert_allclose(candidates.scores, expected, rtol=1e-5, atol=1e-5)
    # the final list carries every stage's score of its items
    np.testing.assert_allclose(result.stage_scores["fine"], result.fine.scores)
    retrieval_score = {(r, int(i)): s for r in range(6) for i, s in zip(result.retrieval.items[r],
                                                                        result.retrieval.scores[r])}
    expected = [[retrieval_score[(r, int(i))] for i in result.fine.items[r]] for r in range(6)]
    np.testing.assert_allclose(result.stage_scores["retrieval"], expected)


def test_hcn_as_the_coarse_stage_scores_the_user_side_once_and_equals_forward(models):
    """HCN overrides score_candidates (two-tower: user side once per user); through the
    cascade its coarse scores are still forward's on each (user, candidate) row."""
    retrieval, index, _, fine = models
    torch.manual_seed(1)
    hcn = HCN(FEATURES, item_dim=8, category_dim=4, centres_per_level=[4, 2], short_length=3, gate_units=[8],
              item_units=[16]).eval()
    batch, seen = _batch(size=5, empty=(2,))
    cascade = Cascade(retrieval, index, hcn, fine, item_category=CATEGORY, popularity=POPULARITY,
                      config=CascadeConfig(retrieve_n=25, coarse_m=10, fine_n=4, fallback_ranking="rank"))
    result = cascade.run(batch, seen)
    np.testing.assert_allclose(result.coarse.scores, _score(hcn, batch, result.coarse), rtol=1e-4, atol=1e-5)
    for row in range(5):
        assert set(_valid(result.fine, row)) <= set(_valid(result.coarse, row)) <= set(_valid(result.retrieval, row))


def test_seen_items_are_kept_when_exclude_seen_is_off(models):
    batch, seen = _batch(size=6, empty=())
    seen_sets = _seen_sets(seen, 6)
    kept = _cascade(models, retrieve_n=60, fine_n=10, exclude_seen=False).run(batch, seen)
    left_out = _cascade(models, retrieve_n=60, fine_n=10).run(batch, seen)
    assert any(set(_valid(kept.retrieval, r)) & seen_sets[r] for r in range(6))
    assert not any(set(_valid(left_out.retrieval, r)) & seen_sets[r] for r in range(6))


def test_ranking_stages_off_equal_multi_interest_search(models):
    retrieval, index = models[0], models[1]
    batch, seen = _batch(empty=())
    result = _cascade(models, retrieve_n=30, per_interest=12, diversity=0.5).run(batch, seen)
    with torch.no_grad():
        interests = retrieval.user_interests(_last_behaviours(batch, 8)).interests.numpy()
    expected = multi_interest_search(index, interests, 30, 12, seen, 0.5, CATEGORY)
    assert result.stages == ("retrieval",) and result.coarse is None and result.fine is None
    assert np.array_equal(result.final.items, expected.items)
    assert np.array_equal(result.final.scores, expected.scores)
    assert set(result.stage_scores) == {"retrieval"}


def test_retrieval_plus_fine_ranks_all_retrieved(models):
    batch, seen = _batch(empty=())
    result = _cascade(models, retrieve_n=20, fine_n=20).run(batch, seen)
    assert result.stages == ("retrieval", "fine")
    for row in range(batch.size):
        assert sorted(_valid(result.fine, row)) == sorted(_valid(result.retrieval, row))


def test_sizes_larger_than_the_previous_stage_give_fewer_results_counted(models):
    batch, seen = _batch(size=5, empty=())
    # a user who has seen all but 3 items: retrieval can return only those 3
    all_items = np.arange(FIRST_ITEM, FEATURES.num_items)
    keep = all_items[:3]
    rows = np.r_[seen[0], np.zeros(len(all_items) - 3, dtype=np.int64)]
    items = np.r_[seen[1], all_items[3:]]
    result = _cascade(models, retrieve_n=10, coarse_m=25, fine_n=30).run(batch, (rows, items))
    assert result.coarse.items.shape == (5, 25) and result.fine.items.shape == (5, 30)
    assert sorted(_valid(result.fine, 0)) == sorted(keep.tolist())
    assert np.all(result.fine.items[0, 3:] == 0) and np.all(np.isneginf(result.fine.scores[0, 3:]))
    assert np.all(np.isneginf(result.stage_scores["retrieval"][0, 3:]))
    assert result.stats["retrieval_short"] == 1
    assert result.stats["coarse_short"] == 5 and result.stats["fine_short"] == 5      # 10 < 25 for everyone
    assert result.stats["fine_items"] == 3 + 4 * 10


@pytest.mark.parametrize("mode", ["popularity", "rank"])
def test_users_without_history_get_popular_items_through_every_stage(models, mode):
    batch, seen = _batch(size=6, empty=(1, 4))
    # row 4 has seen the two most popular items: they are left out of its fallback list
    popular = np.argsort(-POPULARITY[FIRST_ITEM:], kind="stable") + FIRST_ITEM
    seen = (np.r_[seen[0][seen[0] != 4], 4, 4], np.r_[seen[1][seen[0] != 4], popular[:2]])
    result = _cascade(models, retrieve_n=20, coarse_m=10, fine_n=5, fallback_ranking=mode).run(batch, seen)
    assert result.fallback.tolist() == [False, True, False, False, True, False]
    assert result.stats["fallback"] == 2
    assert result.retrieval.items[1].tolist() == popular[:20].tolist()
    assert result.retrieval.items[4].tolist() == popular[2:22].tolist()
    np.testing.assert_array_equal(result.retrieval.scores[1], POPULARITY[popular[:20]])
    for row, pool in ((1, popular[:20]), (4, popular[2:22])):
        if mode == "popularity":          # popularity order kept, scores = the counts
            assert result.coarse.items[row].tolist() == pool[:10].tolist()
            assert result.fine.items[row].tolist() == pool[:5].tolist()
            np.testing.assert_array_equal(result.fine.scores[row], POPULARITY[pool[:5]])
        else:                             # ranked by the models on the empty history
            assert set(result.fine.items[row]) <= set(result.coarse.items[row]) <= set(pool)
            assert np.all(np.diff(result.fine.scores[row]) <= 0) and np.isfinite(result.fine.scores[row]).all()
            np.testing.assert_allclose(result.fine.scores[row], _score(models[3], batch, result.fine)[row],
                                       rtol=1e-5, atol=1e-5)
    if mode == "popularity":
        assert result.coarse.items[1].tolist() != _ranked_by(models[2], batch, 1, popular[:20])[:10]


def _ranked_by(model, batch, row, pool):
    from recsys.retrieval.search import Candidates
    scores = _score(model, batch.slice(row, row + 1), Candidates(pool[None], np.zeros((1, len(pool)), np.float32)))
    return [int(i) for i in pool[np.argsort(-scores[0], kind="stable")]]


def test_histories_longer_than_a_model_reads_are_cut_to_their_last_behaviours():
    batch, _ = _batch(size=4, length=10, empty=(2,))
    cut = _last_behaviours(batch, 4)
    assert cut.hist_item.shape == (4, 4)
    for row in range(4):
        n = int(batch.lengths[row])
        assert int(cut.lengths[row]) == min(n, 4)
        assert cut.hist_item[row, :min(n, 4)].tolist() == batch.hist_item[row, max(0, n - 4):n].tolist()
        assert cut.hist_item[row, min(n, 4):].eq(0).all()
    assert _last_behaviours(batch, 10) is batch


def test_bad_configs_and_mismatched_stages_are_config_errors(models):
    retrieval, index, coarse, fine = models
    for bad in ({"retrieve_n": 0}, {"coarse_m": -1}, {"fine_n": 2.5}, {"diversity": -0.1},
                {"fallback_ranking": "skip"}, {"max_rows": True}):
        with pytest.raises(ConfigError):
            CascadeConfig(**bad)
    with pytest.raises(ConfigError, match="unknown cascade key"):
        CascadeConfig.from_dict({"retrieve": 5})
    with pytest.raises(ConfigError, match="needs both a model and its size"):
        Cascade(retrieval, index, coarse, None, item_category=CATEGORY, popularity=POPULARITY,
                config=CascadeConfig(retrieve_n=10))
    other = DIN(FeatureSpec(num_users=40, num_items=90, num_categories=7, max_length=8), item_dim=4, category_dim=4)
    with pytest.raises(ConfigError, match="embeds 90 items"):
        Cascade(retrieval, index, None, other, item_category=CATEGORY, popularity=POPULARITY,
                config=CascadeConfig(retrieve_n=10, fine_n=5))
    with pytest.raises(ConfigError, match="one entry per item id"):
        Cascade(retrieval, index, item_category=CATEGORY[:-1], popularity=POPULARITY)


def _fake_run(path, item="a" * 64, category="c" * 64, user="u" * 64, family="ranking"):
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"weights of " + path.name.encode())
    (path / "model.json").write_text(json.dumps({"family": family}))
    (path / "data_fingerprint.json").write_text(json.dumps({"vocab_fingerprint": {
        "item.parquet": item, "category.parquet": category, "user.parquet": user}}))
    return path


def test_vocabulary_check_names_the_run_and_the_vocabulary(tmp_path):
    retrieval = _fake_run(tmp_path / "sasrec", family="retrieval")
    same = _fake_run(tmp_path / "din")
    check_same_vocabulary({"retrieval": retrieval, "fine": same})
    other = _fake_run(tmp_path / "other", item="b" * 64)
    with pytest.raises(ConfigError, match=r"other: the fine model was trained on another item vocabulary"):
        check_same_vocabulary({"retrieval": retrieval, "coarse": same, "fine": other})
    categories = _fake_run(tmp_path / "cats", category="d" * 64)
    with pytest.raises(ConfigError, match="another category vocabulary"):
        check_same_vocabulary({"retrieval": retrieval, "coarse": categories})
    old = _fake_run(tmp_path / "old")
    (old / "data_fingerprint.json").unlink()
    with pytest.raises(ConfigError, match="records no item vocabulary fingerprint"):
        check_same_vocabulary({"retrieval": retrieval, "fine": old})


def test_importing_the_cascade_loads_no_lightning_pandas_or_pyarrow():
    code = ("import sys, recsys.cascade; bad = [m for m in ('lightning', 'pytorch_lightning', 'pandas', 'pyarrow') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
