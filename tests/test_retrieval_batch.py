"""The FAISS stage on a model trained through `fit`: run indexes, exact search against the
full-ranking evaluator, `recsys retrieve` end to end (raw ids, fallbacks, resume), bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from recsys.cli import main as cli_main
from recsys.config import parse_config
from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.errors import CheckpointError, DataError, NonFiniteLossError
from recsys.full_ranking import SplitTruth, item_matrix, rank_top_k
from recsys.retrieval.batch import RetrieveOptions, read_summary, retrieve
from recsys.retrieval.index import IndexConfig, build_run_index, load_run_index
from recsys.retrieval.search import multi_interest_search
from recsys.runner import fit, load_run
from tests.cascade_fixtures import users_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("faiss_stage")
    data = build_dataset(DataConfig(output=str(root / "data"), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(n_rows=5000, n_items=250, n_categories=10, mean_events=25.0,
                                                      interests_per_user=2)),
        protocol=ProtocolConfig(name="loo", max_length=20)), progress=False)
    raw = {"name": "yt", "output_dir": str(root / "yt"), "seed": 0,
           "data": {"path": str(data), "batch_size": 256, "eval_batch_size": 512},
           "model": {"class_path": "YouTubeDNN", "init_args": {"embedding_dim": 16, "hidden_units": [16]}},
           "optimizer": {"lr": 0.01}, "retrieval": {"num_negatives": 100},
           "trainer": {"max_epochs": 1, "limit_train_batches": 8, "enable_progress_bar": False}}
    return fit(parse_config(raw), progress=False), BuiltDataset.open(data)


def test_exact_index_agrees_with_the_full_ranking_evaluator(trained):
    """Same model, same items, same masked history: FAISS exact search = rank_top_k."""
    run, dataset = trained
    _, model = load_run(run)
    index = load_run_index(run, "flat") if (run / "index" / "flat.faiss").exists() else \
        load_run_index(build_run_index(run).parent.parent, "flat")
    truth = SplitTruth(dataset, "test")
    items = item_matrix(model, model.features.num_items, 4096, torch.device("cpu"))
    batch = next(iter(SampleLoader(dataset, "test", 200, max_length=20)))
    index_rows = batch.sample_index.numpy()
    with torch.no_grad():
        interests = model.user_interests(batch).interests
    rows, seen = truth.seen(index_rows, truth.truth(index_rows))
    expected = rank_top_k(interests, items, 50, (torch.from_numpy(rows), torch.from_numpy(seen))).numpy()
    found = multi_interest_search(index, interests.numpy(), 50, seen=(rows, seen))
    assert np.array_equal(found.items, expected)


def _by_hand(run: Path, dataset: BuiltDataset, raw_user, top_n: int) -> list:
    """One user's top-N computed independently: timeline read with pyarrow, torch full ranking."""
    _, model = load_run(run)
    user_id = int(dataset.vocabulary("user").encode(pa.array([raw_user]))[0])
    timelines = pq.read_table(str(dataset.path / "timelines")).to_pydict()
    row = timelines["user"].index(user_id)
    items, categories = timelines["items"][row], timelines["categories"][row]
    from recsys.contract import Batch
    hist = torch.tensor([items[-20:]])
    batch = Batch(user=torch.tensor([user_id]), label=torch.zeros(1), lengths=torch.tensor([len(hist[0])]),
                  target_item=torch.zeros(1, dtype=torch.long), target_category=torch.zeros(1, dtype=torch.long),
                  hist_item=hist, hist_category=torch.tensor([categories[-20:]]),
                  hist_behavior=torch.zeros_like(hist))
    with torch.no_grad():
        interests = model.user_interests(batch).interests
    vectors = item_matrix(model, model.features.num_items, 4096, torch.device("cpu"))
    seen = torch.tensor(sorted(set(items)))
    top = rank_top_k(interests, vectors, top_n, (torch.zeros(len(seen), dtype=torch.long), seen))[0].numpy()
    return dataset.vocabulary("item").decode(top).to_pylist()


def test_retrieve_raw_users_fallbacks_and_given_histories(trained, tmp_path):
    run, dataset = trained
    vocab = dataset.vocabulary("user")
    known = vocab.raw.to_pylist()[:5]
    unknown = max(vocab.raw.to_pylist()) + 1000
    raw_items = dataset.vocabulary("item").raw.to_pylist()
    users = known + [unknown, unknown, known[0]]
    histories = [None] * 5 + [None, raw_items[:3] + [10 ** 9], []]      # given history; an empty one
    path = users_file(tmp_path / "users.parquet", users, histories)
    out = tmp_path / "candidates.parquet"
    summary = retrieve(run, path, out, RetrieveOptions(top_n=30, chunk_users=3), progress=False)
    counts = summary["counts"]
    assert counts == {"users": 8, "retrieved": 6, "unknown_users": 1, "no_history": 1, "short_users": 0,
                      "history_rows": 2, "unknown_history_items": 1, "candidates": 8 * 30}
    table = pq.read_table(str(out))
    assert table.schema.names == ["user", "rank", "item", "score", "fallback"]
    assert read_summary(out)["counts"] == counts
    rows = table.to_pylist()
    per_row = [rows[i * 30:(i + 1) * 30] for i in range(8)]              # input order, 30 per user
    for i in range(5):
        assert [r["user"] for r in per_row[i]] == [known[i]] * 30 and [r["rank"] for r in per_row[i]] == list(range(30))
        assert [r["item"] for r in per_row[i]] == _by_hand(run, dataset, known[i], 30)
        assert not any(r["fallback"] for r in per_row[i])
        scores = [r["score"] for r in per_row[i]]
        assert scores == sorted(scores, reverse=True)
    popular = dataset.vocabulary("item").raw.to_pylist()[:30]            # ids are in descending frequency
    assert [r["item"] for r in per_row[5]] == popular and all(r["fallback"] for r in per_row[5])
    assert not any(r["fallback"] for r in per_row[6])                    # unknown user, but a history given
    assert not {r["item"] for r in per_row[6]} & set(raw_items[:3])     # its given items count as seen
    assert [r["item"] for r in per_row[7]] == popular                    # empty given history: fallback
    assert not list(tmp_path.glob(".*"))                                 # no parts or temporaries left


def test_a_killed_retrieve_resumes_and_equals_an_uninterrupted_one(trained, tmp_path):
    run, dataset = trained
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:20])
    whole = tmp_path / "whole.parquet"
    retrieve(run, path, whole, RetrieveOptions(top_n=10, chunk_users=6), progress=False)

    def stop(i):
        if i == 1:
            raise KeyboardInterrupt
    out = tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        retrieve(run, path, out, RetrieveOptions(top_n=10, chunk_users=6), progress=False, after_chunk=stop)
    assert not out.exists() and len(list((tmp_path / ".out.parquet.parts").glob("part-*.parquet"))) == 2
    summary = retrieve(run, path, out, RetrieveOptions(top_n=10, chunk_users=6), progress=False)
    assert summary["resumed_parts"] == 2
    assert pq.read_table(str(out)).equals(pq.read_table(str(whole)))
    with pytest.raises(FileExistsError, match="--overwrite"):
        retrieve(run, path, out, RetrieveOptions(top_n=10), progress=False)
    # another job's leftover parts are discarded, not mixed in
    with pytest.raises(KeyboardInterrupt):
        retrieve(run, path, out, RetrieveOptions(top_n=5, chunk_users=6), overwrite=True, progress=False,
                 after_chunk=stop)
    retrieve(run, path, out, RetrieveOptions(top_n=10, chunk_users=6), overwrite=True, progress=False)
    assert pq.read_table(str(out)).equals(pq.read_table(str(whole)))


def test_bad_users_files(trained, tmp_path):
    run, _ = trained
    empty = users_file(tmp_path / "empty.parquet", pa.array([], pa.int64()))
    summary = retrieve(run, empty, tmp_path / "none.parquet", progress=False)
    assert summary["counts"]["users"] == 0 and pq.read_table(str(tmp_path / "none.parquet")).num_rows == 0
    (tmp_path / "zero.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="zero.parquet: not a readable Parquet file"):
        retrieve(run, tmp_path / "zero.parquet", tmp_path / "x.parquet", progress=False)
    pq.write_table(pa.table({"uid": [1]}), str(tmp_path / "nouser.parquet"))
    with pytest.raises(DataError, match="no 'user' column"):
        retrieve(run, tmp_path / "nouser.parquet", tmp_path / "x.parquet", progress=False)
    pq.write_table(pa.table({"user": ["abc"]}), str(tmp_path / "strings.parquet"))
    with pytest.raises(DataError, match="cannot be read as the vocabulary's raw user ids"):
        retrieve(run, tmp_path / "strings.parquet", tmp_path / "x.parquet", progress=False)
    assert not (tmp_path / "x.parquet").exists()


def _copy_run(run: Path, dest: Path, change=None) -> Path:
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("index", "checkpoints"))
    if change is not None:
        state = load_file(str(dest / "model.safetensors"))
        change(state)
        save_file(state, str(dest / "model.safetensors"))
    return dest


def test_an_index_of_another_model_or_vocabulary_is_refused_and_nan_interests_are_named(trained, tmp_path, capsys):
    run, dataset = trained
    build_run_index(run)
    other = _copy_run(run, tmp_path / "other", lambda s: s["item_output.weight"].mul_(2))
    shutil.copytree(run / "index", other / "index")
    with pytest.raises(CheckpointError, match="built for another model"):
        load_run_index(other, "flat")
    fingerprint = json.loads((run / "data_fingerprint.json").read_text())
    fingerprint["vocab_fingerprint"]["item.parquet"] = "0" * 64
    relabelled = _copy_run(run, tmp_path / "relabelled")
    shutil.copytree(run / "index", relabelled / "index")
    (relabelled / "data_fingerprint.json").write_text(json.dumps(fingerprint))
    with pytest.raises(CheckpointError, match="another item vocabulary"):
        load_run_index(relabelled, "flat")
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:4])
    assert cli_main(["retrieve", str(other), "--users", str(path), "--out", str(tmp_path / "c.parquet"),
                     "--quiet"]) == 2
    assert "built for another model" in capsys.readouterr().err
    def nan_tower(state):
        state[next(k for k in sorted(state) if k.startswith("tower") and k.endswith("weight"))].fill_(float("nan"))
    broken = _copy_run(run, tmp_path / "nan", nan_tower)      # NaN user vectors, finite item vectors
    with pytest.raises(NonFiniteLossError, match=r"interest vectors for 4 users"):
        retrieve(broken, path, tmp_path / "nan.parquet", progress=False)


def test_index_and_retrieve_commands(trained, tmp_path, capsys):
    run, dataset = trained
    config = tmp_path / "hnsw.yaml"
    config.write_text("kind: hnsw\nm: 8\nef_search: 64\n")
    assert cli_main(["index", str(run), "--config", str(config), "--ef-construction", "40"]) == 0
    assert "HNSW8,Flat" in capsys.readouterr().out
    stamp = json.loads((run / "index" / "hnsw.json").read_text())
    assert stamp["params"] == {"m": 8, "ef_construction": 40, "ef_search": 64}
    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:50])
    out = tmp_path / "hnsw.parquet"
    assert cli_main(["retrieve", str(run), "--users", str(path), "--out", str(out), "--index", "hnsw",
                     "--top-n", "20", "--diversity", "0.1", "--quiet"]) == 0
    assert "1000 rows for 50 users" in capsys.readouterr().out
    assert read_summary(out)["index"]["factory"] == "HNSW8,Flat"
    config.write_text("kind: flat\nnprobe: 3\n")
    assert cli_main(["index", str(run), "--config", str(config)]) == 2
    assert "does not apply to a 'flat' index" in capsys.readouterr().err


def test_multi_interest_model_exact_search_equals_full_ranking_and_retrieves_diverse_lists(trained, tmp_path):
    """ComiRec-SA (K = 4 interests) trained through fit: exact FAISS search = the evaluator's
    full ranking on the test split; retrieve with λ > 0 spreads the lists over more categories."""
    _, dataset = trained
    raw = {"name": "sa", "output_dir": str(tmp_path / "sa"), "seed": 0,
           "data": {"path": str(dataset.path), "batch_size": 256, "eval_batch_size": 512},
           "model": {"class_path": "ComiRecSA", "init_args": {"embedding_dim": 16, "num_interests": 4}},
           "optimizer": {"lr": 0.01}, "retrieval": {"num_negatives": 100},
           "trainer": {"max_epochs": 1, "limit_train_batches": 4, "enable_progress_bar": False}}
    run = fit(parse_config(raw), progress=False)
    _, model = load_run(run)
    index = load_run_index(build_run_index(run).parent.parent, "flat")
    truth = SplitTruth(dataset, "test")
    batch = next(iter(SampleLoader(dataset, "test", 200, max_length=20)))
    with torch.no_grad():
        interests = model.user_interests(batch).interests
    assert interests.shape[1] == 4
    sample = batch.sample_index.numpy()
    rows, seen = truth.seen(sample, truth.truth(sample))
    items = item_matrix(model, model.features.num_items, 4096, torch.device("cpu"))
    expected = rank_top_k(interests, items, 50, (torch.from_numpy(rows), torch.from_numpy(seen))).numpy()
    assert np.array_equal(multi_interest_search(index, interests.numpy(), 50, seen=(rows, seen)).items, expected)

    path = users_file(tmp_path / "users.parquet", dataset.vocabulary("user").raw.to_pylist()[:40])
    category = dataset.item_category
    item_vocab = dataset.vocabulary("item")
    spread = {}
    for coef in (0.0, 1.0):
        out = tmp_path / f"c{coef}.parquet"
        retrieve(run, path, out, RetrieveOptions(top_n=20, diversity=coef), progress=False)
        table = pq.read_table(str(out))
        ids = item_vocab.encode(table.column("item").combine_chunks())
        users = table.column("user").to_numpy()
        spread[coef] = np.mean([len(set(category[ids[users == u]])) for u in np.unique(users)])
    assert spread[1.0] > spread[0.0], spread
