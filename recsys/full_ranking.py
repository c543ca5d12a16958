"""Full-ranking evaluation of retrieval models: every item is scored, never sampled negatives.

For each evaluation sample (a user and a cut in the user's timeline) the model's interests
``[K, D]`` score all ``N`` items by ``max_k <interest_k, item>``; the padding and unknown ids
(0, 1) are never ranked, and with ``mask_history`` the items of the user's timeline before
the cut are removed too (S3-Rec / ICLRec rank against the items the user has not interacted
with), except the sample's ground-truth items, so a repeated item can still be found. The
top ``K_max`` ids are compared with the ground truth:

* ``loo`` (leave-one-out, S3-Rec/ICLRec): the one target item of the sample;
* ``users`` (ComiRec's user split): the rest of the timeline from the cut on.

:class:`SplitTruth` reads both from the built dataset's memory-mapped timelines (one
fancy-index gather per batch); :func:`rank_top_k` is the torch part shared by the
Lightning validation loop and ``recsys evaluate``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.errors import ConfigError, NonFiniteLossError

from .metrics import distinct_truth_counts, mean_of_sums, retrieval_sums, topk_hits

RETRIEVAL_PROTOCOLS = ("loo", "users")
NOT_RANKED = 2          # ids 0 (padding) and 1 (unknown) are never recommended


class SplitTruth:
    """Ground truth and already-seen items of the samples of one evaluation split."""

    def __init__(self, dataset: BuiltDataset, split: str) -> None:
        if dataset.protocol not in RETRIEVAL_PROTOCOLS:
            raise ConfigError(f"retrieval models train and evaluate on the {' or '.join(RETRIEVAL_PROTOCOLS)} "
                              f"protocols (positives only, full ranking); the dataset at {dataset.path} uses "
                              f"{dataset.protocol!r}")
        self.protocol = dataset.protocol
        columns = dataset.sample_columns(split)
        self.rows = np.asarray(columns["row"], dtype=np.int64)
        self.cuts = np.asarray(columns["cut"], dtype=np.int64)
        self.targets = np.asarray(columns["target_item"], dtype=np.int64)
        self.offsets = np.asarray(dataset.flat("offsets"), dtype=np.int64)
        self.items = dataset.flat("item")

    def __len__(self) -> int:
        return len(self.rows)

    def _ranges(self, index: np.ndarray) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
        start = self.offsets[self.rows[index]]
        return start, start + self.cuts[index], self.offsets[self.rows[index] + 1]

    def truth(self, index: np.ndarray) -> np.ndarray:
        """[B, T] ground-truth item ids of the samples ``index`` (within the split), 0-padded."""
        index = np.asarray(index, dtype=np.int64)
        if self.protocol == "loo":
            return self.targets[index][:, None]
        _, cut, end = self._ranges(index)
        return _padded(self.items, cut, end - cut)

    def seen(self, index: np.ndarray, truth: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
        """(row in batch [S], item [S]) of the items each sample's user had before the cut,
        minus the sample's ground-truth items: what ``mask_history`` removes."""
        start, cut, _ = self._ranges(np.asarray(index, dtype=np.int64))
        lengths = cut - start
        owner = np.repeat(np.arange(len(lengths)), lengths)
        first = np.cumsum(lengths) - lengths
        positions = np.arange(int(lengths.sum())) - np.repeat(first, lengths) + np.repeat(start, lengths)
        items = np.asarray(self.items[positions], dtype=np.int64)
        # (row, item) keys: one sorted membership test, memory O(S + B·T) rather than [S, T]
        width = int(max(items.max(initial=0), truth.max(initial=0))) + 1
        truth_rows = np.repeat(np.arange(len(truth)), truth.shape[1])
        truth_keys = (truth_rows * width + truth.reshape(-1))[truth.reshape(-1) != 0]
        keep = ~np.isin(owner * width + items, truth_keys)
        return owner[keep], items[keep]


def _padded(values: np.ndarray, start: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """[B, max(lengths)] slices ``values[start[b] : start[b] + lengths[b]]``, right-padded with 0."""
    width = max(int(lengths.max(initial=0)), 1)
    steps = np.arange(width)
    valid = steps < lengths[:, None]
    positions = np.minimum(start[:, None] + steps, max(len(values) - 1, 0))
    out = np.asarray(values[positions], dtype=np.int64)
    out[~valid] = 0
    return out


def item_matrix(model: torch.nn.Module, num_items: int, chunk: int, device: torch.device) -> Tensor:
    """The item tower over the whole vocabulary, [N, D] (row i = item id i), in chunks."""
    parts = [model.item_embeddings(torch.arange(s, min(s + chunk, num_items), device=device))
             for s in range(0, num_items, chunk)]
    return torch.cat(parts)


def rank_top_k(interests: Tensor, items: Tensor, k: int, seen: Optional[Tuple[Tensor, Tensor]] = None,
               chunk: int = 65536) -> Tensor:
    """Top-``k`` item ids of a full ranking, [B, k] (best first).

    interests [B, K, D], items [N, D] (the whole vocabulary); the score of item i is
    ``max_k <interests[b, k], items[i]>``; ids 0 and 1 and the (row, item) pairs of ``seen``
    are excluded. Items are scored ``chunk`` at a time and merged, so memory is [B, chunk]."""
    batch = interests.shape[0]
    best_scores = torch.full((batch, 0), float("-inf"), device=interests.device)
    best_ids = torch.zeros((batch, 0), dtype=torch.long, device=interests.device)
    for start in range(0, items.shape[0], chunk):
        block = items[start:start + chunk]
        scores = interests[:, 0] @ block.T                                        # [B, chunk]
        for interest in range(1, interests.shape[1]):                             # max over interests,
            scores = torch.maximum(scores, interests[:, interest] @ block.T)      # never [B, K, chunk]
        low = max(0, NOT_RANKED - start)
        if low:
            scores[:, :low] = float("-inf")
        if seen is not None:
            rows, ids = seen
            inside = (ids >= start) & (ids < start + block.shape[0])
            scores[rows[inside], ids[inside] - start] = float("-inf")
        take = min(k, scores.shape[1])
        top_scores, top = scores.topk(take, dim=1)
        merged_scores = torch.cat([best_scores, top_scores], dim=1)
        merged_ids = torch.cat([best_ids, top + start], dim=1)
        keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_ids = merged_scores.gather(1, keep), merged_ids.gather(1, keep)
    if best_ids.shape[1] < k:
        raise ConfigError(f"cannot rank the top {k} of only {items.shape[0]} items; lower retrieval.ks")
    return best_ids


class FullRankingEvaluator:
    """Accumulates Recall/HR/NDCG@K over the batches of one split (validation or test).

    ``start`` embeds the whole vocabulary once; ``add`` ranks one batch's users; ``sums``
    are per-metric sums (addable across DDP ranks) and ``result`` their means."""

    def __init__(self, truth: SplitTruth, ks: Sequence[int], mask_history: bool = True, chunk: int = 65536) -> None:
        self.truth, self.ks, self.mask_history, self.chunk = truth, tuple(sorted(ks)), mask_history, chunk
        self.items: Optional[Tensor] = None
        self.sums: Dict[str, float] = {}

    @torch.no_grad()
    def start(self, model: torch.nn.Module, num_items: int, device: torch.device) -> None:
        self.items = item_matrix(model, num_items, self.chunk, device)
        if not torch.isfinite(self.items).all():
            raise NonFiniteLossError("the item tower produced NaN or infinite item vectors")
        self.sums = {}

    @torch.no_grad()
    def add(self, interests: Tensor, sample_index: np.ndarray) -> None:
        """interests [B, K, D] of the split's samples ``sample_index`` [B]."""
        truth = self.truth.truth(sample_index)
        seen = None
        if self.mask_history:
            rows, ids = self.truth.seen(sample_index, truth)
            seen = (torch.from_numpy(rows).to(interests.device), torch.from_numpy(ids).to(interests.device))
        top = rank_top_k(interests, self.items, self.ks[-1], seen, self.chunk).cpu().numpy()
        batch = retrieval_sums(topk_hits(top, truth), distinct_truth_counts(truth), self.ks)
        for key, value in batch.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def result(self) -> dict:
        return mean_of_sums(self.sums) if self.sums else {"users": 0}
