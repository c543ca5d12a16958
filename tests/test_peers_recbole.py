"""RecBole peer: the export holds our timelines with position timestamps, RecBole's
time-ordered leave-one-out rule on it gives our split user for user, the run-time split check
rejects any other split, and (when the peer venv exists) RecBole really trains on the export
and its vectors are scored by our evaluator."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.errors import DataError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "peers"))

import export_recbole  # noqa: E402
import run_recbole  # noqa: E402

MAX_LENGTH = 6


def _build(path: Path, protocol: str) -> Path:
    source = SourceConfig(format="synthetic", synthetic=SyntheticSource(n_rows=2_500, n_items=200, n_categories=10,
                                                                        mean_events=12.0))
    config = DataConfig(output=str(path), source=source,
                        protocol=ProtocolConfig(name=protocol, max_length=MAX_LENGTH, validation=True), partitions=2)
    return Path(build_dataset(config, progress=False))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("recbole") / "ds", "loo")


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("recbole_export")
    return out, export_recbole.export(built, out)


def read_inter(out: Path, name: str) -> dict:
    table = pacsv.read_csv(str(out / name / f"{name}.inter"), parse_options=pacsv.ParseOptions(delimiter="\t"))
    assert table.column_names == ["user_id:token", "item_id:token", "timestamp:float"]
    return {"user": table.column(0).to_numpy(), "item": table.column(1).to_numpy(),
            "timestamp": table.column(2).to_numpy().astype(np.int64)}


class RecBoleRule:
    """RecBole's sequential split written out independently of the exporter: sort by
    (user, timestamp), every prefix a sample (history cut to the last L items), per user the
    last sample to test, the one before to valid, the rest to train. Internal ids are first
    appearance order as RecBole's factorize remap (0 = padding); ``splits()`` returns objects
    with RecBole's ``inter_feat`` / ``id2token`` for run_recbole.check_split."""

    def __init__(self, inter: dict, max_length: int) -> None:
        order = np.lexsort((inter["timestamp"], inter["user"]))
        self.user, self.item, self.time = (inter[k][order] for k in ("user", "item", "timestamp"))
        self.user_tokens, user_ids = np.unique(self.user, return_inverse=True)
        item_tokens, first = np.unique(self.item, return_index=True)
        self.item_tokens = item_tokens[np.argsort(first)]            # first-appearance order
        lookup = {int(t): i + 1 for i, t in enumerate(self.item_tokens)}
        self.user_ids = user_ids + 1
        self.item_ids = np.array([lookup[int(t)] for t in self.item])
        self.max_length = max_length

    def samples(self) -> dict:
        rows = {"split": [], "user": [], "item": [], "time": [], "length": [], "history": []}
        starts = np.r_[0, np.flatnonzero(np.diff(self.user_ids)) + 1, len(self.user_ids)]
        for a, b in zip(starts[:-1], starts[1:]):
            count = b - a - 1
            for k, i in enumerate(range(a + 1, b)):
                history = self.item_ids[max(a, i - self.max_length):i]
                split = "test" if k == count - 1 else "valid" if k == count - 2 else "train"
                rows["split"].append(split)
                rows["user"].append(self.user_ids[i])
                rows["item"].append(self.item_ids[i])
                rows["time"].append(self.time[i])
                rows["length"].append(len(history))
                rows["history"].append(np.pad(history, (0, self.max_length - len(history))))
        return {k: np.asarray(v) for k, v in rows.items()}

    def splits(self, samples: dict) -> dict:
        rule = self

        class Split:
            def __init__(self, mask):
                self.inter_feat = {"user_id": torch.from_numpy(samples["user"][mask]),
                                   "item_id": torch.from_numpy(samples["item"][mask]),
                                   "timestamp": torch.from_numpy(samples["time"][mask].astype(np.float32)),
                                   "item_length": torch.from_numpy(samples["length"][mask]),
                                   "item_id_list": torch.from_numpy(samples["history"][mask])}

            def id2token(self, field, ids):
                tokens = rule.user_tokens if field == "user_id" else rule.item_tokens
                table = np.r_[["[PAD]"], tokens.astype(str)]
                return table[np.asarray(ids)]

        return {split: Split(samples["split"] == split) for split in ("train", "valid", "test")}


def test_inter_file_is_our_timelines_with_position_timestamps(built, exported):
    out, summary = exported
    dataset = BuiltDataset(built)
    inter = read_inter(out, summary["name"])
    offsets = np.asarray(dataset.flat("offsets"))
    lengths = np.diff(offsets)
    users = dataset.timelines().column("user").to_numpy()
    np.testing.assert_array_equal(inter["item"], np.asarray(dataset.flat("item")))
    np.testing.assert_array_equal(inter["user"], np.repeat(users, lengths))
    np.testing.assert_array_equal(inter["timestamp"], np.concatenate([np.arange(n) for n in lengths]))
    assert summary["events"] == len(inter["item"]) == offsets[-1]
    assert summary["splits"] == dataset.split_counts


def test_recbole_rule_on_the_file_gives_our_split_user_for_user(built, exported):
    out, summary = exported
    dataset = BuiltDataset(built)
    rule = RecBoleRule(read_inter(out, summary["name"]), MAX_LENGTH)
    samples = rule.samples()
    token = lambda ids: rule.item_tokens[ids - 1]                   # noqa: E731
    for split in ("valid", "test"):
        ours = dataset.sample_columns(split)
        mask = samples["split"] == split
        recbole = dict(zip(rule.user_tokens[samples["user"][mask] - 1].tolist(), token(samples["item"][mask]).tolist()))
        assert recbole == dict(zip(np.asarray(ours["user"]).tolist(), np.asarray(ours["target_item"]).tolist()))
    ours = dataset.sample_columns("train")
    mask = samples["split"] == "train"
    pairs = sorted(zip(rule.user_tokens[samples["user"][mask] - 1].tolist(), samples["time"][mask].tolist(),
                       token(samples["item"][mask]).tolist()))
    assert pairs == sorted(zip(np.asarray(ours["user"]).tolist(), np.asarray(ours["cut"]).tolist(),
                               np.asarray(ours["target_item"]).tolist()))


def test_check_split_passes_recbole_rule_and_fails_on_any_other_split(built, exported):
    out, summary = exported
    truth = dict(np.load(out / "truth.npz"))
    rule = RecBoleRule(read_inter(out, summary["name"]), MAX_LENGTH)
    samples = rule.samples()
    counts = run_recbole.check_split(rule.splits(samples), truth, MAX_LENGTH)
    assert counts == summary["splits"]

    # two users' test items swapped
    test = np.flatnonzero(samples["split"] == "test")
    other = test[np.flatnonzero(samples["item"][test] != samples["item"][test[0]])[0]]
    swapped = {k: v.copy() for k, v in samples.items()}
    swapped["item"][test[0]], swapped["item"][other] = samples["item"][other], samples["item"][test[0]]
    with pytest.raises(SystemExit, match="test split differs"):
        run_recbole.check_split(rule.splits(swapped), truth, MAX_LENGTH)

    # a user's last training sample moved to validation: RecBole's split would be another one
    train = np.flatnonzero(samples["split"] == "train")
    moved = {k: v.copy() for k, v in samples.items()}
    moved["split"][train[-1]] = "valid"
    with pytest.raises(SystemExit, match="differs"):
        run_recbole.check_split(rule.splits(moved), truth, MAX_LENGTH)

    # histories cut at another L
    with pytest.raises(SystemExit, match="history of"):
        run_recbole.check_split(rule.splits(samples), truth, MAX_LENGTH + 5)


def test_exporter_refuses_splits_recbole_cannot_reproduce(built, tmp_path):
    truth = export_recbole.our_truth(BuiltDataset(built))
    export_recbole.check_recbole_rule(truth)
    broken = {k: v.copy() for k, v in truth.items()}
    broken["n_train"][3] -= 1
    with pytest.raises(DataError, match=rf"user {truth['user'][3]} .*training samples != n_events - 3"):
        export_recbole.check_recbole_rule(broken)
    broken = {k: v.copy() for k, v in truth.items()}
    broken["test_item"][0] = -1
    with pytest.raises(DataError, match="no test sample"):
        export_recbole.check_recbole_rule(broken)
    users_split = _build(tmp_path / "users", "users")
    with pytest.raises(DataError, match="protocol 'users'"):
        export_recbole.export(users_split, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_scoring_masks_history_and_items_recbole_lacks(built):
    """score() on hand-made vectors: one-hot item vectors, each user's vector = its target's
    + 2 × its previous item's. Unmasked the previous item ranks first and the target second;
    masked the target first; an item RecBole lacks is never ranked."""
    dataset = BuiltDataset(built)
    items = np.eye(dataset.num_items, dtype=np.float32)
    test = dataset.sample_columns("test")
    target = np.asarray(test["target_item"], dtype=np.int64)
    offsets = np.asarray(dataset.flat("offsets"))
    previous = np.asarray(dataset.flat("item"))[offsets[np.asarray(test["row"])] + np.asarray(test["cut"]) - 1]
    users = items[target] + 2 * items[previous]
    present = np.ones(dataset.num_items, bool)
    vectors = {"items": items, "present": present, "test": users, "valid": users}
    repeat = previous == target                        # then the target ranks first either way
    masked = run_recbole.score(str(built), vectors, "test", mask_history=True)
    unmasked = run_recbole.score(str(built), vectors, "test", mask_history=False)
    assert masked["hr@5"] == unmasked["hr@5"] == 1.0
    assert masked["ndcg@5"] == pytest.approx(1.0)
    assert unmasked["ndcg@5"] == pytest.approx(np.mean(np.where(repeat, 1.0, 1 / np.log2(3))))
    present[target[0]] = False                         # RecBole lacks user 0's target: a miss for its users
    metrics = run_recbole.score(str(built), vectors, "test", mask_history=True)
    assert metrics["hr@50"] == pytest.approx(np.mean(target != target[0]))


PEER_VENV = Path(os.environ.get("RECSYS_RECBOLE_VENV", str(REPO / ".peer-venv-recbole")))


@pytest.mark.slow
def test_recbole_trains_on_the_export_and_our_scores_match_its_own(exported, tmp_path):
    if not (PEER_VENV / "bin" / "python").exists():
        pytest.skip("needs the RecBole peer venv (bench/peers/setup_recbole.sh; RECSYS_RECBOLE_VENV)")
    out, summary = exported
    result_path = tmp_path / "result.json"
    subprocess.run([sys.executable, str(REPO / "bench" / "peers" / "run_recbole.py"), "--data", str(out),
                    "--epochs", "1", "--threads", "1", "--peer-venv", str(PEER_VENV), "--workdir", str(tmp_path / "w"),
                    "--out", str(result_path)], check=True, timeout=600)
    result = json.loads(result_path.read_text())
    run = result["recbole_run"]
    assert run["epochs"] == 1 and run["split_samples"] == summary["splits"] and run["torch_threads"] == 1
    assert run["train_samples_per_second"] > 0 and run["loss_type"] == "BPR"
    assert result["metrics_masked"]["test"]["users"] == summary["splits"]["test"]
    # RecBole's own (unmasked, 6 decimals) metrics equal ours on its vectors
    assert result["max_abs_gap_ours_unmasked_vs_recbole_own"] < 1e-5
