"""The retrieval family: sampled softmax with logQ, negative proposals, full ranking with
history masking, and YouTube DNN trained through `fit` against a popularity ranking."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from recsys.cli import main as cli_main
from recsys.config import ConfigError, load_config, parse_config
from recsys.contract import FeatureSpec
from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.full_ranking import SplitTruth, rank_top_k
from recsys.models.base import RetrievalModel, RetrievalOutput
from recsys.retrieval_task import ItemProposal, sampled_softmax_loss
from recsys.runner import evaluate, fit, load_run, rank_split

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the loss
def test_sampled_softmax_by_hand_with_logq_and_accidental_hits():
    user = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    positive = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    positive_ids = torch.tensor([7, 9])
    negative = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 1.0]])
    negative_ids = torch.tensor([4, 9, 5])          # 9 is row 1's own target: an accidental hit
    log_q_pos = torch.tensor([0.1, 0.2])
    log_q_neg = torch.tensor([0.3, 0.4, 0.5])
    loss = sampled_softmax_loss(user, positive, positive_ids, negative, negative_ids, temperature=0.5,
                                log_q_positive=log_q_pos, log_q_negative=log_q_neg)
    # row 0: logits [0.5/0.5 - 0.1, 1/0.5 - 0.3, -1/0.5 - 0.4, 0/0.5 - 0.5]
    row0 = [1.0 - 0.1, 2.0 - 0.3, -2.0 - 0.4, 0.0 - 0.5]
    # row 1: positive 2/0.5 - 0.2; negative 9 removed; others 2/0.5 - 0.3 and 2/0.5 - 0.5
    row1 = [4.0 - 0.2, 4.0 - 0.3, 4.0 - 0.5]
    expected = np.mean([-(r[0] - math.log(sum(math.exp(v) for v in r))) for r in (row0, row1)])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = sampled_softmax_loss(user, positive, positive_ids, negative, negative_ids)
    logits = torch.tensor([[0.5, 1.0, -1.0, 0.0], [2.0, 2.0, float("-inf"), 2.0]])
    assert plain.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)).item(), rel=1e-6)
    kept = sampled_softmax_loss(user, positive, positive_ids, negative, negative_ids, remove_accidental_hits=False)
    logits[1, 2] = 0.0                                  # RecTools' form: the hit scores <u_1, e_9> = 2·0
    assert kept.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)).item(), rel=1e-6)
    assert kept.item() != pytest.approx(plain.item(), rel=1e-3)


def test_proposals_draw_real_ids_and_give_log_expected_counts():
    counts = np.array([0, 50, 1, 3, 6, 0], dtype=np.int64)    # ids 0/1 never drawn; id 5 counts as 1
    g = torch.Generator().manual_seed(0)
    uniform = ItemProposal("uniform", 6)
    ids = uniform.draw(4000, g)
    assert ids.min() >= 2 and ids.max() <= 5
    assert uniform.log_expected_count(torch.tensor([2, 5]), 10).tolist() == pytest.approx([math.log(10 / 4)] * 2)
    popular = ItemProposal("popularity", 6, counts)
    ids = popular.draw(22_000, g)
    share = np.bincount(ids.numpy(), minlength=6)[2:] / 22_000
    assert share == pytest.approx(np.array([1, 3, 6, 1]) / 11, abs=0.01)
    assert popular.log_expected_count(torch.tensor([4]), 100).item() == pytest.approx(math.log(100 * 6 / 11), rel=1e-5)


# ---------------------------------------------------------------- full ranking
def test_rank_top_k_equals_a_sort_with_masking_in_any_chunking():
    g = torch.Generator().manual_seed(1)
    interests = torch.randn(5, 3, 4, generator=g)
    items = torch.randn(40, 4, generator=g)
    rows, ids = torch.tensor([0, 0, 3]), torch.tensor([10, 11, 39])
    scores = torch.einsum("bkd,nd->bkn", interests, items).amax(1)
    scores[:, :2] = float("-inf")
    scores[rows, ids] = float("-inf")
    expected = scores.argsort(dim=1, descending=True)[:, :6]
    for chunk in (7, 16, 40, 1000):
        got = rank_top_k(interests, items, 6, (rows, ids), chunk=chunk)
        assert torch.equal(got, expected), chunk


def _build(root: Path, protocol: str, **protocol_args) -> Path:
    return build_dataset(DataConfig(output=str(root / protocol), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(n_rows=15_000, n_items=400, n_categories=20, mean_events=30.0,
                                                      interests_per_user=2)),
        protocol=ProtocolConfig(name=protocol, max_length=20, **protocol_args)), progress=False)


@pytest.fixture(scope="module")
def loo(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("retrieval"), "loo")


def test_split_truth_of_both_protocols(loo, tmp_path):
    dataset = BuiltDataset.open(loo)
    truth = SplitTruth(dataset, "test")
    offsets, items = dataset.flat("offsets"), dataset.flat("item")
    cols = dataset.sample_columns("test")
    index = np.arange(5)
    assert truth.truth(index)[:, 0].tolist() == np.asarray(cols["target_item"])[:5].tolist()
    rows, seen = truth.seen(index, truth.truth(index))
    for b in index:                                              # every item before the cut, minus the target
        start = offsets[cols["row"][b]]
        before = set(items[start:start + cols["cut"][b]].tolist()) - {int(cols["target_item"][b])}
        assert set(seen[rows == b].tolist()) == before

    users = BuiltDataset.open(_build(tmp_path, "users"))
    split = SplitTruth(users, "test")
    cols = users.sample_columns("test")
    offsets, items = users.flat("offsets"), users.flat("item")
    got = split.truth(np.arange(len(split)))
    for b in range(len(split)):                                  # the rest of the timeline from the cut on
        start, end = offsets[cols["row"][b]], offsets[cols["row"][b] + 1]
        rest = items[start + cols["cut"][b]:end].tolist()
        assert got[b][:len(rest)].tolist() == rest and not got[b][len(rest):].any()
    rows, seen = split.seen(np.arange(len(split)), got)
    for b in range(len(split)):                                  # the history, minus items it will see again
        start = offsets[cols["row"][b]]
        history = items[start:start + cols["cut"][b]].tolist()
        expected = [i for i in history if i not in set(got[b].tolist())]
        assert seen[rows == b].tolist() == expected


def test_retrieval_models_refuse_protocols_with_negatives(tmp_path):
    din = _build(tmp_path, "din")
    raw = _config(din, tmp_path / "run")
    with pytest.raises(ConfigError, match="loo or users protocols"):
        fit(parse_config(raw), progress=False)


# ---------------------------------------------------------------- YouTube DNN through fit
class Popularity(RetrievalModel):
    """Ranks by training event count: a user vector [1] and item "vectors" [count]."""

    def __init__(self, features: FeatureSpec, counts: np.ndarray) -> None:
        super().__init__(features)
        self.counts = torch.nn.Parameter(torch.as_tensor(counts, dtype=torch.float32)[:, None], requires_grad=False)

    def user_interests(self, batch):
        return RetrievalOutput(torch.ones(batch.size, 1, 1))

    def item_embeddings(self, items):
        return self.counts[items]


def _config(dataset: Path, out: Path, **retrieval) -> dict:
    return {"name": out.name, "output_dir": str(out), "seed": 0,
            "data": {"path": str(dataset), "batch_size": 256, "eval_batch_size": 1024},
            "model": {"class_path": "YouTubeDNN", "init_args": {"embedding_dim": 32, "hidden_units": [32]}},
            "optimizer": {"lr": 0.005}, "retrieval": {"num_negatives": 200, **retrieval},
            "trainer": {"max_epochs": 2, "enable_progress_bar": False}}


def test_youtube_dnn_beats_popularity_by_full_ranking(loo, tmp_path):
    run = fit(parse_config(_config(loo, tmp_path / "yt")), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["family"] == "retrieval" and metrics["monitor"] == "valid/recall@20"
    for split in ("valid", "test"):
        for k in (5, 10, 20, 50):
            for name in ("recall", "hr", "ndcg"):
                assert 0.0 <= metrics["splits"][split][f"{name}@{k}"] <= 1.0
    test = metrics["splits"]["test"]
    assert test["users"] == BuiltDataset.open(loo).split_counts["test"]
    config, model = load_run(run)
    dataset = BuiltDataset.open(loo)
    popularity = Popularity(model.features, dataset.vocabulary("item").id_counts())
    baseline = rank_split(popularity, dataset, config, "test")
    assert test["recall@20"] > 1.5 * baseline["recall@20"] and test["recall@20"] > baseline["recall@20"] + 0.1, \
        (test["recall@20"], baseline["recall@20"])
    # the training curve logged the validation metrics the early stopping watched
    log = (run / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"valid/recall@20", "valid/ndcg@50", "train/sampled_softmax"} <= set(log)
    again = evaluate(run)["splits"]["test"]
    assert again["recall@20"] == pytest.approx(test["recall@20"], abs=1e-12)


@pytest.mark.parametrize("negatives, shared", [("popularity", False), ("in_batch", True), ("all", False)])
def test_other_negative_proposals_and_tied_tables_train_export_and_reload(loo, tmp_path, negatives, shared):
    exact = {"logq_correction": False} if negatives == "all" else {}     # the full softmax has no proposal
    raw = _config(loo, tmp_path / negatives, negatives=negatives, **exact)
    raw["model"]["init_args"]["share_item_embeddings"] = shared       # ComiRec ties input and softmax tables
    raw["trainer"] = {"max_epochs": 1, "limit_train_batches": 20, "enable_progress_bar": False}
    run = fit(parse_config(raw), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["splits"]["test"]["recall@50"] > 0.05
    _, model = load_run(run)
    assert (model.item_output is model.item_input) == shared
    assert evaluate(run)["splits"]["test"]["recall@50"] == pytest.approx(metrics["splits"]["test"]["recall@50"])


def test_the_parser_accepts_both_families_and_names_other_classes(loo, tmp_path):
    assert parse_config(_config(loo, tmp_path / "a")).family == "retrieval"
    ranking = _config(loo, tmp_path / "b")
    ranking["model"] = {"class_path": "DIN", "init_args": {"item_dim": 4}}
    config = parse_config(ranking)
    assert config.family == "ranking" and config.monitor == "valid/auc"
    for path, message in [("recsys.data_pipelines.loader.SampleLoader", "neither a RankingModel nor a RetrievalModel"),
                          ("recsys.models.nowhere.Model", "cannot be imported")]:
        raw = _config(loo, tmp_path / "c")
        raw["model"] = {"class_path": path}
        with pytest.raises(ConfigError, match=message):
            parse_config(raw)
    raw = _config(loo, tmp_path / "d", negatives="sometimes")
    with pytest.raises(ConfigError, match="retrieval.negatives"):
        parse_config(raw)


def test_a_monitor_outside_the_ks_is_refused(loo, tmp_path):
    raw = _config(loo, tmp_path / "m", ks=[5, 10])
    with pytest.raises(ConfigError, match="K = 20 is not in retrieval.ks"):
        fit(parse_config(raw), progress=False)


def test_fit_prints_retrieval_metrics_through_the_cli(loo, tmp_path, capsys):
    raw = _config(loo, tmp_path / "cli")
    raw["trainer"] = {"max_epochs": 1, "limit_train_batches": 5, "enable_progress_bar": False}
    path = tmp_path / "cli.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli_main(["fit", str(path), "--quiet"]) == 0
    assert "test recall@20" in capsys.readouterr().out


def test_the_shipped_youtube_dnn_config_parses():
    config = load_config(REPO / "configs" / "youtubednn_amazon_beauty.yaml")
    assert config.family == "retrieval" and config.retrieval.ks == [5, 10, 20, 50]


def test_users_protocol_trains_and_ranks_the_rest_of_each_timeline(tmp_path):
    """ComiRec's user split: held-out users, ground truth = the rest of their timeline."""
    users = _build(tmp_path, "users")
    raw = _config(users, tmp_path / "users_run")
    raw["trainer"] = {"max_epochs": 1, "limit_train_batches": 20, "enable_progress_bar": False}
    metrics = json.loads((fit(parse_config(raw), progress=False) / "metrics.json").read_text())
    counts = BuiltDataset.open(users).split_counts
    test = metrics["splits"]["test"]
    assert metrics["protocol"] == "users" and test["users"] == counts["test"] > 0
    # several ground-truth items per user: recall is below the hit rate unless every item is found
    assert test["recall@50"] < test["hr@50"] and 0 < test["recall@50"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_add_up_the_full_ranking_sums(loo, tmp_path):
    """Under DDP each rank ranks its shard of validation users; the sums are gathered, so
    the monitored recall is one number for all ranks (and the run finishes)."""
    import os
    import subprocess
    import sys
    raw = _config(loo, tmp_path / "ddp")
    raw["trainer"] = {"max_epochs": 1, "strategy": "ddp", "devices": 2, "accelerator": "cpu",
                      "enable_progress_bar": False}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "fit", str(path), "--quiet"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["splits"]["test"]["recall@50"] > 0.1
    import csv
    with open(tmp_path / "ddp" / "logs" / "metrics.csv") as f:
        logged = [float(r["valid/recall@20"]) for r in csv.DictReader(f) if r.get("valid/recall@20")]
    # the one epoch's gathered validation recall = rank 0's recall of the whole split afterwards
    # (the same weights; DDP leaves out at most one of the odd user out)
    users = metrics["splits"]["valid"]["users"]
    assert logged and abs(logged[-1] - metrics["splits"]["valid"]["recall@20"]) <= 1.0 / users + 1e-9


def test_the_report_shows_full_ranking_metrics_of_retrieval_runs(loo, tmp_path):
    from recsys.report import write_report
    raw = _config(loo, tmp_path / "yt_report")
    raw["trainer"] = {"max_epochs": 2, "limit_train_batches": 10, "enable_progress_bar": False}
    run = fit(parse_config(raw), progress=False)
    page = write_report([run], tmp_path / "report").read_text()
    table = (tmp_path / "report" / "report.md").read_text()
    recall = json.loads((run / "metrics.json").read_text())["splits"]["test"]["recall@20"]
    assert "test Recall@20" in table and f"{recall:.4f}" in table
    assert "best test Recall@20" in page and page.count("data:image/png;base64,") == 1   # the training curves
