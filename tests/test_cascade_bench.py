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
