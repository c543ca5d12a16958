"""Non-learned retrieval baselines, ranked over every item exactly as the models are.

A retrieval model's quality only means something beside what a count already gives, so every
retrieval table carries two baselines computed from the same built dataset (``loo`` or
``users`` protocol) and scored by the same full-ranking code (:class:`SplitTruth` for the
ground truth and the already-seen mask, :func:`recsys.metrics.retrieval_sums`):

* ``popularity``: score(u, i) = how often i is a training target. Every user gets the same
  list (minus the user's own seen items with ``mask_history``).
* ``cooccurrence`` (item-to-item, ours; the "item co-occurrence" baseline users expect from
  RecBole's ItemKNN / a first-order Markov chain): ``C[a, b]`` counts the training samples
  whose target is b and whose last ``window`` history items include a; a user's score is
  ``Σ_j decay^(j-1) C[h_-j, i]`` over the last ``window`` behaviours ``h_-1, h_-2, ...``
  (most recent first), with popularity × 1e-9 added so that ties (most items score 0) fall
  to the popular items rather than to the item id.

Only training samples feed the counts (for ``loo`` every prefix but the last two items, for
``users`` the training users' prefixes), so no validation or test target leaks in. Counts
are a SciPy sparse matrix (N × N would not fit dense for large vocabularies); scoring a batch
is one sparse gather of ``window`` rows per user and a dense ``[B, N]`` sum, items ``0`` and
``1`` never ranked. Hand-written because no library ranks over a built dataset's split with
our seen mask; the metric code is the models'.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
from scipy import sparse

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.errors import ConfigError
from recsys.full_ranking import NOT_RANKED, SplitTruth
from recsys.metrics import distinct_truth_counts, mean_of_sums, retrieval_sums, topk_hits

BASELINES = ("popularity", "cooccurrence")


def _last_items(truth: SplitTruth, index: np.ndarray, window: int) -> np.ndarray:
    """[B, window] the last ``window`` history items before each sample's cut, most recent
    first, 0 where the history is shorter."""
    start = truth.offsets[truth.rows[index]]
    cut = truth.cuts[index]
    steps = np.arange(1, window + 1)
    positions = start[:, None] + cut[:, None] - steps                       # [B, W]
    valid = positions >= start[:, None]
    items = np.asarray(truth.items[np.clip(positions, 0, max(len(truth.items) - 1, 0))], dtype=np.int64)
    return np.where(valid, items, 0)


def training_counts(dataset: BuiltDataset, window: int = 3) -> "tuple[np.ndarray, sparse.csr_matrix]":
    """(popularity [N] training-target counts, co-occurrence C [N, N] csr) from the train split."""
    if window < 1:
        raise ConfigError(f"co-occurrence window must be >= 1, got {window}")
    num_items = dataset.vocabulary("item").size
    train = SplitTruth(dataset, "train")
    targets = train.targets
    popularity = np.bincount(targets, minlength=num_items).astype(np.float64)
    everyone = np.arange(len(train))
    previous = _last_items(train, everyone, window)                         # [S, W]
    rows = previous.reshape(-1)
    cols = np.repeat(targets, window)
    keep = rows >= NOT_RANKED
    counts = sparse.coo_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(num_items, num_items))
    return popularity, counts.tocsr()


def baseline_scores(name: str, history: np.ndarray, popularity: np.ndarray, counts: sparse.csr_matrix,
                    decay: float = 0.5) -> np.ndarray:
    """[B, N] scores of ``name`` for users whose last behaviours are ``history`` [B, W]
    (most recent first, 0-padded)."""
    batch, num_items = len(history), len(popularity)
    tie_break = popularity * 1e-9
    if name == "popularity":
        return np.broadcast_to(popularity, (batch, num_items)).copy()
    if name != "cooccurrence":
        raise ConfigError(f"unknown baseline {name!r}; known: {BASELINES}")
    scores = np.tile(tie_break, (batch, 1))
    for j in range(history.shape[1]):
        items = history[:, j]
        present = items >= NOT_RANKED
        if present.any():
            scores[present] += (decay ** j) * counts[items[present]].toarray()
    return scores


def evaluate_baselines(dataset: BuiltDataset, split: str = "test", ks: Sequence[int] = (5, 10, 20, 50),
                       mask_history: bool = True, window: int = 3, decay: float = 0.5,
                       batch_size: int = 2048) -> Dict[str, dict]:
    """{baseline: Recall/HR/NDCG@K means over the split's samples} (the models' metric keys)."""
    ks = tuple(sorted(ks))
    popularity, counts = training_counts(dataset, window)
    truth_split = SplitTruth(dataset, split)
    if popularity.shape[0] - NOT_RANKED < ks[-1]:
        raise ConfigError(f"cannot rank the top {ks[-1]} of only {popularity.shape[0] - NOT_RANKED} items")
    sums: Dict[str, Dict[str, float]] = {name: {} for name in BASELINES}
    for start in range(0, len(truth_split), batch_size):
        index = np.arange(start, min(start + batch_size, len(truth_split)))
        truth = truth_split.truth(index)
        history = _last_items(truth_split, index, window)
        seen = truth_split.seen(index, truth) if mask_history else None
        for name in BASELINES:
            scores = baseline_scores(name, history, popularity, counts, decay)
            scores[:, :NOT_RANKED] = -np.inf
            if seen is not None:
                scores[seen[0], seen[1]] = -np.inf
            top = np.argpartition(-scores, ks[-1] - 1, axis=1)[:, :ks[-1]]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            top = np.take_along_axis(top, order, axis=1)
            batch = retrieval_sums(topk_hits(top, truth), distinct_truth_counts(truth), ks)
            for key, value in batch.items():
                sums[name][key] = sums[name].get(key, 0.0) + value
    return {name: mean_of_sums(values) for name, values in sums.items()}
