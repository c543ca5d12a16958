"""The Lightning retrieval task: sampled softmax over item vectors, full-ranking validation.

Training (positives only: the ``loo`` and ``users`` protocols). For a batch of B users with
target items t_b, the model gives interests ``[B, K, D]``; label-aware selection
(``model.select_interest``: the interest closest to the target, MIND / ComiRec) turns them
into one user vector u_b ``[B, D]``. The loss is the softmax cross-entropy of the target
against a set of negatives::

    logit(b, i) = <u_b, e_i> / temperature − log Q(i)        (the −log Q term with logq_correction)
    loss = − mean_b log softmax([logit(b, t_b), logit(b, n_1), ..., logit(b, n_M)])[0]

``retrieval.negatives`` picks the negatives:

* ``uniform`` / ``popularity``: M = ``num_negatives`` ids drawn once per batch and shared by
  all its rows (the sampled softmax of Jean et al. 2015 and YouTube DNN), uniformly over
  the real item ids (2 .. N−1) or proportionally to their training event counts;
* ``in_batch``: the other rows' targets (M = B), whose proposal is the target frequency.

With ``logq_correction`` every logit, the target's included, is reduced by the log of its
expected count under the proposal (Yi et al., RecSys 2019, "Sampling-bias-corrected neural
modeling"; TensorFlow's ``sampled_softmax_loss(subtract_log_q=True)``): without it a
popularity proposal over-penalises popular items. Uniform Q is a constant, so there the
correction changes nothing. A negative equal to the row's own target is removed
(an "accidental hit"), as are repeats of the target among in-batch negatives.

Validation ranks every item for each validation user (:mod:`recsys.full_ranking`) and logs
``valid/recall@K``, ``valid/hr@K`` and ``valid/ndcg@K`` for the configured K; early
stopping and the best checkpoint follow ``valid/recall@20`` by default.
"""

from __future__ import annotations

from typing import Dict, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.contract import Batch
from recsys.errors import NonFiniteLossError
from recsys.models.base import RetrievalModel

from .config import OptimizerSection, RetrievalSection
from .full_ranking import NOT_RANKED, FullRankingEvaluator
from .task import check_finite_metric, configure_optimizers


class ItemProposal:
    """The distribution negatives are drawn from, over the real item ids ``2 .. N−1``.

    item_counts [N]: training event counts by item id (for ``popularity`` and ``in_batch``);
    ids whose count is 0 are counted as 1, so every id has a finite log Q."""

    def __init__(self, kind: str, num_items: int, item_counts: Optional[np.ndarray] = None) -> None:
        if num_items <= NOT_RANKED:
            raise ValueError(f"no real items to sample from (num_items = {num_items})")
        self.kind, self.num_items = kind, num_items
        if kind == "uniform":
            probs = torch.full((num_items - NOT_RANKED,), 1.0 / (num_items - NOT_RANKED), dtype=torch.float64)
        else:
            if item_counts is None or len(item_counts) != num_items:
                raise ValueError(f"{kind} negatives need item counts for all {num_items} ids")
            counts = torch.as_tensor(np.asarray(item_counts[NOT_RANKED:], dtype=np.float64)).clamp(min=1.0)
            probs = counts / counts.sum()
        self.probs = probs.float()                                      # [N − 2]
        self.log_probs = torch.cat([torch.zeros(NOT_RANKED), probs.log().float()])   # [N], by item id

    def draw(self, n: int, generator: torch.Generator) -> Tensor:
        """[n] item ids (with replacement, on the CPU)."""
        if self.kind == "uniform":
            return torch.randint(NOT_RANKED, self.num_items, (n,), generator=generator)
        return NOT_RANKED + torch.multinomial(self.probs, n, replacement=True, generator=generator)

    def log_expected_count(self, ids: Tensor, draws: int) -> Tensor:
        """log(draws · Q(id)) for ids of any shape: the logQ correction term."""
        return self.log_probs.to(ids.device)[ids] + float(np.log(draws))


def sampled_softmax_loss(user: Tensor, positive: Tensor, positive_ids: Tensor, negative: Tensor, negative_ids: Tensor,
                         temperature: float = 1.0, log_q_positive: Optional[Tensor] = None,
                         log_q_negative: Optional[Tensor] = None) -> Tensor:
    """Mean softmax cross-entropy of each row's target against shared negatives.

    user [B, D], positive [B, D] (target vectors), positive_ids [B], negative [M, D],
    negative_ids [M]; log_q_* ([B], [M]) are subtracted from the logits when given.
    Negatives whose id equals the row's target are excluded."""
    positive_logit = (user * positive).sum(-1) / temperature                    # [B]
    negative_logit = user @ negative.T / temperature                            # [B, M]
    if log_q_positive is not None:
        positive_logit = positive_logit - log_q_positive
        negative_logit = negative_logit - log_q_negative[None, :]
    accidental = negative_ids[None, :] == positive_ids[:, None]                 # [B, M]
    negative_logit = negative_logit.masked_fill(accidental, float("-inf"))
    logits = torch.cat([positive_logit[:, None], negative_logit], dim=1)        # [B, 1 + M]
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class RetrievalTask(L.LightningModule):
    """Trains a :class:`RetrievalModel` with sampled softmax; validates by full ranking.

    ``loss = sampled softmax + Σ w_name · aux_name + regularization``; ``valid`` is the
    evaluator of the validation split (None: no validation metrics are logged)."""

    def __init__(self, model: RetrievalModel, optimizer: OptimizerSection, retrieval: RetrievalSection,
                 proposal: ItemProposal, valid: Optional[FullRankingEvaluator] = None,
                 aux_loss_weights: Optional[Dict[str, float]] = None, monitor: str = "valid/recall@20",
                 seed: int = 0) -> None:
        super().__init__()
        self.model = model
        self.optimizer_config = optimizer
        self.retrieval = retrieval
        self.proposal = proposal
        self.valid = valid
        self.aux_loss_weights = dict(aux_loss_weights or {})
        self.monitor = monitor
        self.generator = torch.Generator().manual_seed(seed)
        self.samples_seen = 0

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)

    def negatives(self, batch: Batch, positive: Tensor) -> "tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]":
        """(negative vectors [M, D], their ids [M], log Q of the targets [B], of the negatives [M])."""
        cfg = self.retrieval
        targets = batch.target_item
        if cfg.negatives == "in_batch":
            ids, vectors, draws = targets, positive, len(targets)
        else:
            ids = self.proposal.draw(cfg.num_negatives, self.generator).to(targets.device)
            vectors, draws = self.model.item_embeddings(ids), cfg.num_negatives
        if not cfg.logq_correction:
            return vectors, ids, None, None
        return (vectors, ids, self.proposal.log_expected_count(targets, draws),
                self.proposal.log_expected_count(ids, draws))

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        output = self.model.user_interests(batch)
        positive = self.model.item_embeddings(batch.target_item)                  # [B, D]
        user = self.model.select_interest(output.interests, positive)             # [B, D]
        negative, negative_ids, log_q_pos, log_q_neg = self.negatives(batch, positive)
        softmax = sampled_softmax_loss(user, positive, batch.target_item, negative, negative_ids,
                                       self.retrieval.temperature, log_q_pos, log_q_neg)
        loss = softmax
        for name, value in output.aux_losses.items():
            loss = loss + self.aux_loss_weights.get(name, 1.0) * value
            self.log(f"train/aux_{name}", value.detach(), batch_size=batch.size)
        reg = self.model.regularization(batch)
        loss = loss + reg
        if not torch.isfinite(loss):
            rows = batch.sample_index[:5].tolist() if batch.sample_index is not None else "n/a"
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}; sampled softmax={softmax.item()}, regularization={reg.item()}); first sample "
                f"rows of the batch: {rows}. Lower the learning rate or enable gradient clipping "
                "(trainer.gradient_clip_val).")
        self.samples_seen += batch.size
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch.size)
        self.log("train/sampled_softmax", softmax.detach(), batch_size=batch.size)
        return loss

    def on_train_epoch_start(self) -> None:
        loader = getattr(self.trainer.datamodule, "train_loader", None)
        if loader is not None:
            loader.set_epoch(self.current_epoch)

    def on_validation_epoch_start(self) -> None:
        if self.valid is not None:
            self.valid.start(self.model, self.model.features.num_items, self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self.valid is None:
            return
        interests = self.model.user_interests(batch).interests
        if not torch.isfinite(interests).all():
            raise NonFiniteLossError(f"user interests are NaN or infinite in validation at epoch "
                                     f"{self.current_epoch} (global step {self.global_step}, batch {batch_idx})")
        self.valid.add(interests, batch.sample_index.cpu().numpy())

    def on_validation_epoch_end(self) -> None:
        if self.valid is None or not self.valid.sums:
            return
        sums = self.valid.sums
        if self.trainer.world_size > 1:   # each rank ranked its own shard of users: add the sums
            keys = sorted(sums)
            total = self.all_gather(torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device))
            self.valid.sums = dict(zip(keys, total.reshape(-1, len(keys)).sum(0).tolist()))
        metrics = self.valid.result()
        for key, value in metrics.items():
            if key == "users":
                continue
            check_finite_metric(f"valid/{key}", value, self, "no validation user was ranked")
            self.log(f"valid/{key}", float(value), prog_bar=key == self.monitor.split("/")[-1], sync_dist=False,
                     rank_zero_only=False)

    def configure_optimizers(self):
        return configure_optimizers(self.model, self.optimizer_config, self.monitor)
