"""RecBole's SASRec on an export_recbole.py export, scored by OUR full-ranking metric code.

Run it with OUR venv's python; it runs RecBole in the peer venv (setup_recbole.sh) as a
child process of this same file (``--peer-train``, which imports only RecBole and torch)::

    python bench/peers/export_recbole.py runs/data/amazon_beauty_loo runs/peers/amazon_beauty_loo_recbole
    python bench/peers/run_recbole.py --data runs/peers/amazon_beauty_loo_recbole --epochs 5 --threads 1

1. Peer (``.peer-venv-recbole``): RecBole's own ``create_dataset`` / ``data_preparation``
   (time-ordered leave-one-out, ``LS: valid_and_test``), then :func:`check_split` compares
   RecBole's train / valid / test samples with ours (``truth.npz``) user for user, target
   for target and history length for history length, and stops on the first difference.
   RecBole's ``Trainer.fit`` trains SASRec with our sizes (hidden 50, 2 layers, 1 head,
   inner 50, ReLU, dropout 0.5, L = 50, batch 128, Adam 1e-3, no weight decay), validating
   every epoch (NDCG@20, early stopping after ``--patience`` epochs without gain). The best
   checkpoint is reloaded; RecBole's own test metrics are kept for a cross-check, and the
   user vectors (``SASRec.forward``, the last position) of every valid / test sample and the
   item table are written in OUR ids and OUR sample order. RecBole's ``full_sort_predict``
   is ``user_vector @ item_table.T``; that is checked on the first test batch.
2. Ours: ``recsys.full_ranking.FullRankingEvaluator`` ranks all items for every valid /
   test user from those vectors, with the user's earlier items masked (``mask_history``) and
   also unmasked (RecBole's sequential full-sort evaluation masks nothing, so the unmasked
   numbers must match RecBole's own), HR / NDCG@{5,10,20,50}.

The JSON (``--out``, default bench/results/peer_recbole_sasrec_<name>.json): both metric
sets, RecBole's own, epochs run and best epoch, training samples/s over the training epochs
only (validation timed apart), wall time, threads, versions, the RecBole config used
(``best_epoch`` is RecBole's 0-based epoch index).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _repo_relative(path: str) -> str:
    """A path inside the repository as it reads from the root (results files carry no machine path)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)
KS = (5, 10, 20, 50)

# our configs/sasrec_amazon_beauty.yaml, in RecBole's names
SASREC = {
    "hidden_size": 50, "inner_size": 50, "n_layers": 2, "n_heads": 1, "hidden_dropout_prob": 0.5,
    "attn_dropout_prob": 0.5, "hidden_act": "relu", "MAX_ITEM_LIST_LENGTH": 50, "train_batch_size": 128,
    "learner": "adam", "learning_rate": 1e-3, "weight_decay": 0.0,
}


# ---------------------------------------------------------------- peer side (RecBole venv)

def recbole_config(data: Path, name: str, epochs: int, loss: str, seed: int, patience: int, workdir: Path) -> dict:
    """The config_dict handed to recbole.config.Config."""
    return {
        **SASREC, "loss_type": loss, "epochs": epochs, "seed": seed, "reproducibility": True,
        "data_path": str(data.resolve()), "checkpoint_dir": str(workdir / "saved"),
        "use_gpu": False, "worker": 0, "show_progress": False, "save_dataset": False, "save_dataloaders": False,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        # nothing filtered, nothing deduplicated, no normalisation: our build is final
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)", "rm_dup_inter": None,
        "filter_inter_by_user_or_item": False, "normalize_all": False, "normalize_field": None,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        # BPR: one uniform negative per training sample (RepeatableSampler: any item but the target);
        # CE (RecBole's default) scores all items and takes no sampled negatives
        "train_neg_sample_args": ({"distribution": "uniform", "sample_num": 1, "alpha": 1.0, "dynamic": False,
                                   "candidate_num": 0} if loss == "BPR" else None),
        "metrics": ["Hit", "NDCG"], "topk": list(KS), "valid_metric": "NDCG@20", "eval_step": 1,
        "stopping_step": patience, "eval_batch_size": 2048, "log_wandb": False, "metric_decimal_place": 6,
    }


def _tokens(dataset, field: str, ids) -> np.ndarray:
    """RecBole internal ids → our ids (the tokens are our ids as decimal strings)."""
    return np.asarray(dataset.id2token(field, np.asarray(ids)), dtype=np.int64)


def check_split(datasets: dict, truth: dict, max_length: int) -> dict:
    """RecBole's built train / valid / test datasets against our split; raises SystemExit with
    the first difference. Returns the per-split sample counts."""
    offsets, items = truth["offsets"], truth["items"]
    user2row = np.full(int(truth["user"].max()) + 1, -1, np.int64)
    user2row[truth["user"]] = np.arange(len(truth["user"]))
    n = truth["n_events"]
    counts = {}

    def fail(split, i, what):
        raise SystemExit(f"RecBole's {split} split differs from ours at its sample {i}: {what}. The export does "
                         "not reproduce our leave-one-out split; nothing was trained")

    for split, ds in datasets.items():
        feat = ds.inter_feat
        user = _tokens(ds, "user_id", feat["user_id"].numpy())
        target = _tokens(ds, "item_id", feat["item_id"].numpy())
        position = feat["timestamp"].numpy().astype(np.int64)
        length = feat["item_length"].numpy().astype(np.int64)
        counts[split] = int(len(user))
        if (user >= len(user2row)).any() or (user2row[np.minimum(user, len(user2row) - 1)] < 0).any():
            i = int(np.flatnonzero((user >= len(user2row)) | (user2row[np.minimum(user, len(user2row) - 1)] < 0))[0])
            fail(split, i, f"user {user[i]} is not one of ours")
        row = user2row[user]
        bad = np.flatnonzero(items[offsets[row] + position] != target)
        if len(bad):
            i = bad[0]
            fail(split, i, f"user {user[i]}: target {target[i]} is not our item at position {position[i]}")
        bad = np.flatnonzero(length != np.minimum(position, max_length))
        if len(bad):
            i = bad[0]
            fail(split, i, f"user {user[i]}: history of {length[i]} items before position {position[i]} "
                           f"(expected {min(position[i], max_length)})")
        with_history = np.flatnonzero(length > 0)          # RecBole's prefixes have >= 1 item
        last = feat["item_id_list"].numpy()[with_history, length[with_history] - 1]
        bad = with_history[_tokens(ds, "item_id", last) != items[offsets[row[with_history]] + position[with_history] - 1]]
        if len(bad):
            i = bad[0]
            fail(split, i, f"user {user[i]}: the last history item is not our item at position {position[i] - 1}")
        if split == "train":
            per_row = np.bincount(row, minlength=len(n))
            bad = np.flatnonzero(per_row != truth["n_train"])
            if len(bad):
                r = bad[0]
                fail(split, r, f"user {truth['user'][r]} has {per_row[r]} training samples, ours "
                               f"{truth['n_train'][r]}")
            if (position < 1).any() or (position > n[row] - 3).any():
                i = int(np.flatnonzero((position < 1) | (position > n[row] - 3))[0])
                fail(split, i, f"user {user[i]}: training target at position {position[i]} of {n[row[i]]}")
            continue
        ours = truth[f"{split}_user"]
        if len(user) != len(ours) or len(np.unique(user)) != len(user) or set(user.tolist()) != set(ours.tolist()):
            fail(split, 0, f"{len(user)} samples of {len(np.unique(user))} users; ours {len(ours)} users")
        bad = np.flatnonzero(target != truth[f"{split}_item"][row])
        if len(bad):
            i = bad[0]
            fail(split, i, f"user {user[i]}: {split} item {target[i]}, ours {truth[f'{split}_item'][row[i]]}")
    return counts


def user_vectors(model, loader, order: np.ndarray, max_check: int = 256):
    """[S, D] SASRec user vectors (the last position's state) of one full-sort loader, in the
    order of our sample users ``order`` [S]; also checks full_sort_predict = vectors @ items.T."""
    import torch

    dataset = loader._dataset
    row_of = {int(u): i for i, u in enumerate(order)}
    out = np.zeros((len(order), model.hidden_size), np.float32)
    filled = np.zeros(len(order), bool)
    checked = False
    with torch.no_grad():
        for interaction, _, _, _ in loader:
            vectors = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
            if not checked:
                scores = model.full_sort_predict(interaction)[:max_check]
                expected = vectors[:max_check] @ model.item_embedding.weight.T
                if not torch.allclose(scores, expected, rtol=1e-5, atol=1e-5):
                    raise SystemExit("RecBole's full_sort_predict is not user_vector @ item_table.T: the exported "
                                     "vectors would not reproduce its scores")
                checked = True
            users = _tokens(dataset, "user_id", interaction["user_id"].numpy())
            index = np.asarray([row_of[int(u)] for u in users])
            out[index] = vectors.numpy()
            filled[index] = True
    if not filled.all():
        raise SystemExit(f"{int((~filled).sum())} of our evaluation users got no RecBole vector")
    return out


class TimedTrainer:
    """Built lazily (RecBole is imported only in the peer): RecBole's Trainer with the training
    epochs and the validation passes timed apart."""

    @staticmethod
    def make(config, model):
        from recbole.trainer import Trainer

        class _Timed(Trainer):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.train_seconds, self.valid_seconds, self.epochs_run, self.valid_history = 0.0, 0.0, 0, []

            def _train_epoch(self, *args, **kwargs):
                started = time.perf_counter()
                loss = super()._train_epoch(*args, **kwargs)
                self.train_seconds += time.perf_counter() - started
                self.epochs_run += 1
                return loss

            def _valid_epoch(self, *args, **kwargs):
                started = time.perf_counter()
                score, result = super()._valid_epoch(*args, **kwargs)
                self.valid_seconds += time.perf_counter() - started
                self.valid_history.append({k: float(v) for k, v in result.items()})
                return score, result

        return _Timed(config, model)


def peer_train(args) -> int:
    import torch
    import recbole
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.utils import init_logger, init_seed

    started = time.perf_counter()
    data = Path(args.data)
    export = json.loads((data / "export.json").read_text())
    truth = dict(np.load(data / "truth.npz"))
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)   # RecBole writes log/ and log_tensorboard/ into the working directory
    config = Config(model="SASRec", dataset=export["name"],
                    config_dict=recbole_config(data, export["name"], args.epochs, args.loss, args.seed,
                                               args.patience, workdir))
    init_seed(config["seed"], config["reproducibility"])
    torch.set_num_threads(args.threads)
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    counts = check_split({"train": train_data._dataset, "valid": valid_data._dataset, "test": test_data._dataset},
                         truth, config["MAX_ITEM_LIST_LENGTH"])
    print(f"split check passed: RecBole's samples equal ours user for user {counts}", flush=True)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data._dataset).to(config["device"])
    trainer = TimedTrainer.make(config, model)
    best_score, _ = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    # the checkpoint is RecBole's own pickle (it holds its Config): torch >= 2.6 needs weights_only=False
    checkpoint = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    model.eval()
    own_test = trainer.evaluate(test_data, load_best_model=False)
    vectors = {split: user_vectors(model, loader, truth[f"{split}_user"])
               for split, loader in (("valid", valid_data), ("test", test_data))}
    table = model.item_embedding.weight.detach().numpy()
    items = np.zeros((export["vocab_sizes"]["item"], table.shape[1]), np.float32)
    internal = np.arange(1, table.shape[0])          # 0 is RecBole's padding
    present = np.zeros(len(items), bool)
    ours = _tokens(dataset, "item_id", internal)
    items[ours], present[ours] = table[internal], True
    out = Path(args.out)
    np.savez(str(out) + ".vectors.npz", items=items, present=present, valid=vectors["valid"], test=vectors["test"])
    epochs_run = trainer.epochs_run
    result = {
        "recbole_version": recbole.__version__, "torch_version": torch.__version__, "numpy_version": np.__version__,
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(), "loss_type": args.loss,
        "epochs_requested": args.epochs, "epochs": epochs_run, "best_epoch": int(checkpoint["epoch"]),
        "best_valid_ndcg@20": float(best_score), "valid_history": trainer.valid_history,
        "split_samples": counts, "train_samples": counts["train"] * epochs_run,
        "train_seconds": round(trainer.train_seconds, 2), "valid_seconds": round(trainer.valid_seconds, 2),
        "train_samples_per_second": round(counts["train"] * epochs_run / max(trainer.train_seconds, 1e-9), 1),
        "recbole_test_metrics_unmasked": {k: float(v) for k, v in own_test.items()},
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "recbole_items": int(dataset.item_num), "recbole_users": int(dataset.user_num),
        "config": {k: config[k] for k in sorted(recbole_config(data, "", 0, args.loss, 0, 0, workdir))
                   if k not in ("data_path", "checkpoint_dir")},
        "peer_wall_seconds": round(time.perf_counter() - started, 1),
    }
    out.write_text(json.dumps(result, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- our side (recsys venv)

class VectorModel:
    """The two calls FullRankingEvaluator makes of a retrieval model, over fixed vectors:
    ``item_embeddings(ids [N]) -> [N, D]`` (rows in our item ids)."""

    def __init__(self, items: np.ndarray) -> None:
        import torch
        self.items = torch.from_numpy(items)

    def item_embeddings(self, ids):
        return self.items[ids]


def absent_items(vectors: dict) -> np.ndarray:
    """Our real item ids (2 ..) that RecBole's vocabulary lacks (they never occur in the .inter
    file): RecBole cannot rank them, so neither may we."""
    return np.flatnonzero(~vectors["present"][2:]).astype(np.int64) + 2


def _truth_class():
    from recsys.full_ranking import SplitTruth

    class PeerTruth(SplitTruth):
        """SplitTruth whose 'seen' pairs are the user's earlier items (when ``history``) plus,
        for every user, the items RecBole does not have."""

        def __init__(self, dataset, split, history: bool, absent: np.ndarray) -> None:
            super().__init__(dataset, split)
            self.history, self.absent = history, absent

        def seen(self, index, truth):
            if self.history:
                rows, items = super().seen(index, truth)
            else:
                rows, items = np.zeros(0, np.int64), np.zeros(0, np.int64)
            if len(self.absent):
                rows = np.concatenate([rows, np.repeat(np.arange(len(index)), len(self.absent))])
                items = np.concatenate([items, np.tile(self.absent, len(index))])
            return rows, items

    return PeerTruth


def score(dataset_path: str, vectors: dict, split: str, mask_history: bool, ks=KS) -> dict:
    """Our HR / NDCG@K of the RecBole vectors on one split: every item RecBole knows is ranked,
    with (``mask_history``) or without the user's earlier items removed."""
    import torch
    from recsys.data_pipelines.dataset import BuiltDataset
    from recsys.full_ranking import FullRankingEvaluator

    dataset = BuiltDataset.open(dataset_path)
    truth = _truth_class()(dataset, split, mask_history, absent_items(vectors))
    users = vectors[split]
    if len(users) != len(truth):
        raise SystemExit(f"{len(users)} RecBole {split} vectors for {len(truth)} of our {split} samples")
    evaluator = FullRankingEvaluator(truth, ks, mask_history=True)    # PeerTruth.seen decides what is removed
    evaluator.start(VectorModel(vectors["items"]), dataset.num_items, torch.device("cpu"))
    for start in range(0, len(users), 2048):
        index = np.arange(start, min(start + 2048, len(users)))
        evaluator.add(torch.from_numpy(users[index])[:, None, :], index)
    metrics = evaluator.result()
    return {k: v for k, v in metrics.items() if not k.startswith("recall@")}


def run(args) -> dict:
    started = time.perf_counter()
    data = Path(args.data)
    export = json.loads((data / "export.json").read_text())
    peer_python = Path(args.peer_venv) / "bin" / "python"
    if not peer_python.exists():
        raise SystemExit(f"{peer_python} missing: run bench/peers/setup_recbole.sh {args.peer_venv}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="recbole_run_"))
    peer_json = workdir / "recbole_peer.json"
    command = [str(peer_python), str(Path(__file__).resolve()), "--peer-train", "--data", str(data.resolve()),
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--loss", args.loss,
               "--seed", str(args.seed), "--patience", str(args.patience), "--workdir", str(workdir.resolve()),
               "--out", str(peer_json.resolve())]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    subprocess.run(command, check=True, env=env)
    peer = json.loads(peer_json.read_text())
    vectors = dict(np.load(str(peer_json) + ".vectors.npz"))
    import torch
    torch.set_num_threads(args.threads)
    ours = {split: score(export["source"], vectors, split, mask_history=True) for split in ("valid", "test")}
    unmasked = score(export["source"], vectors, "test", mask_history=False)
    own = peer["recbole_test_metrics_unmasked"]
    gaps = {k: abs(unmasked[k] - own[k.replace("hr@", "hit@")]) for k in unmasked if k.startswith(("hr@", "ndcg@"))}
    return {
        "dataset": export["name"], "model": "SASRec", "peer": "RecBole", "source": _repo_relative(export["source"]),
        "date": datetime.date.today().isoformat(),
        "command": "python bench/peers/run_recbole.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "still_improving_at_last_epoch": peer["best_epoch"] == peer["epochs"] - 1,
        "note": (f"{peer['epochs']} epochs of RecBole's SASRec (loss {args.loss})"
                 + (": a short run, not converged (best validation epoch = the last)"
                    if peer["best_epoch"] == peer["epochs"] - 1 else "")
                 + "; metrics by recsys.full_ranking.FullRankingEvaluator on RecBole's user and item vectors"),
        "metrics_masked": ours,
        "metrics_test_unmasked": unmasked,
        "recbole_own_test_unmasked": own,
        "max_abs_gap_ours_unmasked_vs_recbole_own": max(gaps.values()),
        "items_absent_from_recbole": int(len(absent_items(vectors))),
        "recbole_run": peer,
        "train_samples_per_second": peer["train_samples_per_second"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="an export_recbole.py output directory")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (peer and scoring)")
    parser.add_argument("--loss", choices=("BPR", "CE"), default="BPR",
                        help="RecBole SASRec loss_type: BPR with one negative (closest to the paper's BCE) or CE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patience", type=int, default=5, help="RecBole stopping_step (ours: 5)")
    parser.add_argument("--peer-venv", default=str(ROOT / ".peer-venv-recbole"), help="from setup_recbole.sh")
    parser.add_argument("--workdir", default=None, help="RecBole's logs and checkpoint, the peer JSON and vectors")
    parser.add_argument("--out", default=None,
                        help="result JSON (default bench/results/peer_recbole_sasrec_<name>.json; with "
                             "--peer-train: the peer JSON)")
    parser.add_argument("--peer-train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_train:
        return peer_train(args)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    result = run(args)
    name = json.loads((Path(args.data) / "export.json").read_text())["name"]
    out = Path(args.out or ROOT / "bench" / "results" / f"peer_recbole_sasrec_{name}.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(json.dumps({k: result[k] for k in ("metrics_masked", "max_abs_gap_ours_unmasked_vs_recbole_own",
                                             "train_samples_per_second", "wall_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
