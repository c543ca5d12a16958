"""Recommender on an exported bundle (ComiRec-SA retrieval + FinalMLP coarse + DIN fine, trained
by fit on two builds of one generated log): the same lists as the `recsys recommend` batch job
on the same histories, raw ids out, seen items left out, fallbacks, refused bundles."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recsys.cascade import CascadeConfig
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.errors import CheckpointError, ConfigError
from recsys.retrieval.recommend import RecommendConfig, recommend
from recsys.serving import Recommender, RequestError, Scorer, export_artifact
from tests.cascade_fixtures import build as _build, fit_run as _fit

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving_bundle")
    loo, din = _build(root, "loo", "loo"), _build(root, "din", "din")
    runs = {"retrieval": _fit(loo, root / "sa", "ComiRecSA", {"embedding_dim": 16, "num_interests": 2}, True),
            "coarse": _fit(din, root / "finalmlp", "FinalMLP", {"embedding_dim": 8, "mlp1_units": [16],
                                                                "mlp2_units": [16], "fs_hidden_units": [16],
                                                                "num_heads": 2}, False),
            "fine": _fit(din, root / "din", "DIN", {"item_dim": 8, "category_dim": 8, "attention_units": [8],
                                                   "mlp_units": [16, 8]}, False)}
    out = export_artifact(runs["retrieval"], root / "bundle", fine=runs["fine"], coarse=runs["coarse"])
    return {"root": root, "loo": BuiltDataset(loo), "runs": runs, "artifact": out}


def _histories(ds: BuiltDataset, users: int = 12):
    """Raw user ids and raw histories (the first users' timelines, two of them emptied)."""
    raw_items = ds.vocabulary("item").raw.to_pylist()
    raw_users = ds.vocabulary("user").raw.to_pylist()
    offsets, flat = np.asarray(ds.flat("offsets")), np.asarray(ds.flat("item"))
    timelines = [[raw_items[i - 2] for i in flat[offsets[r]:offsets[r + 1]]] for r in range(users)]
    for row in (3, 7):
        if row < users:
            timelines[row] = []
    return raw_users[:users], timelines


def test_recommendations_equal_the_batch_recommend_job(bundle, tmp_path):
    users, histories = _histories(bundle["loo"])
    runs = bundle["runs"]
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user": pa.array(users), "history": pa.array(histories, pa.list_(pa.int64()))}), path)
    config = CascadeConfig(retrieve_n=40, coarse_m=20, fine_n=8)
    recommend(RecommendConfig(str(runs["retrieval"]), str(runs["coarse"]), str(runs["fine"]), config, chunk_users=5,
                              threads=1), path, tmp_path / "recs.parquet", progress=False)
    job = pq.read_table(tmp_path / "recs.parquet").to_pylist()
    rec = Recommender.load(bundle["artifact"], config)
    got = rec.recommend_many([{"history": h, "user": u} for u, h in zip(users, histories)])
    for b, (user, history) in enumerate(zip(users, histories)):
        expected = [(r["item"], r["score"]) for r in job if r["user"] == user]
        assert [item for item, _ in got[b]] == [item for item, _ in expected], b
        np.testing.assert_allclose([s for _, s in got[b]], [s for _, s in expected], rtol=1e-5, atol=1e-5)
        assert len(got[b]) == 8 and not set(item for item, _ in got[b]) & set(history)   # seen items left out
    one = rec.recommend(histories[0], user=users[0])
    assert one == got[0]
    stats = rec.stats
    assert stats["cascade_fallback"] == 2 and stats["requests"] == len(users) + 1      # rows 3 and 7 (empty)


def test_stage_switches_and_defaults(bundle):
    users, histories = _histories(bundle["loo"], 4)
    full = Recommender.load(bundle["artifact"])
    assert len(full.recommend(histories[0], user=users[0])) == 20             # DEFAULT_SIZES fine_n
    longer = Recommender.load(bundle["artifact"], fine_n=30, coarse_m=60, retrieve_n=90)
    assert len(longer.recommend(histories[0])) == 30
    with pytest.raises(ConfigError, match="retrieve_n must be a positive integer"):
        Recommender.load(bundle["artifact"], retrieve_n=0)
    with pytest.raises(ConfigError, match="unknown cascade key"):
        Recommender.load(bundle["artifact"], top_k=3)


def test_concurrent_callers_get_their_own_lists(bundle):
    users, histories = _histories(bundle["loo"], 10)
    rec = Recommender.load(bundle["artifact"], fine_n=8)
    expected = [rec.recommend(h, user=u) for u, h in zip(users, histories)]

    def call(i):
        if i % 4 == 3:
            with pytest.raises(RequestError):
                rec.recommend(["not an item id"])
            return None
        return rec.recommend(histories[i % 10], user=users[i % 10])

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, range(80)))
    for i, result in enumerate(results):
        if i % 4 != 3:
            assert result == expected[i % 10]


def test_a_scorer_artifact_is_not_a_bundle_and_mismatched_runs_are_refused(bundle, tmp_path):
    runs = bundle["runs"]
    ranker = export_artifact(runs["fine"], tmp_path / "ranker")
    with pytest.raises(CheckpointError, match="no 'retrieval' model in this artifact"):
        Recommender.load(ranker)
    with pytest.raises(ConfigError, match="is a ranking run; --fine/--coarse"):
        export_artifact(runs["fine"], tmp_path / "x", fine=runs["fine"])
    with pytest.raises(ConfigError, match="not a ranking run"):
        export_artifact(runs["retrieval"], tmp_path / "x", fine=runs["retrieval"])
    other = _build(bundle["root"], "other", "din", seed=7)
    other_din = _fit(other, tmp_path / "din_other", "DIN", {"item_dim": 4, "category_dim": 4}, False)
    with pytest.raises(ConfigError, match="another item vocabulary"):
        export_artifact(runs["retrieval"], tmp_path / "mixed", fine=other_din)
    assert not (tmp_path / "mixed").exists() and not list(tmp_path.glob(".mixed*"))
    with pytest.raises(ConfigError, match="fine_n given but the bundle has no fine model"):
        Recommender.load(export_artifact(runs["retrieval"], tmp_path / "retrieval_only"), fine_n=5)
    alone = Recommender.load(tmp_path / "retrieval_only", retrieve_n=15)
    users, histories = _histories(bundle["loo"], 2)
    assert len(alone.recommend(histories[0], user=users[0])) == 15


def test_a_bundle_also_serves_its_rankers_through_scorer(bundle):
    users, histories = _histories(bundle["loo"], 1)
    rec = Recommender.load(bundle["artifact"], fine_n=8)
    ranked = rec.recommend(histories[0], user=users[0])
    fine = Scorer.load(bundle["artifact"])                       # the fine model by default
    logits = np.log(fine.score(histories[0], [item for item, _ in ranked], user=users[0]))
    logits -= np.log1p(-np.exp(logits))                          # probability -> logit
    np.testing.assert_allclose(logits, [score for _, score in ranked], rtol=1e-4, atol=1e-4)
    assert Scorer.load(bundle["artifact"], role="coarse").score(histories[0], [ranked[0][0]]).shape == (1,)
    with pytest.raises(CheckpointError, match="is a retrieval model; a Scorer needs a ranking model"):
        Scorer.load(bundle["artifact"], role="retrieval")
