"""fit / evaluate: one run directory per training run.

A run directory holds::

    config.yaml           the resolved config
    model.safetensors     the best (validation-selected) weights; loading never executes code
    model.json            model class, family, constructor arguments, feature spec (to rebuild it
                          without the dataset: recsys.artifacts.load_model)
    checkpoints/          Lightning checkpoints (best by the monitored validation metric)
    logs/                 CSV (and TensorBoard when installed) training curves
    metrics.json          per split: ranking models AUC, GAUC, logloss, sample and user counts;
                          retrieval models Recall/HR/NDCG@K by full ranking; protocol, seed, wall
                          time, training samples/s
    predictions/<split>.parquet   ranking models: sample index, user, label, score (for reports)

The model family (``RankingModel`` or ``RetrievalModel`` subclass) picks the Lightning task:
:class:`recsys.task.RankingTask` (BCE) or :class:`recsys.retrieval_task.RetrievalTask`
(sampled softmax, full-ranking validation).
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
from torch import nn

from recsys.contract import ContractError, FeatureSpec
from recsys.data_pipelines.build import build_from_yaml
from recsys.data_pipelines.config import load_data_config
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.data_pipelines.output_dir import terminate_as_interrupt
from recsys.errors import CheckpointError, ConfigError, DataError  # noqa: F401  (CheckpointError re-exported)
from recsys.models.base import RankingModel

from .artifacts import export_model, load_model, load_weights, spec_diff  # noqa: F401  (load_weights re-exported)
from .config import RunConfig, load_config, save_config
from .datamodule import SampleDataModule
from .full_ranking import FullRankingEvaluator, SplitTruth
from .metrics import ctr_metrics
from .retrieval_task import ItemProposal, RetrievalTask
from . import run_state
from .task import RankingTask

log = logging.getLogger(__name__)


def open_dataset(config: RunConfig, build: bool = False, progress: bool = True) -> BuiltDataset:
    """The run's built dataset. ``build``: build it first from ``data.build`` when it does not
    exist yet (``fit`` does this; ``evaluate`` never builds, it errors)."""
    if config.data.path is not None:
        path = Path(config.data.path)
        if not path.exists():
            raise ConfigError(f"data.path {path} does not exist; build it with `recsys data build CONFIG` "
                              "or point data.build at a data config")
        return BuiltDataset.open(path)
    data_config = Path(config.data.build)
    if not data_config.exists():
        raise ConfigError(f"data.build {data_config} does not exist")
    if build:
        return BuiltDataset.open(build_from_yaml(data_config, progress=progress))
    output = Path(load_data_config(data_config).output)
    if not (output / "manifest.json").exists():
        raise DataError(f"the dataset of {data_config} is not built ({output} has no manifest.json); "
                        f"build it with `recsys data build {data_config}`")
    return BuiltDataset.open(output)


def run_features(dataset: BuiltDataset, config: RunConfig) -> FeatureSpec:
    """The feature spec the run's model is built for: the dataset's fields restricted to
    ``data.fields`` (None = the core fields), at history length ``data.max_length``."""
    try:
        return dataset.feature_spec().select(config.data.fields, config.data.max_length)
    except ContractError as exc:
        raise ConfigError(f"data.fields: {exc}") from None


def build_model(config: RunConfig, features: FeatureSpec, dataset: Optional[BuiltDataset] = None) -> nn.Module:
    """The configured model for ``features``; with ``dataset``: its id frequencies (models
    that regularise by frequency) and its item side tables attached."""
    try:
        model = config.model_class(features, **config.model_init_args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {config.model.class_path}: {exc}") from exc
    if dataset is None:
        return model
    if hasattr(model, "set_id_frequencies"):
        items = torch.from_numpy(dataset.vocabulary("item").id_counts())
        categories = torch.from_numpy(dataset.vocabulary("category").id_counts())
        model.set_id_frequencies(items, categories)
    model.attach_side_tables({f.name: torch.from_numpy(np.asarray(dataset.side_table(f.name)))
                              for f in features.of("item", side_only=True)})
    return model


def _loggers(out: Path) -> list:
    loggers = [L.pytorch.loggers.CSVLogger(str(out), name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        loggers.append(L.pytorch.loggers.TensorBoardLogger(str(out), name="tensorboard", version=""))
    except ImportError:
        pass
    return loggers


def make_task(config: RunConfig, model: nn.Module, dataset: BuiltDataset) -> L.LightningModule:
    """The Lightning task of the model's family."""
    if config.family == "ranking":
        return RankingTask(model, config.optimizer, config.aux_loss_weights, config.monitor)
    r = config.retrieval
    kind = "popularity" if r.negatives in ("popularity", "in_batch") else "uniform"   # all: no proposal is drawn
    counts = dataset.vocabulary("item").id_counts() if kind == "popularity" else None
    proposal = ItemProposal(kind, model.features.num_items, counts)
    valid = None
    if dataset.split_counts.get("valid", 0):
        valid = FullRankingEvaluator(SplitTruth(dataset, "valid"), r.ks, r.mask_history, r.item_chunk)
    return RetrievalTask(model, config.optimizer, r, proposal, valid, config.aux_loss_weights, config.monitor,
                         config.seed)


def _check_run(config: RunConfig, dataset: BuiltDataset) -> None:
    if config.family == "retrieval":
        SplitTruth(dataset, "test")           # refuses protocols with negatives (din, dare)
        if dataset.manifest.get("has_labels"):
            # explicit labels (MovieLens ratings under source.rating_threshold) would be trained as
            # positives: retrieval learns from interactions only, so a label-0 sample is refused, not used
            negatives = int((dataset.sample_columns("train")["label"] == 0).sum())
            if negatives:
                raise ConfigError(f"{dataset.path}: {negatives} training samples have label 0 (explicit labels, "
                                  "e.g. ratings below source.rating_threshold), and a retrieval model trains every "
                                  "sample as a positive; build the data without them (source.rating_threshold: 0 "
                                  "makes every rating an interaction, source.behaviors keeps chosen behaviours)")
        if max(config.retrieval.ks) > dataset.num_items - 2:
            raise ConfigError(f"retrieval.ks: K = {max(config.retrieval.ks)} exceeds the {dataset.num_items - 2} "
                              "items of the dataset")
        k = config.monitor.rpartition("@")[2]
        if config.monitor.startswith("valid/") and k.isdigit() and int(k) not in config.retrieval.ks:
            raise ConfigError(f"trainer.monitor {config.monitor!r}: K = {k} is not in retrieval.ks "
                              f"{config.retrieval.ks}")


def fit(config: RunConfig, progress: bool = True, overwrite: bool = False, resume: bool = False) -> Path:
    """Train, select the best epoch on validation, export weights, evaluate; returns the run dir.

    ``trainer.num_threads`` applies to this call only: torch's thread count is restored on
    every exit path (quickstart and tests run several fits in one process).

    A directory that holds a run is refused unless ``overwrite`` (start over) or ``resume``
    (continue from its last checkpoint, same config): see :mod:`recsys.run_state`."""
    threads = torch.get_num_threads()
    try:
        with terminate_as_interrupt():      # SIGTERM outside training: a clean one-line stop too
            return _fit(config, progress, overwrite, resume)
    except KeyboardInterrupt as exc:
        raise run_state.describe_interrupt(Path(config.output_dir), exc) from None
    finally:
        torch.set_num_threads(threads)


def _fit(config: RunConfig, progress: bool, overwrite: bool = False, resume: bool = False) -> Path:
    started = time.perf_counter()
    out = Path(config.output_dir)
    L.seed_everything(config.seed, workers=True, verbose=False)
    if config.trainer.num_threads:
        torch.set_num_threads(config.trainer.num_threads)
    dataset = open_dataset(config, build=True, progress=progress)
    _check_run(config, dataset)
    features = run_features(dataset, config)
    model = build_model(config, features, dataset)
    task = make_task(config, model, dataset)
    resume_from = run_state.prepare(out, config.to_dict(), overwrite=overwrite, resume=resume)
    run_state.record_dataset(out, dataset)
    datamodule = SampleDataModule(dataset, config.data, config.seed)
    t = config.trainer
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out / "checkpoints"), monitor=config.monitor,
                                                     mode="max", save_top_k=1, filename="best-{epoch}",
                                                     save_weights_only=True)
    callbacks = [checkpoint, L.pytorch.callbacks.EarlyStopping(monitor=config.monitor, mode="max",
                                                               patience=t.early_stopping_patience),
                 # full state at every validation, for `recsys fit --resume`
                 L.pytorch.callbacks.ModelCheckpoint(dirpath=str(out / "checkpoints"), monitor=None, save_top_k=1,
                                                     filename=run_state.LAST_CHECKPOINT, save_weights_only=False)]
    trainer = L.Trainer(max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
                        num_nodes=t.num_nodes, precision=t.precision, gradient_clip_val=t.gradient_clip_val,
                        val_check_interval=t.val_check_interval, log_every_n_steps=t.log_every_n_steps,
                        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
                        callbacks=callbacks, logger=_loggers(out), enable_progress_bar=progress and t.enable_progress_bar,
                        enable_model_summary=False, deterministic=False, num_sanity_val_steps=0,
                        plugins=[run_state.atomic_checkpoint_io()])   # checkpoints complete or absent
    train_started = time.perf_counter()
    try:
        with run_state.lightning_handles_sigterm():
            trainer.fit(task, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
    except (KeyboardInterrupt, SystemExit) as exc:   # Lightning: SIGINT -> sys.exit(1), SIGTERM -> SIGTERMException
        raise run_state.describe_interrupt(out, exc, trainer.current_epoch, trainer.global_step) from None
    train_seconds = time.perf_counter() - train_started
    if trainer.global_rank != 0:
        return out
    if checkpoint.best_model_path:
        state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    save_config(config, out / "config.yaml")
    export_model(model, config.model.class_path, config.model_init_args, features, out)
    train_samples = task.samples_seen * trainer.world_size
    metrics = evaluate_model(model, dataset, config, out, splits=("valid", "test"))
    metrics.update({
        "run": config.run_name, "model": config.model.class_path, "family": config.family,
        "protocol": dataset.protocol, "dataset": str(dataset.path), "seed": config.seed,
        "epochs": trainer.current_epoch, "best_epoch": _best_epoch(checkpoint.best_model_path),
        "monitor": config.monitor, "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 3), "train_samples": int(train_samples),
        "train_samples_per_second": round(train_samples / max(train_seconds, 1e-9), 1),
        "wall_seconds": round(time.perf_counter() - started, 3),
        "published": vars(config.published) if config.published.value is not None else None,
        "device": str(next(model.parameters()).device), "torch_threads": torch.get_num_threads(),
    })
    _write_json(out / "metrics.json", metrics)
    return out


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


def _best_epoch(path: str) -> Optional[int]:
    if not path or "epoch=" not in path:
        return None
    return int(Path(path).stem.split("epoch=")[1].split("-")[0])


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


def _eval_loader(dataset: BuiltDataset, config: RunConfig, split: str) -> SampleLoader:
    return SampleLoader(dataset, split, config.data.eval_batch_size, max_length=config.data.max_length,
                        form=config.data.form, fields=config.data.fields)


@torch.no_grad()
def rank_split(model: nn.Module, dataset: BuiltDataset, config: RunConfig, split: str) -> dict:
    """Full-ranking Recall/HR/NDCG@K of a retrieval model on one split."""
    model.eval()
    r = config.retrieval
    evaluator = FullRankingEvaluator(SplitTruth(dataset, split), r.ks, r.mask_history, r.item_chunk)
    device = next(model.parameters()).device
    evaluator.start(model, model.features.num_items, device)
    for batch in _eval_loader(dataset, config, split):
        evaluator.add(model.user_interests(batch.to(device)).interests, batch.sample_index.numpy())
    return evaluator.result()


def evaluate_model(model: nn.Module, dataset: BuiltDataset, config: RunConfig, out: Path,
                   splits: Sequence[str] = ("test",)) -> dict:
    """Metrics of ``splits`` (those with samples); ranking models also write predictions."""
    result = {"splits": {}}
    for split in splits:
        if not dataset.split_counts.get(split, 0):
            continue
        started = time.perf_counter()
        if config.family == "retrieval":
            metrics = rank_split(model, dataset, config, split)
            count = metrics["users"]
        else:
            scores = predict(model, _eval_loader(dataset, config, split))
            (out / "predictions").mkdir(exist_ok=True)
            pq.write_table(pa.table(scores), str(out / "predictions" / f"{split}.parquet"))
            metrics = ctr_metrics(scores["label"], scores["prob"], scores["user"])
            count = len(scores["label"])
        metrics["eval_samples_per_second"] = round(count / max(time.perf_counter() - started, 1e-9), 1)
        result["splits"][split] = metrics
    return result


def load_run(run_dir: Union[str, Path]) -> "tuple[RunConfig, nn.Module]":
    """The config and the trained model of a run directory, rebuilt from ``model.json`` and
    the weights alone (:func:`recsys.artifacts.load_model`): no dataset is opened or built."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "model.safetensors", "model.json"):
        if not (run_dir / name).exists():
            raise CheckpointError(f"{run_dir} is not a finished run: {name} is missing")
    return load_config(run_dir / "config.yaml"), load_model(run_dir)


def evaluate(run_dir: Union[str, Path], splits: Sequence[str] = ("test",)) -> dict:
    """Score a finished run on ``splits`` of the dataset it was trained on (which must be
    built already; evaluate never builds) and merge the numbers into its metrics.json."""
    run_dir = Path(run_dir)
    config, model = load_run(run_dir)
    dataset = open_dataset(config, build=False)
    current = run_features(dataset, config)
    if model.features != current:
        raise CheckpointError(f"{run_dir}: the model was trained on data with different vocabularies "
                              f"(checkpoint, data): {spec_diff(model.features, current)}; evaluate it on the "
                              "dataset it was trained on")
    run_state.check_same_vocabulary(run_dir, dataset)    # same sizes, other ids
    result = evaluate_model(model, dataset, config, run_dir, splits)
    path = run_dir / "metrics.json"
    try:
        existing = json.loads(path.read_text()) if path.exists() else {"splits": {}}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc}); the run directory is damaged: "
                              "retrain it with `recsys fit CONFIG --overwrite`") from None
    existing.setdefault("splits", {}).update(result["splits"])
    _write_json(path, existing)
    return result


def fit_from_yaml(path: Union[str, Path], overrides: Optional[dict] = None, progress: bool = True,
                  overwrite: bool = False, resume: bool = False) -> Path:
    return fit(load_config(path, overrides), progress, overwrite=overwrite, resume=resume)
