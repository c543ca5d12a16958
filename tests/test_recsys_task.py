"""The Lightning task and data module in isolation: loss composition, optimisers and
schedules by name, NaN reporting, rank sharding, validation-only model selection."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.contract import Batch
from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.models.base import FeatureSpec, RankingModel, RankingOutput
from recsys.config import DataSection, OptimizerSection, parse_config
from recsys.datamodule import SampleDataModule
from recsys.runner import fit
from recsys.task import NonFiniteLossError, RankingTask

# the task is driven without a Trainer here; its self.log calls warn and do nothing
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`:UserWarning")

FEATURES = FeatureSpec(num_users=10, num_items=20, num_categories=5, max_length=4)


def make_batch(b: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (b,), generator=g)
    hist = torch.randint(2, 20, (b, 4), generator=g) * (torch.arange(4)[None, :] < lengths[:, None])
    return Batch(user=torch.randint(2, 10, (b,), generator=g), target_item=torch.randint(2, 20, (b,), generator=g),
                 target_category=torch.randint(2, 5, (b,), generator=g),
                 label=torch.tensor([0.0, 1.0] * (b // 2)), lengths=lengths, hist_item=hist,
                 hist_category=hist % 5, sample_index=torch.arange(100, 100 + b))


class AuxModel(RankingModel):
    """Linear score of the target item, plus one named auxiliary loss and an L2 term."""

    def __init__(self, features: FeatureSpec, aux_value: float = 0.3, reg_value: float = 0.05,
                 poison: bool = False) -> None:
        super().__init__(features)
        self.item = nn.Embedding(features.num_items, 1)
        self.aux_value, self.reg_value, self.poison = aux_value, reg_value, poison

    def forward(self, batch: Batch) -> RankingOutput:
        logit = self.item(batch.target_item).squeeze(-1)
        if self.poison:
            logit = logit * float("nan")
        return RankingOutput(logit, {"contrastive": logit.sum() * 0 + self.aux_value})

    def regularization(self, batch: Batch) -> torch.Tensor:
        return self.item.weight.sum() * 0 + self.reg_value


def test_loss_is_bce_plus_weighted_aux_plus_regularization():
    model = AuxModel(FEATURES)
    batch = make_batch()
    task = RankingTask(model, OptimizerSection(), aux_loss_weights={"contrastive": 2.0})
    loss = task.training_step(batch, 0)
    bce = F.binary_cross_entropy_with_logits(model(batch).logit, batch.label)
    assert loss.item() == pytest.approx(bce.item() + 2.0 * 0.3 + 0.05, rel=1e-6)
    unweighted = RankingTask(model, OptimizerSection()).training_step(batch, 0)   # weight 1 by default
    assert unweighted.item() == pytest.approx(bce.item() + 0.3 + 0.05, rel=1e-6)
    assert task.samples_seen == batch.size


def test_nan_loss_names_step_batch_and_rows():
    task = RankingTask(AuxModel(FEATURES, poison=True), OptimizerSection())
    with pytest.raises(NonFiniteLossError, match=r"global step 0 \(epoch 0, batch 7;.*\[100, 101, 102, 103, 104\]"):
        task.training_step(make_batch(), 7)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_optimizer_by_name(name, cls):
    task = RankingTask(AuxModel(FEATURES), OptimizerSection(name=name, lr=0.01, weight_decay=1e-4))
    optimizer = task.configure_optimizers()
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["weight_decay"] == 1e-4


def test_schedules_by_name_follow_their_rules():
    def scheduled(**kw):
        out = RankingTask(AuxModel(FEATURES), OptimizerSection(lr=0.1, **kw)).configure_optimizers()
        return out["optimizer"], out["lr_scheduler"]

    optimizer, scheduler = scheduled(schedule="exponential", gamma=0.9)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.9 ** 3)
    optimizer, scheduler = scheduled(schedule="step", gamma=0.5, step_size=2)
    lrs = []
    for _ in range(5):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])
    optimizer, spec = scheduled(schedule="plateau", gamma=0.5, min_lr=0.03)
    assert spec["monitor"] == "valid/auc"
    scheduler = spec["scheduler"]
    for auc in (0.70, 0.71, 0.71, 0.70, 0.70):     # stalls → halve, never below min_lr
        scheduler.step(auc)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.03)
    plain = RankingTask(AuxModel(FEATURES), OptimizerSection(schedule="none")).configure_optimizers()
    assert isinstance(plain, torch.optim.Adam)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("task-data")
    config = DataConfig(output=str(root / "ds"), source=SourceConfig(format="synthetic", synthetic=SyntheticSource(
        n_rows=12_000, n_items=400, n_categories=20, mean_events=20.0)), protocol=ProtocolConfig(max_length=16))
    return build_dataset(config, progress=False)


@pytest.mark.parametrize("world", [2, 3])
def test_datamodule_shards_by_rank_without_overlap(dataset, world):
    shards = []
    for rank in range(world):
        module = SampleDataModule(dataset, DataSection(path=str(dataset), batch_size=64, eval_batch_size=100), seed=3)
        module.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        train = np.concatenate([b.sample_index.numpy() for b in module.train_dataloader()])
        valid = np.concatenate([b.sample_index.numpy() for b in module.val_dataloader()])
        shards.append((train, valid))
    n_train = BuiltDataset.open(dataset).split_counts["train"]
    for split in (0, 1):
        parts = [s[split] for s in shards]
        assert len({len(p) for p in parts}) == 1                        # equal shards: no rank waits
        union = np.concatenate(parts)
        assert len(np.unique(union)) == len(union)                      # no sample on two ranks
    # each rank gets n // world samples and drops its last partial training batch (BatchNorm
    # and Dice need more than one row), so fewer than world * 64 + world samples sit out an epoch
    per_rank = n_train // world
    assert all(len(s[0]) == per_rank // 64 * 64 for s in shards)
    assert n_train - world * 65 < sum(len(s[0]) for s in shards) <= n_train


def test_train_loader_reshuffles_per_epoch_but_is_seeded(dataset):
    def order(epoch, seed=0):
        module = SampleDataModule(dataset, DataSection(path=str(dataset), batch_size=128), seed=seed)
        loader = module.train_dataloader()
        module.train_loader.set_epoch(epoch)
        return np.concatenate([b.sample_index.numpy() for b in loader])
    assert np.array_equal(order(0), order(0))
    assert not np.array_equal(order(0), order(1))
    a, b = order(0), order(1)
    n = BuiltDataset.open(dataset).split_counts["train"]
    assert len(a) == len(b) == n // 128 * 128                     # the partial last batch is dropped
    assert len(np.unique(a)) == len(a) and a.max() < n            # no repeats, all valid rows
    assert len(np.setdiff1d(np.arange(n), np.union1d(a, b))) < 128   # a different remainder each epoch


def _raw(dataset, out, **trainer):
    return {"name": Path(out).name, "output_dir": str(out), "seed": 0,
            "data": {"path": str(dataset), "batch_size": 128, "eval_batch_size": 2048},
            "model": {"class_path": "EmbeddingMLP", "init_args": {"item_dim": 4, "category_dim": 4, "mlp_units": [8]}},
            "trainer": {"enable_progress_bar": False, "limit_train_batches": 12, **trainer}}


def test_best_checkpoint_is_selected_on_validation_and_early_stopping_stops(dataset, tmp_path):
    raw = _raw(dataset, tmp_path / "es", max_epochs=6, early_stopping_patience=1)
    raw["optimizer"] = {"name": "adam", "lr": 1e-30}   # updates vanish in float32: nothing improves → stop at epoch 1
    run = fit(parse_config(raw), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0 and metrics["epochs"] < 6

    run = fit(parse_config(_raw(dataset, tmp_path / "sel", max_epochs=3, early_stopping_patience=5)), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    with open(run / "logs" / "metrics.csv") as f:
        valid_auc = [float(r["valid/auc"]) for r in csv.DictReader(f) if r.get("valid/auc")]
    assert len(valid_auc) == 3
    assert metrics["best_epoch"] == int(np.argmax(valid_auc))        # first maximum, as ModelCheckpoint keeps it
    assert metrics["splits"]["valid"]["auc"] == pytest.approx(max(valid_auc), abs=1e-6)


def test_a_nan_validation_metric_stops_training_instead_of_logging_zero():
    trainer = SimpleNamespace(world_size=1, current_epoch=3, global_step=120)
    task = RankingTask(AuxModel(FEATURES, poison=True), OptimizerSection())
    task._trainer = trainer
    batch = make_batch()
    with torch.no_grad():      # as under Lightning's validation loop
        task.validation_step(batch, 0)
    with pytest.raises(NonFiniteLossError, match=r"validation scores are NaN or infinite at epoch 3 \(global step 120"):
        task.on_validation_epoch_end()
    task = RankingTask(AuxModel(FEATURES), OptimizerSection())
    task._trainer = trainer
    with torch.no_grad():
        task.validation_step(batch.replace(label=torch.ones(batch.size)), 0)     # one class: AUC undefined
    with pytest.raises(NonFiniteLossError, match=r"valid/auc is nan at epoch 3 \(global step 120\)"):
        task.on_validation_epoch_end()


def test_gauc_undefined_on_one_pair_per_user_is_not_an_error_unless_monitored():
    # the din protocol on MovieLens: one validation rating per user, so no user has both
    # labels; AUC over the split is fine, GAUC is undefined and must not stop training
    trainer = SimpleNamespace(world_size=1, current_epoch=0, global_step=10)
    batch = make_batch()
    single = batch.replace(user=torch.arange(batch.size), label=(torch.arange(batch.size) % 2).float())
    logged = {}
    task = RankingTask(AuxModel(FEATURES), OptimizerSection())
    task._trainer = trainer
    task.log = lambda name, value, **kwargs: logged.__setitem__(name, value)   # what reaches Lightning
    with torch.no_grad():
        task.validation_step(single, 0)
    task.on_validation_epoch_end()
    assert set(logged) == {"valid/auc", "valid/logloss"}
    task = RankingTask(AuxModel(FEATURES), OptimizerSection(), monitor="valid/gauc")
    task._trainer = trainer
    task.log = lambda name, value, **kwargs: None
    with torch.no_grad():
        task.validation_step(single, 0)
    with pytest.raises(NonFiniteLossError, match=r"valid/gauc is nan"):
        task.on_validation_epoch_end()
