"""bench/cascade_results.py's table: mean ± std over seeds of the per-variant metrics, written
between its markers in a results file (the rest of the file untouched)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cascade_results import table  # noqa: E402


def _result(path: Path, seed: int, hr20: float) -> Path:
    metrics = {"hr@10": hr20 / 2, "ndcg@10": hr20 / 4, "hr@20": hr20, "ndcg@20": hr20 / 3}
    path.write_text(json.dumps({
        "name": f"beauty_seed{seed}", "runs": {"retrieval": "runs/r", "fine": "runs/f"}, "users": 100, "every": 2,
        "dataset": "runs/data/amazon_beauty_loo", "models": {"retrieval": "SASRec", "fine": "DIN"},
        "retrieve_n": 500, "coarse_m": None, "final": 20,
        "metrics": {"retrieval": metrics, "retrieval+fine": {k: v / 2 for k, v in metrics.items()}},
        "candidate_recall": {"hr@retrieve_n": 0.3, "hr@coarse_m": None},
        "users_per_second": {"retrieval": 1000.0, "retrieval+fine": 40.0},
        "command": f"python bench/cascade_results.py run --name beauty_seed{seed}"}))
    return path


def test_table_averages_seeds_and_writes_only_its_section(tmp_path):
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nkept text\n")
    paths = [_result(tmp_path / f"s{s}.json", s, hr) for s, hr in ((0, 0.06), (1, 0.08))]
    body = table(paths, docs)
    assert "| retrieval top 20 | 2 | 0.0350 ± 0.0071 | 0.0175 ± 0.0035 | 0.0700 ± 0.0141 | 0.0233 ± 0.0047 | 1000 |" in body
    assert "| retrieval top 500 → DIN top 20 | 2 | 0.0175 ± 0.0035 |" in body and "100 test users (every 2nd user)" in body
    text = docs.read_text()
    assert text.startswith("# Results\n\nkept text\n") and "<!-- BEGIN cascade" in text and "<!-- END cascade -->" in text
    table(paths[:1], docs)                               # rewritten in place, not appended twice
    assert docs.read_text().count("<!-- BEGIN cascade") == 1 and "± " not in docs.read_text().split("kept text")[1]


def test_train_history_users_drops_the_held_out_items_in_raw_ids(tmp_path):
    """bench/train_history_users.py: one row per user, the timeline without its last two items
    (validation and test), raw ids that the retrieve job maps back to the same internal ids."""
    import pyarrow.parquet as pq

    from bench.train_history_users import write_users
    from recsys.data_pipelines.dataset import BuiltDataset
    from tests.cascade_fixtures import build

    data = build(tmp_path, "loo", "loo")
    counts = write_users(str(data), str(tmp_path / "users.parquet"))
    dataset = BuiltDataset.open(data)
    timelines = dataset.timelines()
    users = pq.read_table(str(tmp_path / "users.parquet"))
    assert users.num_rows == timelines.num_rows == counts["users"]
    item_vocab, user_vocab = dataset.vocabulary("item"), dataset.vocabulary("user")
    for row in (0, 7, users.num_rows - 1):
        timeline = timelines.column("items")[row].as_py()
        history = users.column("history")[row].as_py()
        assert len(history) == max(len(timeline) - 2, 0)
        assert list(item_vocab.encode(pa_array(history))) == timeline[:len(history)]
        assert int(user_vocab.encode(pa_array([users.column("user")[row].as_py()]))[0]) == \
            timelines.column("user")[row].as_py()
    assert counts["history_items"] == sum(max(len(t) - 2, 0) for t in timelines.column("items").to_pylist())


def pa_array(values):
    import pyarrow as pa
    return pa.array(values, pa.int64())
