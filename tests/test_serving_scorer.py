"""Scorer on a trained, exported DIN: the run's own predictions from raw ids, counted unknowns
and truncation, clear errors for bad requests, concurrent callers, the compiled switch."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.serving import Request, RequestError, Scorer, export_artifact
from tests.conftest import REPO
from tests.serving_fixtures import build_side_dataset, train

UNKNOWN_RAW = -987654321       # an integer raw id no vocabulary holds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving")
    dataset = build_side_dataset(root / "data")
    run = train(dataset, root / "din")
    return BuiltDataset(dataset), run, export_artifact(run, root / "artifact")


@pytest.fixture(scope="module")
def scorer(trained):
    return Scorer.load(trained[2])


def raw_requests(ds: BuiltDataset, split: str = "test"):
    """The split's samples as raw-id requests, one per (timeline row, cut): the user's whole
    timeline before the cut (longer than L: the Scorer truncates), the target step's hour and
    behaviour, the raw user id; with the sample indices of each request's candidates."""
    cols = {k: np.asarray(v) for k, v in ds.sample_columns(split).items()}
    offsets = np.asarray(ds.flat("offsets"))
    flat_item, flat_ts, flat_behavior = (np.asarray(ds.flat(n)) for n in ("item", "timestamp", "behavior"))
    flat_category = np.asarray(ds.flat("category"))
    items, users = ds.vocabulary("item"), ds.vocabulary("user")
    raw_item = np.asarray(items.raw.to_numpy(zero_copy_only=False))
    raw_user = np.asarray(users.raw.to_numpy(zero_copy_only=False))
    behaviors = {1: "pv", 2: "cart", 3: "fav", 4: "buy"}
    groups = {}
    for index, (row, cut) in enumerate(zip(cols["row"], cols["cut"])):
        groups.setdefault((int(row), int(cut)), []).append(index)
    requests, samples = [], []
    for (row, cut), members in groups.items():
        start = offsets[row]
        hist_ids = flat_item[start:start + cut]
        # the serving table of categories is the training data's (asserted: this data has one per item)
        assert np.array_equal(ds.item_category[hist_ids], flat_category[start:start + cut])
        history = [int(raw_item[i - 2]) if i >= 2 else UNKNOWN_RAW for i in hist_ids]
        targets = cols["target_item"][members]
        assert np.array_equal(ds.item_category[targets], cols["target_category"][members])
        event = start + cut
        hour = int(flat_ts[event] // 3600 % 24)
        code = int(flat_behavior[event])
        user = int(raw_user[cols["user"][members[0]] - 2])
        requests.append(Request(history, [int(raw_item[t - 2]) for t in targets], user,
                                {"hour": hour, "behavior_type": behaviors.get(code, code)}))
        samples.append(members)
    return requests, samples


def test_scores_are_the_runs_predictions_from_raw_ids(trained, scorer):
    ds, run, _ = trained
    predictions = pq.read_table(run / "predictions" / "test.parquet")
    expected = np.empty(len(predictions), np.float32)
    expected[predictions.column("sample_index").to_numpy()] = predictions.column("prob").to_numpy()
    requests, samples = raw_requests(ds)
    assert len(requests) > 100 and any(len(r.history) > ds.max_length for r in requests)
    before = scorer.stats
    got = scorer.score_many(requests)
    for members, scores in zip(samples, got):
        np.testing.assert_allclose(scores, expected[members], rtol=1e-5, atol=1e-6)
    # one at a time: the same numbers as the batched call
    for request, members in list(zip(requests, samples))[:20]:
        one = scorer.score(request.history, request.candidates, user=request.user, context=request.context)
        np.testing.assert_allclose(one, expected[members], rtol=1e-5, atol=1e-6)
    after = scorer.stats
    truncated = sum(len(r.history) > ds.max_length for r in requests) + \
        sum(len(r.history) > ds.max_length for r in requests[:20])
    assert after["truncated_histories"] - before["truncated_histories"] == truncated
    assert after["requests"] - before["requests"] == len(requests) + 20
    assert after["candidates"] - before["candidates"] == len(expected) + sum(len(m) for m in samples[:20])


def test_truncation_keeps_the_most_recent_l(trained, scorer):
    ds, _, _ = trained
    raw_item = ds.vocabulary("item").raw.to_pylist()
    length = ds.max_length
    recent = raw_item[:length]
    older = raw_item[length:length + 7]
    candidates = raw_item[50:60]
    kept = scorer.score(recent, candidates, user=5)
    before = scorer.stats
    longer = scorer.score(older + recent, candidates, user=5)
    np.testing.assert_allclose(longer, kept, rtol=0, atol=0)
    after = scorer.stats
    assert after["truncated_histories"] - before["truncated_histories"] == 1
    assert after["truncated_behaviours"] - before["truncated_behaviours"] == 7
    # and the history matters: dropping the most recent behaviour changes the scores
    assert not np.allclose(scorer.score(older + recent[:-1], candidates, user=5), kept)


def test_unknown_ids_are_id_one_and_counted(trained, scorer):
    ds, _, _ = trained
    raw_item = ds.vocabulary("item").raw.to_pylist()
    before = scorer.stats
    scores = scorer.score([raw_item[3], UNKNOWN_RAW, raw_item[9]], [UNKNOWN_RAW, raw_item[4]], user=UNKNOWN_RAW,
                          context={"hour": 99})
    assert scores.shape == (2,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    after = scorer.stats
    delta = {k: after[k] - before[k] for k in after}
    assert delta["unknown_history_items"] == 1 and delta["unknown_candidates"] == 1
    assert delta["unknown_users"] == 1 and delta["unknown_context"] == 1 and delta["missing_context"] == 1
    # an unknown user is the unknown row, exactly as an anonymous one
    anonymous = scorer.score([raw_item[3], UNKNOWN_RAW, raw_item[9]], [UNKNOWN_RAW, raw_item[4]], user=None,
                             context={"hour": 99})
    np.testing.assert_array_equal(anonymous, scores)


def test_empty_candidates_give_an_empty_result(scorer):
    assert scorer.score([1, 2], []).shape == (0,)
    out = scorer.score_many([{"history": [], "candidates": []}, {"history": [], "candidates": [5, 6]}])
    assert [len(o) for o in out] == [0, 2]


def test_profile_overrides_replace_the_side_table_values(trained, scorer):
    ds, _, _ = trained
    raw_item = ds.vocabulary("item").raw.to_pylist()
    user = int(ds.vocabulary("user").raw[0].as_py())
    args = (raw_item[:5], raw_item[10:14])
    base = scorer.score(*args, user=user)
    same = scorer.score(*args, user={"id": user})
    np.testing.assert_array_equal(base, same)
    older = scorer.score(*args, user={"id": user, "age": 99.0, "segment": "s1", "interests": [1, 2]})
    assert older.shape == base.shape and not np.allclose(older, base)
    missing = scorer.score(*args, user={"id": user, "age": None})       # None = missing, as a NaN in the table
    assert np.isfinite(missing).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(history="123", candidates=[1]), r"request.history: expected a list"),
    (dict(history=[1, "2"], candidates=[1]), r"request.history\[1\]: '2' \(str\)"),
    (dict(history=[1.5], candidates=[1]), r"request.history\[0\]: 1.5 \(float\)"),
    (dict(history=[True], candidates=[1]), r"request.history\[0\]: True \(bool\)"),
    (dict(history=[None], candidates=[1]), r"request.history\[0\]: None"),
    (dict(history=[1], candidates=[[1, 2]]), r"request.candidates\[0\]"),
    (dict(history=[1], candidates={1: 2}), r"request.candidates: expected a list"),
    (dict(history=[1], candidates=[1], user="u7"), r"request.user\[0\]: 'u7' \(str\)"),
    (dict(history=[1], candidates=[1], user={"id": 3, "age": float("nan")}), r"request.user.age: nan is not finite"),
    (dict(history=[1], candidates=[1], user={"id": 3, "age": "old"}), r"request.user.age: expected a number"),
    (dict(history=[1], candidates=[1], user={"id": 3, "segment": 5}), r"request.user.segment\[0\]: 5 \(int\)"),
    (dict(history=[1], candidates=[1], user={"id": 3, "colour": 1}), r"unknown user field\(s\) \['colour'\]"),
    (dict(history=[1], candidates=[1], context={"weekday": 3}), r"unknown field\(s\) \['weekday'\]"),
    (dict(history=[1], candidates=[1], context={"behavior_type": "teleport"}), r"'teleport' is not a behaviour"),
    (dict(history=[1], candidates=[1], context=[("hour", 3)]), r"request.context: expected a mapping"),
])
def test_bad_requests_are_clear_errors(scorer, kwargs, message):
    before = scorer.stats
    with pytest.raises(RequestError, match=message):
        scorer.score(**kwargs)
    after = scorer.stats
    assert after["failed_requests"] == before["failed_requests"] + 1
    assert after["requests"] == before["requests"]          # a failed call adds no other counts


def test_score_many_names_the_bad_request(scorer):
    with pytest.raises(RequestError, match=r"requests\[1\].history\[0\]"):
        scorer.score_many([{"history": [1], "candidates": [2]}, {"history": ["x"], "candidates": [2]}])
    with pytest.raises(RequestError, match=r"requests\[0\]: a request needs"):
        scorer.score_many([{"history": [1]}])


def test_concurrent_good_and_bad_requests_do_not_affect_each_other(trained, scorer):
    ds, _, _ = trained
    requests, _ = raw_requests(ds)
    requests = requests[:60]
    expected = [scorer.score(r.history, r.candidates, user=r.user, context=r.context) for r in requests]
    bad = [dict(history=["x"], candidates=[1]), dict(history=[1], candidates=[1], user={"age": float("nan")}),
           dict(history=[1], candidates=[1], context={"nope": 1})]
    before = scorer.stats
    start = threading.Barrier(4)

    def good(i):
        if i < 4:
            start.wait(timeout=60)         # the first four calls (good and bad) start together
        r = requests[i % len(requests)]
        return scorer.score(r.history, r.candidates, user=r.user, context=r.context)

    def failing(i):
        if i < 4:
            start.wait(timeout=60)
        with pytest.raises(RequestError):
            scorer.score(**bad[i % len(bad)])
        return None

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(good if i % 3 else failing, i) for i in range(240)]
        results = [f.result() for f in futures]
    for i, result in enumerate(results):
        if i % 3:
            np.testing.assert_array_equal(result, expected[i % len(requests)])
    after = scorer.stats
    assert after["failed_requests"] - before["failed_requests"] == 80
    assert after["requests"] - before["requests"] == 160


@pytest.mark.parametrize("mode", ["trace", pytest.param("compile", marks=pytest.mark.slow)])   # compile: ~90 s
def test_compiled_paths_give_the_eager_scores(trained, scorer, mode):
    ds, _, artifact = trained
    if mode == "compile":
        pytest.importorskip("torch._dynamo")
    requests, _ = raw_requests(ds)
    compiled = Scorer.load(artifact, compiled=mode)
    # torch.compile: one shape (each compilation costs tens of seconds here); the trace: two
    for batch in ((requests[:1], requests[1:9]) if mode == "trace" else (requests[1:9],)):
        eager = scorer.score_many(batch)
        fast = compiled.score_many(batch)
        for a, b in zip(eager, fast):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    if mode == "trace":       # it traced (multi-valued profile ids included), not fell back to eager
        assert len(compiled._score_fn._graphs) == 2


def _python_blocks(path, heading):
    """The ```python blocks of a Markdown file's section ``heading``."""
    text = (REPO / path).read_text()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", len(heading))] if "\n## " in section[len(heading):] else section
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


@pytest.mark.parametrize("path, heading, count", [("README.md", "## Serving", 1),
                                                  ("docs/serving.md", "## 2. `Scorer`", 2)])
def test_the_documented_examples_run(trained, path, heading, count):
    blocks = _python_blocks(path, heading)
    assert len(blocks) == count
    namespace = {}
    for block in blocks:            # the examples' raw ids are illustrative: unknown ids score too (as id 1)
        exec(block.replace('"artifacts/din"', repr(str(trained[2]))), namespace)
    assert all(len(r) for r in namespace["results"])


def test_dense_and_number_profile_values_reach_the_batch_and_nan_is_refused():
    from recsys.contract import FeatureSpec, FieldSpec, core_fields
    from recsys.serving.ids import IdMap
    from recsys.serving.request import RequestEncoder
    import pyarrow as pa
    spec = FeatureSpec(core_fields(6, 5, 3) + (FieldSpec("emb", "dense", "user", size=3),
                                               FieldSpec("age", "number", "user")), 4)
    tables = {"emb": np.arange(18, dtype=np.float32).reshape(6, 3), "age": np.arange(6, dtype=np.float32)}
    encoder = RequestEncoder(spec, {"item": IdMap("item", pa.array([10, 11, 12])),
                                    "user": IdMap("user", pa.array([100, 101, 102, 103]))},
                             np.array([0, 0, 2, 2, 1]), tables, {}, {})
    encoded = encoder.encode([Request([10, 12], [11], 101), Request([], [10], {"id": 100, "emb": [0.5, 1, 2]})],
                             ["a", "b"])
    np.testing.assert_array_equal(encoded.batch.profile["emb"].numpy(), [[9, 10, 11], [0.5, 1, 2]])  # user 101 = id 3
    np.testing.assert_array_equal(encoded.batch.profile["age"].numpy(), [3, 2])
    assert encoded.batch.hist_category.tolist() == [[2, 1, 0, 0], [0, 0, 0, 0]]
    for value, message in (([1, float("nan"), 2], r"b.user.emb: the vector holds NaN or infinite values at "
                                                    r"positions \[1\]"),
                           ([1, 2], r"b.user.emb: expected a vector of 3 floats, got \(2,\)"),
                           ("abc", r"b.user.emb: expected a vector of 3 floats"),
                           ([1, float("inf"), 2], r"positions \[1\]")):
        with pytest.raises(RequestError, match=message):
            encoder.encode([Request([], [10], {"id": 100, "emb": value})], ["b"])
    with pytest.raises(RequestError, match=r"b.user.age: inf is not finite"):
        encoder.encode([Request([], [10], {"age": float("inf")})], ["b"])


def test_the_traced_path_under_concurrent_callers_of_several_shapes(trained, scorer):
    ds, _, artifact = trained
    requests, _ = raw_requests(ds)
    traced = Scorer.load(artifact, compiled="trace")
    calls = [requests[i:i + 1 + i % 3] for i in range(24)]          # 1, 2 or 3 users: several traced shapes
    expected = [scorer.score_many(c) for c in calls]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(traced.score_many, calls))
    for want, have in zip(expected, got):
        for a, b in zip(want, have):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
