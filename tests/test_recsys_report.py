"""`recsys report` on hand-made run directories: table numbers, RelaImpr, published figure,
mean ± std over seeds, a page that needs no network; and the results sweep's aggregation."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.metrics import ctr_metrics, rela_impr
from recsys.report import write_report

REPO = Path(__file__).resolve().parents[1]


def fake_run(root: Path, name: str, seed: int, signal: float, published=None) -> Path:
    """A run directory as `recsys fit` leaves it, with predictions of a given quality."""
    rng = np.random.default_rng(seed)
    run = root / name
    (run / "predictions").mkdir(parents=True)
    (run / "logs").mkdir()
    splits = {}
    for split in ("valid", "test"):
        user = np.repeat(np.arange(200), 2)
        label = np.tile([1, 0], 200).astype(np.float32)
        prob = 1 / (1 + np.exp(-(signal * (2 * label - 1) + rng.normal(size=400))))
        pq.write_table(pa.table({"sample_index": np.arange(400), "user": user, "label": label, "prob": prob}),
                       str(run / "predictions" / f"{split}.parquet"))
        splits[split] = ctr_metrics(label, prob, user)
    (run / "logs" / "metrics.csv").write_text(
        "epoch,step,train/loss,valid/auc\n0,9,0.69,\n0,19,0.60,\n0,19,,0.7\n1,29,0.55,\n1,39,0.50,0.75\n")
    metrics = {"splits": splits, "run": name, "model": "models.din.DIN", "protocol": "din", "seed": seed,
               "dataset": "runs/data/demo", "epochs": 2, "best_epoch": 1,
               "train_samples_per_second": 1234.5, "published": published}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def runs(tmp_path):
    base = fake_run(tmp_path, "base", 0, 0.3)
    seeds = [fake_run(tmp_path, f"din_seed{s}", s, 1.0,
                      published={"metric": "auc", "value": 0.8818, "source": "DIN Table 3", "protocol": "din"})
             for s in (0, 1, 2)]
    return [base] + seeds


def test_report_numbers_relaimpr_published_and_seed_groups(runs, tmp_path):
    page = write_report(runs, tmp_path / "report", title="unit report")
    md = (tmp_path / "report" / "report.md").read_text()
    metrics = [json.loads((r / "metrics.json").read_text())["splits"]["test"] for r in runs]
    base_auc = metrics[0]["auc"]
    for run, m in zip(runs, metrics):
        row = next(line for line in md.splitlines() if line.startswith(f"| {run.name} |"))
        assert f"{m['auc']:.4f}" in row and f"{m['gauc']:.4f}" in row and f"{m['logloss']:.4f}" in row
        assert f"{rela_impr(m['auc'], base_auc):+.2f}%" in row
    assert "AUC 0.8818 (DIN Table 3)" in md
    din = np.array([m["auc"] for m in metrics[1:]])
    assert f"| din | 3 | {din.mean():.4f} ± {din.std(ddof=1):.4f} |" in md       # mean ± std over the seeds

    html = page.read_text()
    assert html.count("data:image/png;base64,") >= 3                        # ROC, calibration, curves
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)        # self-contained: no network
    assert "<title>unit report</title>" in html and 'class="best"' in html


def test_report_refuses_an_empty_list(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        write_report([], tmp_path / "r")


def test_results_sweep_aggregates_seeds_and_rewrites_only_its_block(runs, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import real_data_results as sweep
    rows = sweep.aggregate({"din_demo": runs[1:]})
    aucs = [json.loads((r / "metrics.json").read_text())["splits"]["test"]["auc"] for r in runs[1:]]
    assert rows[0]["test_auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert rows[0]["test_auc"]["std"] == pytest.approx(np.std(aucs, ddof=1))
    assert rows[0]["seeds"] == [0, 1, 2]
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\nkept above\n\n<!-- BEGIN real-data -->\nold table\n<!-- END real-data -->\n\nkept below\n")
    sweep.update_docs(doc, sweep.markdown(rows, "python bench/real_data_results.py demo"))
    text = doc.read_text()
    assert "old table" not in text and "kept above" in text and "kept below" in text
    assert f"{np.mean(aucs):.4f} ± {np.std(aucs, ddof=1):.4f}" in text
