"""What every model shares: the feature spec it is built for and the two family contracts
(ranking: ``forward(batch) -> RankingOutput``; retrieval: interests ``[B, K, D]`` and an item tower)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch
from torch import Tensor, nn

from recsys.contract import Batch, FeatureSpec

from .layers.features import ItemSideTable


class _ItemSideFields:
    """What both families share: the item side table (``self.item_side``) and loading it."""

    item_side: ItemSideTable

    def attach_side_tables(self, tables: Mapping[str, Tensor]) -> None:
        """Load the item side tables the model is built for (``BuiltDataset.side_table(name)``
        for every ``features.of("item", side_only=True)`` field), checked per field.

        Shapes: id ``[N]`` int, ids ``[N, A]`` int padded with 0 (A <= max_values), number
        ``[N]`` float (NaN = missing), dense ``[N, d]`` float (no NaN). Raises
        ``recsys.errors.ConfigError`` for a missing or unknown field, ``CheckpointError`` for
        a shape or dtype that does not fit, ``DataError`` for ids outside the vocabulary or a
        non-finite dense row, each naming the field (and the item row). The tables are
        persistent buffers: the weights file carries them, so a trained model rebuilds from
        model.json + weights without calling this again. A core-only spec takes ``{}``.
        """
        self.item_side.attach(tables)


@dataclass
class RankingOutput:
    """logit: [B] (pre-sigmoid click score); aux_losses: named scalar losses the paper adds
    (the task weights and sums them with the BCE)."""

    logit: Tensor
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)


class RankingModel(_ItemSideFields, nn.Module):
    """Base class of ranking models: ``forward(batch) -> RankingOutput``.

    ``self.item_side`` holds the item side fields of ``features`` (empty for a core-only
    spec), filled by :meth:`attach_side_tables`.
    """

    def __init__(self, features: FeatureSpec) -> None:
        super().__init__()
        self.features = features
        self.item_side = ItemSideTable(features)

    def forward(self, batch: Batch) -> RankingOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def regularization(self, batch: Batch) -> Tensor:
        """Extra penalty added to the loss (embedding L2, weight L2); zero by default."""
        return torch.zeros((), device=next(self.parameters()).device)

    def score_candidates(self, batch: Batch, candidates: Mapping[str, Tensor], max_rows: int = 16384) -> Tensor:
        """Logits of M candidates for each of B users: ``[B, M]``.

        ``batch``: B users in the padded form (history, profile, context; its ``target`` and
        ``label`` are ignored). ``candidates``: the target fields per user,
        ``{"item": [B, M], "category": [B, M], ...}`` (every key of ``batch.target``).
        Candidate ``(b, m)`` gets exactly the logit ``forward`` gives the row
        ``(user b, target = candidates[:, b, m])``: the default repeats each user row M
        times and runs ``forward`` on at most ``max_rows`` rows at a time (bounded memory).
        Models whose user side does not depend on the target (two-tower scores: HCN)
        override this to compute it once per user. The caller chooses train/eval mode and
        grad mode (the cascade and the scorer use eval mode under ``inference_mode``).
        """
        items = check_candidates(batch, candidates)
        users, per_user = items.shape
        if users == 0 or per_user == 0:
            return items.new_zeros(items.shape, dtype=torch.float32)
        step = max(1, max_rows // per_user)
        out = []
        for start in range(0, users, step):
            stop = min(users, start + step)
            rows = torch.arange(start, stop, device=items.device).repeat_interleave(per_user)
            part = batch.take(rows)
            part = part.replace(target={name: candidates[name][start:stop].reshape(-1) for name in batch.target},
                                label=part.label.new_zeros(rows.numel()), sample_index=None)
            out.append(self(part).logit.reshape(stop - start, per_user))
        return torch.cat(out)


def check_candidates(batch: Batch, candidates: Mapping[str, Tensor]) -> Tensor:
    """``candidates["item"]`` [B, M] after checking it fits ``batch`` and carries every target
    field (what every ``score_candidates`` needs); ValueError naming what is wrong."""
    items = candidates["item"]
    if items.dim() != 2 or items.shape[0] != batch.size:
        raise ValueError(f"candidates['item'] must be [B={batch.size}, M], got {tuple(items.shape)}")
    missing = sorted(set(batch.target) - set(candidates))
    if missing:
        raise ValueError(f"candidates lack the target fields {missing}")
    return items


@dataclass
class RetrievalOutput:
    """interests: [B, K, D] user interest vectors (K = 1 for single-vector models);
    aux_losses: named scalar losses the paper adds (weighted and summed by the task).

    Optional, for training only:

    * sequence: [B, L, D] one user vector per history position of a causal model (state j
      has seen history positions <= j only; SASRec). ``retrieval.positions: all`` trains
      every position j < length to predict the next behaviour (history j + 1, the target
      after the last one).
    * sample_weights: [B] non-negative per-sample weights without gradient (DESMIL's
      decorrelating weights): the task's loss becomes Σ_b w_b ℓ_b / Σ_b w_b.
    * diagnostics: named detached scalars the task logs as ``train/<name>`` (DESMIL's HSIC
      before and after reweighting, the weights' spread); never part of the loss.
    """

    interests: Tensor
    aux_losses: Dict[str, Tensor] = field(default_factory=dict)
    sequence: Optional[Tensor] = None
    sample_weights: Optional[Tensor] = None
    diagnostics: Dict[str, Tensor] = field(default_factory=dict)


class RetrievalModel(_ItemSideFields, nn.Module):
    """Base class of retrieval (candidate generation) models.

    ``user_interests(batch) -> RetrievalOutput`` with interests ``[B, K, D]`` computed from
    the history (and profile/context fields) only, never from the target; the item tower
    ``item_embeddings(items [N]) -> [N, D]`` embeds any item ids (the whole vocabulary for
    the FAISS index and full-ranking evaluation, side fields included when configured).
    A user's score for item i is ``max_k <interest_k, item_i>`` (inner product).

    The training objective (sampled softmax, in-batch negatives, logQ correction) lives in
    the retrieval task; ``select_interest`` is the label-aware selection MIND and ComiRec use
    in training (the interest closest to the target), overridable by models that differ.
    ``self.item_side`` holds the item side fields (filled by :meth:`attach_side_tables`),
    for the item tower and the history alike.
    """

    def __init__(self, features: FeatureSpec) -> None:
        super().__init__()
        self.features = features
        self.item_side = ItemSideTable(features)

    def user_interests(self, batch: Batch) -> RetrievalOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def item_embeddings(self, items: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def select_interest(self, interests: Tensor, target: Tensor) -> Tensor:
        """[B, K, D], target item vectors [B, D] → the interest with the largest inner
        product with the target, [B, D] (hard label-aware selection)."""
        scores = torch.einsum("bkd,bd->bk", interests, target)
        index = scores.argmax(dim=1)
        return interests[torch.arange(interests.shape[0], device=interests.device), index]

    def regularization(self, batch: Batch) -> Tensor:
        """Extra penalty added to the loss; zero by default."""
        return torch.zeros((), device=next(self.parameters()).device)
