"""fit / evaluate: one run directory per training run.

A run directory holds::

    config.yaml           the resolved config
    model.safetensors     the best (validation-selected) weights; loading never executes code
    model.json            model class, constructor arguments, feature sizes (to rebuild it)
    checkpoints/          Lightning checkpoints (best by the monitored validation metric)
    logs/                 CSV (and TensorBoard when installed) training curves
    metrics.json          per split: AUC, GAUC, logloss, sample and user counts; protocol,
                          seed, wall time, training samples/s
    predictions/<split>.parquet   sample index, user, label, score (for reports)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from recsys.data_pipelines.build import build_from_yaml
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.models.base import FeatureSpec, RankingModel

from .config import ConfigError, RunConfig, load_config, save_config
from .datamodule import RankingDataModule
from .metrics import ctr_metrics
from .task import RankingTask

log = logging.getLogger(__name__)


from recsys.errors import CheckpointError  # noqa: E402,F401  (re-exported)


def resolve_dataset(config: RunConfig, progress: bool = True) -> BuiltDataset:
    """The run's built dataset (building it first from ``data.build`` when needed)."""
    if config.data.path is not None:
        path = Path(config.data.path)
        if not path.exists():
            raise ConfigError(f"data.path {path} does not exist; build it with `recsys data build CONFIG` "
                              "or point data.build at a data config")
        return BuiltDataset.open(path)
    build = Path(config.data.build)
    if not build.exists():
        raise ConfigError(f"data.build {build} does not exist")
    return BuiltDataset.open(build_from_yaml(build, progress=progress))


def feature_spec(dataset: BuiltDataset, max_length: Optional[int] = None) -> FeatureSpec:
    return FeatureSpec(num_users=dataset.num_users, num_items=dataset.num_items,
                       num_categories=dataset.num_categories, num_behaviors=dataset.num_behaviors,
                       max_length=max_length or dataset.max_length)


def build_model(config: RunConfig, features: FeatureSpec, dataset: Optional[BuiltDataset] = None) -> RankingModel:
    try:
        model = config.model_class(features, **config.model_init_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {config.model.class_path}: {exc}") from exc
    if dataset is not None and hasattr(model, "set_id_frequencies"):
        items = torch.from_numpy(dataset.vocabulary("item").id_counts())
        categories = torch.from_numpy(dataset.vocabulary("category").id_counts())
        model.set_id_frequencies(items, categories)
    return model


def _loggers(out: Path) -> list:
    loggers = [L.pytorch.loggers.CSVLogger(str(out), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        loggers.append(L.pytorch.loggers.TensorBoardLogger(str(out), name="tensorboard", version=""))
    except ImportError:
        pass
    return loggers


def fit(config: RunConfig, progress: bool = True) -> Path:
    """Train, select the best epoch on validation, export weights, evaluate; returns the run dir."""
    started = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.seed, workers=True, verbose=False)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    dataset = resolve_dataset(config, progress)
    features = feature_spec(dataset, config.data.max_length)
    model = build_model(config, features, dataset)
    task = RankingTask(model, config.optimizer, config.aux_loss_weights, config.trainer.monitor)
    datamodule = RankingDataModule(dataset, config.data, config.seed)
    t = config.trainer
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out / "checkpoints"), monitor=t.monitor, mode="max",
                                                     save_top_k=1, filename="best-{epoch}", save_weights_only=True)
    callbacks = [checkpoint, L.pytorch.callbacks.EarlyStopping(monitor=t.monitor, mode="max",
                                                               patience=t.early_stopping_patience)]
    trainer = L.Trainer(max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
                        num_nodes=t.num_nodes, precision=t.precision, gradient_clip_val=t.gradient_clip_val,
                        val_check_interval=t.val_check_interval, log_every_n_steps=t.log_every_n_steps,
                        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
                        callbacks=callbacks, logger=_loggers(out), enable_progress_bar=progress and t.enable_progress_bar,
                        enable_model_summary=False, deterministic=False, num_sanity_val_steps=0)
    train_started = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
    train_seconds = time.perf_counter() - train_started
    if trainer.global_rank != 0:
        return out
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    save_config(config, out / "config.yaml")
    export_model(model, config, features, out)
    train_samples = task.samples_seen * trainer.world_size
    metrics = evaluate_model(model, dataset, config, out, splits=("valid", "test"))
    metrics.update({
        "run": config.run_name, "model": config.model.class_path, "protocol": dataset.protocol,
        "dataset": str(dataset.path), "seed": config.seed, "epochs": trainer.current_epoch,
        "best_epoch": _best_epoch(checkpoint.best_model_path), "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 3), "train_samples": int(train_samples),
        "train_samples_per_second": round(train_samples / max(train_seconds, 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "published": vars(config.published) if config.published.value is not None else None,
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
    })
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def _best_epoch(path: str) -> Optional[int]:
    if not path or "epoch=" not in path:
        return None
    return int(Path(path).stem.split("epoch=")[1].split("-")[0])


def export_model(model: RankingModel, config: RunConfig, features: FeatureSpec, out: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "model.json").write_text(json.dumps({
        "class_path": config.model.class_path, "init_args": config.model_init_args, "features": features.to_dict(),
    }, indent=2))


@torch.no_grad()
def predict(model: RankingModel, loader: SampleLoader) -> Dict[str, np.ndarray]:
    """Scores of every sample of a loader: sample_index, user, label, prob."""
    model.eval()
    parts = {"sample_index": [], "user": [], "label": [], "prob": []}
    for batch in loader:
        parts["sample_index"].append(batch.sample_index.numpy())
        parts["user"].append(batch.user.numpy())
        parts["label"].append(batch.label.numpy())
        parts["prob"].append(torch.sigmoid(model(batch).logit).float().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def evaluate_model(model: RankingModel, dataset: BuiltDataset, config: RunConfig, out: Path,
                   splits: Sequence[str] = ("test",)) -> dict:
    (out / "predictions").mkdir(exist_ok=True)
    result = {"splits": {}}
    for split in splits:
        loader = SampleLoader(dataset, split, config.data.eval_batch_size, max_length=config.data.max_length,
                              form=config.data.form)
        if loader.num_samples == 0:
            continue
        started = time.perf_counter()
        scores = predict(model, loader)
        seconds = time.perf_counter() - started
        pq.write_table(pa.table(scores), str(out / "predictions" / f"{split}.parquet"))
        metrics = ctr_metrics(scores["label"], scores["prob"], scores["user"])
        metrics["eval_samples_per_second"] = round(len(scores["label"]) / max(seconds, 1e-9), 1)
        result["splits"][split] = metrics
    return result


def load_run(run_dir: Union[str, Path], dataset: Optional[BuiltDataset] = None) -> "tuple[RunConfig, RankingModel, BuiltDataset]":
    """Rebuild a trained model from a run directory (weights via safetensors)."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "model.safetensors", "model.json"):
        if not (run_dir / name).exists():
            raise CheckpointError(f"{run_dir} is not a finished run: {name} is missing")
    config = load_config(run_dir / "config.yaml")
    dataset = dataset or resolve_dataset(config, progress=False)
    saved = json.loads((run_dir / "model.json").read_text())
    features = feature_spec(dataset, config.data.max_length)
    saved_features = FeatureSpec.from_dict(saved["features"], f"{run_dir / 'model.json'}: features")
    if saved_features != features:
        diff = _spec_diff(saved_features, features)
        raise CheckpointError(f"{run_dir}: the model was trained on data with different vocabularies "
                              f"(checkpoint, data): {diff}; evaluate it on the dataset it was trained on")
    model = build_model(config, features)
    load_weights(model, run_dir / "model.safetensors")
    return config, model, dataset


def _spec_diff(saved: FeatureSpec, current: FeatureSpec) -> dict:
    """{field: (checkpoint, data)} of the fields that differ (sizes, kinds, presence)."""
    names = [f.name for f in saved.fields] + [f.name for f in current.fields if f.name not in saved]
    def desc(spec, name):
        return (spec[name].kind, spec[name].size) if name in spec else None
    diff = {n: (desc(saved, n), desc(current, n)) for n in names if desc(saved, n) != desc(current, n)}
    if saved.max_length != current.max_length:
        diff["max_length"] = (saved.max_length, current.max_length)
    return diff


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights with shape checks and clear errors (never unpickles)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); the file is corrupted or "
                              "not a recsys model") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not belong to {type(model).__name__} "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} but the model expects "
                                  f"{tuple(own[key].shape)} (vocabulary or size mismatch)")
    model.load_state_dict(state)


def evaluate(run_dir: Union[str, Path], splits: Sequence[str] = ("test",)) -> dict:
    run_dir = Path(run_dir)
    config, model, dataset = load_run(run_dir)
    result = evaluate_model(model, dataset, config, run_dir, splits)
    path = run_dir / "metrics.json"
    existing = json.loads(path.read_text()) if path.exists() else {"splits": {}}
    existing.setdefault("splits", {}).update(result["splits"])
    path.write_text(json.dumps(existing, indent=2))
    return result


def fit_from_yaml(path: Union[str, Path], overrides: Optional[dict] = None, progress: bool = True) -> Path:
    return fit(load_config(path, overrides), progress)
