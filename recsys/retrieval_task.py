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
* ``in_batch``: the other rows' targets (M = B), whose proposal is the target frequency;
* ``all``: every real item (M = N − 2): the exact softmax over the catalogue, with the
  target's own column removed from the negatives (so it appears once); no logQ. The logits
  are [P, N − 2], which costs memory on large catalogues, not accuracy.

With ``logq_correction`` every logit, the target's included, is reduced by the log of its
expected count under the proposal (Yi et al., RecSys 2019, "Sampling-bias-corrected neural
modeling"; TensorFlow's ``sampled_softmax_loss(subtract_log_q=True)``): without it a
popularity proposal over-penalises popular items. Uniform Q is a constant, so there the
correction changes nothing. A negative equal to the row's own target is removed
(an "accidental hit"; ``remove_accidental_hits: false`` keeps drawn ones, as RecTools does),
as are repeats of the target among in-batch negatives.

Two switches extend this (``retrieval.loss`` / ``retrieval.positions``) for SASRec's own
objective (Kang & McAuley, ICDM 2018), and a model output field for sample weights:

* ``positions: all``: a causal model also returns ``RetrievalOutput.sequence`` [B, L, D];
  every history position j < length is a trained example predicting the next behaviour
  (history j + 1, the target after the last); ``last`` (default) trains the target only.
* ``loss: bce``: −log σ(<u, e_pos>) − Σ_m log σ(−<u, e_neg_m>) per trained example, with
  ``num_negatives`` negatives of its own drawn from the proposal (SASRec: one uniform
  negative per position); a negative that is an item of the example's row (its history or
  target) is dropped, as SASRec draws negatives outside the user's sequence. No logQ.
* ``RetrievalOutput.sample_weights`` [B] (DESMIL): the loss is Σ w_b ℓ_b / Σ w_b over the
  trained examples (a row's weight applies to each of its positions) instead of the mean.

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
from recsys.errors import ConfigError, NonFiniteLossError
from recsys.models.base import RetrievalModel

from .config import OptimizerSection, RetrievalSection
from .full_ranking import NOT_RANKED, FullRankingEvaluator
from .task import check_finite_metric, configure_optimizers, total_loss


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
                         log_q_negative: Optional[Tensor] = None, reduction: str = "mean",
                         remove_accidental_hits: bool = True) -> Tensor:
    """Mean softmax cross-entropy of each row's target against its negatives.

    user [B, D], positive [B, D] (target vectors), positive_ids [B]; negatives shared by the
    rows (negative [M, D], negative_ids [M]) or each row's own (negative [B, M, D],
    negative_ids [B, M]); log_q_* ([B], and the shape of negative_ids) are subtracted from the
    logits when given. Negatives whose id equals the row's target are excluded unless
    ``remove_accidental_hits`` is False (RecTools keeps them). ``reduction="none"``: [B]."""
    positive_logit = (user * positive).sum(-1) / temperature                    # [B]
    own = negative.dim() == 3
    negative_logit = (torch.einsum("bd,bmd->bm", user, negative) if own else user @ negative.T) / temperature
    if log_q_positive is not None:
        positive_logit = positive_logit - log_q_positive
        negative_logit = negative_logit - (log_q_negative if own else log_q_negative[None, :])
    if remove_accidental_hits:
        accidental = (negative_ids if own else negative_ids[None, :]) == positive_ids[:, None]   # [B, M]
        negative_logit = negative_logit.masked_fill(accidental, float("-inf"))
    logits = torch.cat([positive_logit[:, None], negative_logit], dim=1)        # [B, 1 + M]
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device),
                           reduction=reduction)


def binary_cross_entropy_loss(user: Tensor, positive: Tensor, negative: Tensor,
                              negative_valid: Optional[Tensor] = None) -> Tensor:
    """SASRec's per-example loss −log σ(<u, e⁺>) − Σ_m log σ(−<u, e⁻_m>), [P].

    user [P, D], positive [P, D], negative [P, M, D] (each example's own negatives),
    negative_valid [P, M] bool (False: the negative is dropped)."""
    positive_logit = (user * positive).sum(-1)                                 # [P]
    negative_logit = torch.einsum("pd,pmd->pm", user, negative)                # [P, M]
    negative_loss = F.softplus(negative_logit)                                 # −log σ(−s)
    if negative_valid is not None:
        negative_loss = negative_loss * negative_valid.to(negative_loss.dtype)
    return F.softplus(-positive_logit) + negative_loss.sum(-1)


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
        if retrieval.loss == "bce" and retrieval.negatives in ("in_batch", "all"):
            raise ConfigError(f"retrieval.loss: bce draws negatives per trained position from a proposal; use "
                              f"retrieval.negatives uniform (SASRec) or popularity, not {retrieval.negatives}")
        if not retrieval.share_negatives and retrieval.negatives not in ("uniform", "popularity"):
            raise ConfigError(f"retrieval.share_negatives: false draws negatives per example from a proposal; "
                              f"it needs retrieval.negatives uniform or popularity, not {retrieval.negatives}")
        if not retrieval.remove_accidental_hits and retrieval.negatives not in ("uniform", "popularity"):
            raise ConfigError(f"retrieval.remove_accidental_hits: false keeps drawn negatives equal to the target; "
                              f"with negatives {retrieval.negatives} the target is the row's own column and is always "
                              "removed: use uniform or popularity")
        if retrieval.negatives == "all" and retrieval.logq_correction:
            raise ConfigError("retrieval.negatives: all is the exact softmax over every item, which needs no logQ "
                              "correction; set retrieval.logq_correction: false")

    def transfer_batch_to_device(self, batch: Batch, device: torch.device, dataloader_idx: int) -> Batch:
        return batch.to(device)

    def negatives(self, positive_ids: Tensor, positive: Tensor) -> "tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]":
        """Negatives of the sampled softmax for trained examples with targets
        ``positive_ids`` [P] (vectors ``positive`` [P, D]): (negative vectors [M, D], their
        ids [M], log Q of the targets [P], of the negatives [M]); with ``share_negatives:
        false`` each example's own: vectors [P, M, D], ids and log Q [P, M]."""
        cfg = self.retrieval
        if cfg.negatives == "all":
            ids = torch.arange(NOT_RANKED, self.model.features.num_items, device=positive_ids.device)
            return self.model.item_embeddings(ids), ids, None, None
        if cfg.negatives == "in_batch":
            ids, vectors, draws = positive_ids, positive, len(positive_ids)
        elif cfg.share_negatives:
            ids = self.proposal.draw(cfg.num_negatives, self.generator).to(positive_ids.device)
            vectors, draws = self.model.item_embeddings(ids), cfg.num_negatives
        else:
            ids = self.proposal.draw(len(positive_ids) * cfg.num_negatives, self.generator).to(positive_ids.device)
            ids = ids.reshape(len(positive_ids), cfg.num_negatives)                         # [P, M]
            vectors = self.model.item_embeddings(ids.reshape(-1)).reshape(*ids.shape, -1)   # [P, M, D]
            draws = cfg.num_negatives
        if not cfg.logq_correction:
            return vectors, ids, None, None
        return (vectors, ids, self.proposal.log_expected_count(positive_ids, draws),
                self.proposal.log_expected_count(ids, draws))

    def trained_examples(self, batch: Batch, output) -> "tuple[Tensor, Tensor, Tensor, Tensor]":
        """(user vectors [P, D], target ids [P], target vectors [P, D], row in batch [P]).

        ``last``: one example per row, the label-aware selected interest and the target.
        ``all``: every valid position of ``output.sequence`` and the behaviour after it."""
        if self.retrieval.positions == "last":
            positive = self.model.item_embeddings(batch.target_item)                   # [B, D]
            user = self.model.select_interest(output.interests, positive)              # [B, D]
            return user, batch.target_item, positive, torch.arange(batch.size, device=positive.device)
        sequence = output.sequence
        if sequence is None:
            raise ConfigError(f"retrieval.positions: all trains every history position, which needs a causal model "
                              f"returning RetrievalOutput.sequence (SASRec); {type(self.model).__name__} returns "
                              "none: use positions: last")
        padded = batch.to_padded(sequence.shape[1])
        history, lengths = padded.hist_item, padded.lengths
        if history.shape[1] != sequence.shape[1]:
            raise ConfigError(f"RetrievalOutput.sequence has {sequence.shape[1]} positions but the batch's padded "
                              f"history {history.shape[1]}")
        steps = torch.arange(history.shape[1], device=history.device)
        following = torch.cat([history[:, 1:], history.new_zeros(history.shape[0], 1)], dim=1)   # [B, L]
        following = torch.where(steps[None, :] == (lengths - 1)[:, None], padded.target_item[:, None], following)
        rows, cols = torch.nonzero(steps[None, :] < lengths[:, None], as_tuple=True)
        ids = following[rows, cols]
        return sequence[rows, cols], ids, self.model.item_embeddings(ids), rows

    def bce_negatives(self, batch: Batch, rows: Tensor) -> "tuple[Tensor, Tensor]":
        """(negative vectors [P, M, D], valid [P, M]): ``num_negatives`` draws per trained
        example; a draw equal to an item of its row (history or target) is not valid."""
        m = self.retrieval.num_negatives
        ids = self.proposal.draw(len(rows) * m, self.generator).to(rows.device).reshape(len(rows), m)
        padded = batch.to_padded()
        row_items = torch.cat([padded.hist_item, padded.target_item[:, None]], dim=1)            # [B, L + 1]
        n = self.model.features.num_items
        owner = torch.arange(row_items.shape[0], device=rows.device)[:, None].expand_as(row_items)
        own_keys = (owner * n + row_items)[row_items > 0]
        valid = ~torch.isin(rows[:, None] * n + ids, own_keys)                                   # [P, M]
        return self.model.item_embeddings(ids), valid

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        output = self.model.user_interests(batch)
        user, positive_ids, positive, rows = self.trained_examples(batch, output)
        if self.retrieval.loss == "bce":
            negative, valid = self.bce_negatives(batch, rows)
            losses = binary_cross_entropy_loss(user, positive, negative, valid)           # [P]
        else:
            negative, negative_ids, log_q_pos, log_q_neg = self.negatives(positive_ids, positive)
            losses = sampled_softmax_loss(user, positive, positive_ids, negative, negative_ids,
                                          self.retrieval.temperature, log_q_pos, log_q_neg, reduction="none",
                                          remove_accidental_hits=self.retrieval.remove_accidental_hits)
        if output.sample_weights is None:
            objective = losses.mean()
        else:
            weights = output.sample_weights.detach().to(losses.dtype)[rows]
            objective = (weights * losses).sum() / weights.sum().clamp_min(torch.finfo(losses.dtype).tiny)
        name = "bce" if self.retrieval.loss == "bce" else "sampled_softmax"
        loss = total_loss(self, name, objective, output.aux_losses, batch, batch_idx)
        self.samples_seen += batch.size
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch.size)
        self.log(f"train/{name}", objective.detach(), batch_size=batch.size)
        for key, value in output.diagnostics.items():
            self.log(f"train/{key}", value.detach(), batch_size=batch.size)
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
