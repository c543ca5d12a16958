"""The Lightning ranking task: BCE + the model's auxiliary losses + its regularisation."""

from __future__ import annotations

from typing import Dict, List, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from recsys.contract import Batch
from recsys.models.base import RankingModel

from .config import OptimizerSection
from .metrics import ctr_metrics


from recsys.errors import NonFiniteLossError  # noqa: E402,F401  (re-exported)


class RankingTask(L.LightningModule):
    """Trains a RankingModel with ``loss = BCE + Σ w_name · aux_name + regularization``.

    Auxiliary losses the model returns are weighted by ``aux_loss_weights[name]`` (1.0 when
    not configured, the weight the papers use). Validation collects scores of the whole
    split and logs AUC, GAUC (by user) and logloss as ``valid/auc`` etc.
    """

    def __init__(self, model: RankingModel, optimizer: OptimizerSection,
                 aux_loss_weights: Optional[Dict[str, float]] = None, monitor: str = "valid/auc") -> None:
        super().__init__()
        self.model = model
        self.optimizer_config = optimizer
        self.aux_loss_weights = dict(aux_loss_weights or {})
        self.monitor = monitor
        self._val_outputs: List[tuple] = []
        self.samples_seen = 0   # training samples processed by this rank (for samples/s)

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch).logit

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        output = self.model(batch)
        bce = F.binary_cross_entropy_with_logits(output.logit, batch.label)
        loss = total_loss(self, "bce", bce, output.aux_losses, batch, batch_idx)
        self.samples_seen += batch.size
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch.size)
        self.log("train/bce", bce.detach(), batch_size=batch.size)
        return loss

    def on_train_epoch_start(self) -> None:
        loader = getattr(self.trainer.datamodule, "train_loader", None)
        if loader is not None:
            loader.set_epoch(self.current_epoch)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logit = self.model(batch).logit
        self._val_outputs.append((torch.sigmoid(logit).float(), batch.label, batch.user))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        prob, label, user = (torch.cat(parts) for parts in zip(*self._val_outputs))
        self._val_outputs.clear()
        if self.trainer.world_size > 1:   # equal shard sizes per rank (see SampleLoader)
            prob, label, user = (self.all_gather(t).reshape(-1) for t in (prob, label, user))
        if not torch.isfinite(prob).all():
            raise NonFiniteLossError(f"{int((~torch.isfinite(prob)).sum())} validation scores are NaN or infinite "
                                     f"at epoch {self.current_epoch} (global step {self.global_step}); lower the "
                                     "learning rate or enable gradient clipping (trainer.gradient_clip_val)")
        metrics = ctr_metrics(label.cpu().numpy(), prob.cpu().numpy(), user.cpu().numpy())
        for key in ("auc", "gauc", "logloss"):
            name = f"valid/{key}"
            if key == "gauc" and not np.isfinite(metrics[key]) and name != self.monitor:
                # no validation user has both labels (one validation pair per user, as in the
                # din protocol on MovieLens): GAUC is undefined there, so it is not logged
                continue
            check_finite_metric(name, metrics[key], self,
                                "the validation split needs positive and negative samples (for GAUC: within a user)")
            self.log(name, float(metrics[key]), prog_bar=key == "auc", sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.optimizer_config, self.monitor)


def total_loss(task, objective_name: str, objective: torch.Tensor, aux_losses: Dict[str, torch.Tensor],
               batch: Batch, batch_idx: int) -> torch.Tensor:
    """``objective + Σ w_name · aux_name + model.regularization(batch)`` (w from the task's
    ``aux_loss_weights``, 1.0 when not configured), logging each auxiliary term; a NaN or
    infinite total stops training (:func:`check_finite_loss`). Both tasks use it."""
    loss = objective
    for name, value in aux_losses.items():
        loss = loss + task.aux_loss_weights.get(name, 1.0) * value
        task.log(f"train/aux_{name}", value.detach(), batch_size=batch.size)
    reg = task.model.regularization(batch)
    loss = loss + reg
    check_finite_loss(loss, task, batch, batch_idx, {objective_name: objective, "regularization": reg,
                                                      "aux": aux_losses})
    return loss


def check_finite_loss(loss: torch.Tensor, module: L.LightningModule, batch: Batch, batch_idx: int,
                      parts: Dict[str, object]) -> None:
    """A NaN or infinite training loss stops training, naming the step, the batch, the loss
    terms (``parts``: name -> scalar tensor or dict of them) and the batch's first sample rows."""
    if torch.isfinite(loss):
        return
    def value(v):
        return {k: x.item() for k, x in v.items()} if isinstance(v, dict) else v.item()
    terms = ", ".join(f"{name}={value(v)}" for name, v in parts.items())
    rows = batch.sample_index[:5].tolist() if batch.sample_index is not None else "n/a"
    raise NonFiniteLossError(
        f"training loss is {loss.item()} at global step {module.global_step} (epoch {module.current_epoch}, "
        f"batch {batch_idx}; {terms}); first sample rows of the batch: {rows}. "
        "Lower the learning rate or enable gradient clipping (trainer.gradient_clip_val).")


def check_finite_metric(name: str, value: float, module: L.LightningModule, why: str) -> None:
    """A NaN validation metric stops training (early stopping must not see a made-up number)."""
    if not np.isfinite(value):
        raise NonFiniteLossError(f"{name} is {value} at epoch {module.current_epoch} (global step "
                                 f"{module.global_step}): {why}")


def configure_optimizers(model: torch.nn.Module, cfg: OptimizerSection, monitor: str):
    """The optimizer (and LR schedule) of a run's trainable parameters; both tasks use it."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adam":
        optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    elif cfg.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.schedule == "none":
        return optimizer
    if cfg.schedule == "exponential":
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    elif cfg.schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.gamma,
                                                               patience=0, min_lr=cfg.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor}}
    return {"optimizer": optimizer, "lr_scheduler": scheduler}
