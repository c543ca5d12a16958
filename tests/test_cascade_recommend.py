"""`recsys recommend` end to end on runs trained through `fit` on generated data: a
retrieval model on the loo build and DIN / FinalMLP on the din build of the same log (same
vocabularies), stage scores against the models, fallbacks, kill / resume, refused runs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.artifacts import load_model
from recsys.cascade import Cascade, CascadeConfig
from recsys.cli import main as cli_main
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.errors import ConfigError
from recsys.retrieval.batch import RetrieveOptions, read_summary, retrieve
from recsys.retrieval.recommend import RecommendConfig, load_recommend_config, recommend
from tests.cascade_fixtures import build as _build, fit_run as _fit, users_file

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade_runs")
    loo, din = _build(root, "loo", "loo"), _build(root, "din", "din")
    return {
        "root": root, "loo": loo,
        "retrieval": _fit(loo, root / "sa", "ComiRecSA", {"embedding_dim": 16, "num_interests": 2}, True),
        "coarse": _fit(din, root / "finalmlp", "FinalMLP", {"embedding_dim": 8, "mlp1_units": [16],
                                                             "mlp2_units": [16], "fs_hidden_units": [16],
                                                             "num_heads": 2}, False),
        "fine": _fit(din, root / "din", "DIN", {"item_dim": 8, "category_dim": 8, "attention_units": [8],
                                               "mlp_units": [16, 8]}, False),
    }


def _config(runs, coarse=True, fine=True, **cascade) -> RecommendConfig:
    cascade = {"retrieve_n": 40, "coarse_m": 20 if coarse else None, "fine_n": 8 if fine else None, **cascade}
    return RecommendConfig(str(runs["retrieval"]), str(runs["coarse"]) if coarse else None,
                           str(runs["fine"]) if fine else None, CascadeConfig(**cascade), chunk_users=4, threads=1)


def test_the_two_builds_of_one_log_share_their_vocabularies(runs):
    prints = [json.loads((runs[s] / "data_fingerprint.json").read_text())["vocab_fingerprint"]
              for s in ("retrieval", "fine")]
    for name in ("item.parquet", "category.parquet", "user.parquet"):
        assert prints[0][name] == prints[1][name]


def test_recommend_writes_every_stage_with_its_scores_and_counted_fallbacks(runs, tmp_path):
    dataset = BuiltDataset.open(runs["loo"])
    known = dataset.vocabulary("user").raw.to_pylist()[:9]
    unknown = max(dataset.vocabulary("user").raw.to_pylist()) + 100
    raw_items = dataset.vocabulary("item").raw.to_pylist()
    users = known + [unknown, unknown]
    path = users_file(tmp_path / "users.parquet", users, [None] * 9 + [None, raw_items[5:9]])
    out = tmp_path / "recs.parquet"
    summary = recommend(_config(runs), path, out, progress=False)
    counts = summary["counts"]
    assert counts["users"] == 11 and counts["unknown_users"] == 1 and counts["no_history"] == 0
    assert counts["retrieved"] == 10 and counts["history_rows"] == 1 and counts["recommended"] == 11 * 8
    assert summary["stages"] == ["retrieval", "coarse", "fine"]
    table = pq.read_table(str(out))
    assert table.schema.names == ["user", "rank", "item", "score", "retrieval_score", "coarse_score", "fine_score",
                                  "fallback"]
    assert read_summary(out)["counts"] == counts

    # the same users through the Cascade directly: the table is its final list, in raw ids
    from recsys.retrieval.batch import UserHistories, chunk_inputs, user_batch
    ctx = UserHistories(dataset, 20)
    cascade = Cascade.from_runs(runs["retrieval"], runs["coarse"], runs["fine"], _config(runs).cascade,
                                item_category=ctx.item_category, popularity=ctx.counts)
    chunk = pq.read_table(str(path)).to_batches()[0]
    ids, hist, lengths, seen, use_model = chunk_inputs(ctx, chunk, "users", 0, {k: 0 for k in (
        "users", "history_rows", "unknown_history_items", "unknown_users", "no_history", "retrieved")})
    expected = cascade.run(user_batch(ids, hist, lengths), seen)
    rows = table.to_pylist()
    for r in range(11):
        mine = rows[r * 8:(r + 1) * 8]
        assert [x["user"] for x in mine] == [users[r]] * 8 and [x["rank"] for x in mine] == list(range(8))
        assert [x["item"] for x in mine] == dataset.vocabulary("item").decode(expected.fine.items[r]).to_pylist()
        np.testing.assert_allclose([x["fine_score"] for x in mine], expected.fine.scores[r], rtol=1e-6)
        assert [x["score"] for x in mine] == [x["fine_score"] for x in mine]
        assert all(x["fallback"] == (r == 9) for x in mine)
        if r != 9:
            scores = [x["fine_score"] for x in mine]
            assert scores == sorted(scores, reverse=True)
    # the fallback row (unknown user, no history) keeps popularity order through the stages
    popular = raw_items[:8]                                         # ids are in descending frequency
    assert [x["item"] for x in rows[72:80]] == popular
    assert not {x["item"] for x in rows[80:88]} & set(raw_items[5:9])   # the given history counts as seen
    assert not list(tmp_path.glob(".*"))


def test_stages_off_equal_recsys_retrieve(runs, tmp_path):
    dataset = BuiltDataset.open(runs["loo"])
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:12])
    recommend(_config(runs, coarse=False, fine=False, retrieve_n=15), path, tmp_path / "recs.parquet", progress=False)
    retrieve(runs["retrieval"], path, tmp_path / "cands.parquet", RetrieveOptions(top_n=15), progress=False)
    recs, cands = pq.read_table(str(tmp_path / "recs.parquet")), pq.read_table(str(tmp_path / "cands.parquet"))
    assert recs.schema.names == ["user", "rank", "item", "score", "retrieval_score", "fallback"]
    for column in ("user", "rank", "item", "score", "fallback"):
        assert recs.column(column).equals(cands.column(column))


def test_a_killed_recommend_resumes_and_equals_an_uninterrupted_one(runs, tmp_path):
    dataset = BuiltDataset.open(runs["loo"])
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:14])
    whole = tmp_path / "whole.parquet"
    recommend(_config(runs), path, whole, progress=False)

    def stop(i):
        if i == 1:
            raise KeyboardInterrupt
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        recommend(_config(runs), path, out, progress=False, after_chunk=stop)
    assert not out.exists() and len(list((tmp_path / ".out.parquet.parts").glob("part-*.parquet"))) == 2
    summary = recommend(_config(runs), path, out, progress=False)
    assert summary["resumed_parts"] == 2
    assert pq.read_table(str(out)).equals(pq.read_table(str(whole)))
    with pytest.raises(FileExistsError, match="--overwrite"):
        recommend(_config(runs), path, out, progress=False)
    # another job's parts (other fine_n) are discarded, not mixed in
    with pytest.raises(KeyboardInterrupt):
        recommend(_config(runs, fine_n=3), path, out, overwrite=True, progress=False, after_chunk=stop)
    recommend(_config(runs), path, out, overwrite=True, progress=False)
    assert pq.read_table(str(out)).equals(pq.read_table(str(whole)))


def test_a_ranker_of_another_vocabulary_is_refused_before_any_work(runs, tmp_path, capsys):
    other_data = _build(tmp_path, "other", "din", n_items=150)
    other = _fit(other_data, tmp_path / "din_other", "DIN", {"item_dim": 4, "category_dim": 4}, False)
    dataset = BuiltDataset.open(runs["loo"])
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:3])
    config = RecommendConfig(str(runs["retrieval"]), None, str(other), CascadeConfig(retrieve_n=10, fine_n=5))
    with pytest.raises(ConfigError, match="the fine model was trained on another item vocabulary"):
        recommend(config, path, tmp_path / "x.parquet", progress=False)
    with pytest.raises(ConfigError, match="another item vocabulary"):
        Cascade.from_runs(runs["retrieval"], None, other, CascadeConfig(retrieve_n=10, fine_n=5),
                          item_category=np.zeros(1), popularity=np.zeros(1))
    with pytest.raises(ConfigError, match="needs a ranking model"):
        Cascade.from_runs(runs["retrieval"], runs["retrieval"], None, CascadeConfig(retrieve_n=10, coarse_m=5),
                          item_category=np.zeros(1), popularity=np.zeros(1))
    assert not (tmp_path / "x.parquet").exists() and not list(tmp_path.glob(".x.parquet*"))
    yaml_path = tmp_path / "cascade.yaml"
    yaml_path.write_text(f"retrieval: {{run: {runs['retrieval']}, n: 10}}\nfine: {{run: {other}, n: 5}}\nthreads: 1\n")
    assert cli_main(["recommend", str(yaml_path), "--users", str(path), "--out", str(tmp_path / "x.parquet"),
                     "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "another item vocabulary" in err and len(err.splitlines()) == 1


def test_recommend_command_and_config_file(runs, tmp_path, capsys):
    dataset = BuiltDataset.open(runs["loo"])
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:6])
    yaml_path = tmp_path / "cascade.yaml"
    yaml_path.write_text(f"retrieval: {{run: {runs['retrieval']}, n: 30}}\ncoarse: {{run: {runs['coarse']}, m: 12}}\n"
                         f"fine: {{run: {runs['fine']}, n: 5}}\nchunk_users: 4\nthreads: 1\n")
    out = tmp_path / "recs.parquet"
    assert cli_main(["recommend", str(yaml_path), "--users", str(path), "--out", str(out), "--quiet",
                     "--set", "coarse=null"]) == 0
    printed = capsys.readouterr().out
    assert "30 rows for 6 users" in printed and "retrieval -> fine" in printed
    assert pq.read_table(str(out)).schema.names == ["user", "rank", "item", "score", "retrieval_score",
                                                    "fine_score", "fallback"]
    config = load_recommend_config(yaml_path)
    assert RecommendConfig.from_dict(config.to_dict()) == config
    for text, message in (("retrieval: {run: x}\nfine: {n: 3}\n", "fine is null"),
                          ("retrieval: {run: x, top_n: 3}\n", "unknown key.*top_n"),
                          ("retrieval: {run: x}\nrerank: {run: y}\n", "unknown key.*rerank"),
                          ("fine: null\n", "retrieval.run"),
                          ("retrieval: {run: x, n: 0}\n", "retrieve_n must be a positive integer"),
                          ("retrieval: {run: x}\nchunk_users: 0\n", "chunk_users must be a positive integer")):
        yaml_path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_recommend_config(yaml_path)


def test_shipped_cascade_configs_parse():
    for path in sorted(Path(__file__).parents[1].glob("configs/cascade/*.yaml")):
        config = load_recommend_config(path)
        assert config.runs["retrieval"].parts[0] == "runs" and RecommendConfig.from_dict(config.to_dict()) == config
    assert len(sorted(Path(__file__).parents[1].glob("configs/cascade/*.yaml"))) >= 1
