"""Train FuxiCTR's DIN or FinalMLP on data written by export_fuxictr.py (runs in the PEER venv).

FuxiCTR's pip package has the library but not the model zoo, so the model class is
imported at run time from a checkout of the FuxiCTR repository::

    git clone --depth 1 --branch v2.3.10 https://github.com/reczoo/FuxiCTR /path/to/FuxiCTR
    .peer-venv/bin/python bench/peers/run_fuxictr.py --data runs/peers/amazon_beauty_fuxictr \\
        --fuxictr-src /path/to/FuxiCTR --model DIN --params params.yaml --out fuxictr_din.json

Training is FuxiCTR's own ``BaseModel.fit`` (its loop, its NpzDataLoader, its validation,
early stopping and best-checkpoint reload), on CPU. ``--params`` is a YAML mapping of the
model's constructor arguments (embedding_dim, dnn_hidden_units, attention_hidden_units, ...)
plus the run keys below; ``--set key=value`` overrides single keys (value parsed as YAML).

Run keys: batch_size, epochs, learning_rate, seed, num_threads, num_workers,
max_gradient_norm, early_stop_patience, reduce_lr_on_plateau, embedding_regularizer,
net_regularizer.

The JSON it writes: test (and valid) AUC, gAUC grouped by user (weighted by the user's
sample count; users whose labels are all one class are excluded and counted), logloss;
training samples/s over the wall time of the training epochs only (FuxiCTR's end-of-epoch
validation is timed separately and subtracted); epochs run; torch threads; versions.
Test-set probabilities are saved next to it (``<out>.test_pred.npy``, rows in the
exported order) so the caller can recompute every metric with its own code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

RUN_KEYS = {
    "batch_size": 1024, "epochs": 1, "learning_rate": 1e-3, "seed": 0, "num_threads": 1, "num_workers": 0,
    "max_gradient_norm": 10.0, "early_stop_patience": 2, "reduce_lr_on_plateau": False,
    "embedding_regularizer": None, "net_regularizer": None,
}
MODELS = ("DIN", "FinalMLP")


def load_model_class(fuxictr_src: Path, name: str):
    """The model class from ``<fuxictr_src>/model_zoo/<name>/src/<name>.py``."""
    path = Path(fuxictr_src) / "model_zoo" / name / "src" / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --fuxictr-src must be a checkout of the FuxiCTR repository "
                                "(git clone --depth 1 --branch v2.3.10 https://github.com/reczoo/FuxiCTR)")
    spec = importlib.util.spec_from_file_location(f"fuxictr_model_zoo_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def grouped_auc(label: np.ndarray, prob: np.ndarray, group: np.ndarray) -> "tuple[float, int]":
    """Sample-count-weighted mean of per-group AUCs; groups with one class are skipped.

    Returns (gAUC, number of groups skipped)."""
    from sklearn.metrics import roc_auc_score

    order = np.argsort(group, kind="stable")
    g, y, p = group[order], label[order], prob[order]
    bounds = np.flatnonzero(np.diff(g)) + 1
    total, weight, skipped = 0.0, 0, 0
    for ys, ps in zip(np.split(y, bounds), np.split(p, bounds)):
        if ys.min() == ys.max():
            skipped += 1
            continue
        total += roc_auc_score(ys, ps) * len(ys)
        weight += len(ys)
    return (total / weight if weight else float("nan")), skipped


def split_metrics(label: np.ndarray, prob: np.ndarray, user: np.ndarray) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    gauc, skipped = grouped_auc(label, prob, user)
    clipped = np.clip(prob, 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(label, prob)), "gauc": float(gauc),
            "logloss": float(log_loss(label, clipped, labels=[0, 1])), "samples": int(len(label)),
            "users": int(len(np.unique(user))), "gauc_users_skipped": int(skipped)}


def model_kwargs(name: str, params: dict) -> "tuple[dict, dict]":
    """(FeatureMap.load params, constructor kwargs) for DIN or FinalMLP on our exported fields."""
    model = {k: v for k, v in params.items() if k not in RUN_KEYS}
    if name == "DIN":
        # DIN reads raw history embeddings (no pooling encoder) and, like ours, no user id
        map_params = {"use_features": ["item_id", "cate_id", "item_history", "cate_history"],
                      "feature_specs": [{"name": ["item_history", "cate_history"], "feature_encoder": None}]}
        model.setdefault("din_target_field", [("item_id", "cate_id")])
        model.setdefault("din_sequence_field", [("item_history", "cate_history")])
    else:
        map_params = {}   # all five fields; histories mean-pooled (feature_map.json's encoder)
    return map_params, model


def run(args) -> dict:
    import torch
    import fuxictr
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    params = dict(RUN_KEYS)
    if args.params:
        params.update(yaml.safe_load(Path(args.params).read_text()) or {})
    for item in args.set or []:
        key, _, value = item.partition("=")
        params[key] = yaml.safe_load(value)
    torch.set_num_threads(int(params["num_threads"]))
    seed_everything(int(params["seed"]))
    data = Path(args.data)
    export = json.loads((data / "export.json").read_text())
    map_params, kwargs = model_kwargs(args.model, params)
    feature_map = FeatureMap(export["dataset_id"], str(data))
    feature_map.load(str(data / "feature_map.json"), {"embedding_dim": kwargs.get("embedding_dim", 10), **map_params})
    feature_map.num_fields = feature_map.get_num_fields()   # after use_features filtering
    model_class = load_model_class(Path(args.fuxictr_src), args.model)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fuxictr_run_"))
    model = model_class(feature_map, model_id=f"{args.model}_seed{params['seed']}", gpu=-1,
                        learning_rate=params["learning_rate"], optimizer="adam", loss="binary_crossentropy",
                        metrics=["AUC", "logloss"], monitor="AUC", monitor_mode="max",
                        early_stop_patience=params["early_stop_patience"],
                        reduce_lr_on_plateau=params["reduce_lr_on_plateau"],
                        embedding_regularizer=params["embedding_regularizer"],
                        net_regularizer=params["net_regularizer"], model_root=str(workdir), verbose=0, **kwargs)
    os.makedirs(model.model_dir, exist_ok=True)
    train_gen, valid_gen, test_gen = RankDataLoader(
        feature_map, stage="both", train_data=str(data / "train.npz"), valid_data=str(data / "valid.npz"),
        test_data=str(data / "test.npz"), batch_size=params["batch_size"], shuffle=True, data_format="npz",
        num_workers=params["num_workers"])

    # time the training epochs; FuxiCTR validates inside train_epoch, so time that apart
    timings = {"epochs": [], "validation": []}
    train_epoch, eval_step = model.train_epoch, model.eval_step

    def timed_train_epoch(generator):
        started = time.perf_counter()
        train_epoch(generator)
        timings["epochs"].append(time.perf_counter() - started)

    def timed_eval_step():
        started = time.perf_counter()
        eval_step()
        timings["validation"].append(time.perf_counter() - started)

    model.train_epoch, model.eval_step = timed_train_epoch, timed_eval_step
    fit_started = time.perf_counter()
    model.fit(train_gen, epochs=params["epochs"], validation_data=valid_gen,
              max_gradient_norm=params["max_gradient_norm"])
    fit_seconds = time.perf_counter() - fit_started
    train_seconds = sum(timings["epochs"]) - sum(timings["validation"])
    epochs_run = len(timings["epochs"])
    train_samples = train_gen.num_samples * epochs_run

    result = {"library": "fuxictr", "fuxictr_version": fuxictr.__version__, "torch_version": torch.__version__,
              "model": args.model, "dataset_id": export["dataset_id"], "data": str(data.resolve()),
              "params": params,
              "epochs": epochs_run, "torch_threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in model.parameters()),
              "train_samples": int(train_samples), "train_seconds": round(train_seconds, 3),
              "train_samples_per_second": round(train_samples / max(train_seconds, 1e-9), 1),
              "validation_seconds": round(sum(timings["validation"]), 3), "fit_seconds": round(fit_seconds, 3),
              "epoch_seconds": [round(t, 3) for t in timings["epochs"]], "splits": {}}
    for split, generator in (("valid", valid_gen), ("test", test_gen)):
        arrays = np.load(data / f"{split}.npz")
        prob = model.predict(generator)
        result["splits"][split] = split_metrics(arrays["label"], prob, arrays["user_id"])
        if split == "test":
            np.save(f"{args.out}.test_pred.npy", prob.astype(np.float32))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a directory written by export_fuxictr.py")
    parser.add_argument("--fuxictr-src", required=True, help="a FuxiCTR repository checkout (for model_zoo/)")
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--params", help="YAML: model constructor arguments + run keys")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (YAML value)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--workdir", help="where FuxiCTR keeps its checkpoint (default: a temporary directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("model", "epochs", "train_samples_per_second")} |
                     {"test": result["splits"].get("test")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
