"""Multi-interest search: K interests × top-n each, merged into one top-N per user.

For a user with interests ``[K, D]`` the candidate score of item i is
``f(u, i) = max_k <interest_k, item_i>`` (what the models train for and what full-ranking
evaluation ranks by). :func:`multi_interest_search`

1. searches each interest for its top ``per_interest`` items (default N: ComiRec's
   evaluation, ``THUDM/ComiRec`` ``src/train.py`` ``evaluate_full``), leaving out the padding
   and unknown ids (never indexed) and, when given, the user's already-seen items: an
   interest whose list lost items to that filter is searched again, deeper, so each interest
   still contributes its best ``per_interest`` unseen items;
2. merges the K lists by score, keeps each item once (at its best interest's score), and
   keeps the first N (λ = 0), or
3. with ``diversity`` λ > 0, picks N greedily by ``f(u, i) − λ · (items already picked in
   i's category)`` (ComiRec §3.4, the official code's ``coef`` branch: at each step the
   item with the largest penalised score, ties to the higher raw score).

With an exact index and ``per_interest ≥ N`` the merged top-N equals the top-N of a full
ranking by ``f`` (an item in the top-N by ``f`` is in the top-N of its best interest), the
seen filter included; a test checks it against :func:`recsys.full_ranking.rank_top_k`.

Everything is vectorised over the users of a batch (numpy; no Python loop per user); the
λ-greedy loop runs N steps, each over all users at once. This module imports numpy and
the index module only (no Lightning, pandas or pyarrow): serving uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from recsys.errors import ConfigError, NonFiniteLossError

from .index import FIRST_ITEM, ItemIndex

Seen = Tuple[np.ndarray, np.ndarray]     # (row in batch [S], item id [S]) pairs to leave out


@dataclass
class Candidates:
    """items [B, N] int64 best first, 0 where a user has fewer than N; scores [B, N]
    float32 (the raw ``f(u, i)``, −inf where no item)."""

    items: np.ndarray
    scores: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """[B] candidates per user."""
        return (self.items >= FIRST_ITEM).sum(axis=1)


def check_finite_interests(interests: np.ndarray, users: Optional[Sequence] = None) -> None:
    """NonFiniteLossError naming the first users whose interest vectors are NaN/infinite."""
    bad = np.flatnonzero(~np.isfinite(interests.reshape(len(interests), -1)).all(axis=1))
    if len(bad):
        names = [users[i] for i in bad[:5]] if users is not None else bad[:5].tolist()
        raise NonFiniteLossError(f"the model gives NaN or infinite interest vectors for {len(bad)} users "
                                 f"({names}{' ...' if len(bad) > 5 else ''}); no candidates are retrieved for them")


def _seen_mask(ids: np.ndarray, seen: Optional[Seen]) -> np.ndarray:
    """[B, ...] bool: (row, ids[row, ...]) is a seen pair. One sorted membership test."""
    if seen is None or len(seen[0]) == 0:
        return np.zeros(ids.shape, dtype=bool)
    rows, items = (np.asarray(a, dtype=np.int64) for a in seen)
    width = int(max(ids.max(initial=0), items.max(initial=0))) + 1
    owner = np.arange(ids.shape[0]).reshape((-1,) + (1,) * (ids.ndim - 1))
    return np.isin(owner * width + ids, rows * width + items)


def _keep_per_interest(ids: np.ndarray, seen: Optional[Seen], per_interest: int) -> "tuple[np.ndarray, np.ndarray]":
    """ids [B, K, n] (best first) → (kept [B, K, n]: the first ``per_interest`` usable
    entries of each list, usable [B, K] counts of usable entries)."""
    usable = (ids >= FIRST_ITEM) & ~_seen_mask(ids, seen)
    rank = np.cumsum(usable, axis=-1)
    return usable & (rank <= per_interest), usable.sum(axis=-1)


def merge_interest_lists(ids: np.ndarray, scores: np.ndarray, keep: np.ndarray, top_n: int, diversity: float = 0.0,
                         item_category: Optional[np.ndarray] = None) -> Candidates:
    """Per-interest lists ``ids``/``scores`` [B, K, n] with ``keep`` [B, K, n] → top-N.

    Duplicates keep their best score; λ-greedy category diversity when ``diversity`` > 0
    (``item_category`` [num_items] by item id)."""
    batch = ids.shape[0]
    ids, scores, keep = ids.reshape(batch, -1), scores.reshape(batch, -1), keep.reshape(batch, -1)
    masked = np.where(keep, scores, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")                          # by score, best first
    ids, masked, keep = (np.take_along_axis(a, order, axis=1) for a in (ids, masked, keep))
    # a repeat of an item (same row) after its best-scored copy: stable sort by id keeps score order
    by_id = np.argsort(np.where(keep, ids, -1), axis=1, kind="stable")
    sorted_ids = np.take_along_axis(np.where(keep, ids, -1), by_id, axis=1)
    repeat_sorted = np.zeros_like(keep)
    repeat_sorted[:, 1:] = (sorted_ids[:, 1:] == sorted_ids[:, :-1]) & (sorted_ids[:, 1:] >= 0)
    repeat = np.zeros_like(keep)
    np.put_along_axis(repeat, by_id, repeat_sorted, axis=1)
    keep &= ~repeat
    if diversity > 0:
        if item_category is None:
            raise ConfigError("diversity > 0 needs the item categories (item id → category id)")
        return _greedy_diverse(ids, np.where(keep, masked, -np.inf), keep, top_n, float(diversity),
                               np.asarray(item_category))
    compact = np.argsort(~keep, axis=1, kind="stable")[:, :top_n]                # kept first, in score order
    items = np.take_along_axis(np.where(keep, ids, 0), compact, axis=1)
    out_scores = np.take_along_axis(np.where(keep, masked, -np.inf), compact, axis=1)
    return _pad(items, out_scores, top_n)


def _greedy_diverse(ids: np.ndarray, scores: np.ndarray, available: np.ndarray, top_n: int, coef: float,
                    item_category: np.ndarray) -> Candidates:
    """ComiRec's λ-greedy aggregation over a de-duplicated pool [B, P] sorted by score:
    N steps, each picking (for every user at once) argmax of score − λ·count[category]."""
    batch = ids.shape[0]
    categories = item_category[np.where(available, ids, 0)]                     # [B, P]
    picked_in_category = np.zeros(ids.shape, dtype=np.float64)                  # count of the pick's category
    available = available.copy()
    rows = np.arange(batch)
    items = np.zeros((batch, top_n), dtype=np.int64)
    out_scores = np.full((batch, top_n), -np.inf, dtype=np.float32)
    for step in range(top_n):
        penalised = np.where(available, scores - coef * picked_in_category, -np.inf)
        best = penalised.argmax(axis=1)           # first maximum: ties go to the higher raw score
        ok = available[rows, best]
        items[:, step] = np.where(ok, ids[rows, best], 0)
        out_scores[:, step] = np.where(ok, scores[rows, best], -np.inf)
        available[rows[ok], best[ok]] = False
        same = categories == categories[rows, best][:, None]
        picked_in_category += same & ok[:, None]
    return Candidates(items, out_scores)


def _pad(items: np.ndarray, scores: np.ndarray, top_n: int) -> Candidates:
    if items.shape[1] < top_n:
        fill = top_n - items.shape[1]
        items = np.pad(items, ((0, 0), (0, fill)))
        scores = np.pad(scores, ((0, 0), (0, fill)), constant_values=-np.inf)
    return Candidates(items.astype(np.int64), scores.astype(np.float32))


def multi_interest_search(index: ItemIndex, interests: np.ndarray, top_n: int, per_interest: Optional[int] = None,
                          seen: Optional[Seen] = None, diversity: float = 0.0,
                          item_category: Optional[np.ndarray] = None) -> Candidates:
    """interests [B, K, D] → :class:`Candidates` [B, top_n] (see the module docstring).

    ``seen``: (row, item) pairs left out. ``per_interest``: list length per interest
    (default ``top_n``); ``K · per_interest < top_n`` cannot fill the top-N and is a
    ConfigError. Users get fewer than ``top_n`` only when fewer unseen items exist."""
    interests = np.ascontiguousarray(interests, dtype=np.float32)
    if interests.ndim != 3:
        raise ConfigError(f"interests must be [B, K, D], got shape {interests.shape}")
    batch, k, dim = interests.shape
    per_interest = top_n if per_interest is None else int(per_interest)
    if top_n < 1 or per_interest < 1:
        raise ConfigError(f"top_n ({top_n}) and per_interest ({per_interest}) must be at least 1")
    if k * per_interest < top_n:
        raise ConfigError(f"{k} interests × {per_interest} items each = {k * per_interest} candidates cannot fill "
                          f"the top {top_n}; raise per_interest to at least {-(-top_n // k)}")
    check_finite_interests(interests)
    if batch == 0:
        return _pad(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), top_n)
    per_interest = min(per_interest, index.size)
    seen_rows = np.asarray(seen[0], dtype=np.int64) if seen is not None else np.zeros(0, np.int64)
    seen_items = np.asarray(seen[1], dtype=np.int64) if seen is not None else np.zeros(0, np.int64)
    seen_count = np.bincount(seen_rows, minlength=batch)
    ids = np.zeros((batch, k, per_interest), dtype=np.int64)             # each interest's best usable items
    scores = np.full((batch, k, per_interest), -np.inf, dtype=np.float32)
    pending = np.arange(batch)
    # most users lose few items to the seen filter: search a little deeper than per_interest,
    # then again, deep enough, only for the lists that came up short
    depth = min(index.size, per_interest + min(int(seen_count.max(initial=0)), per_interest))
    while len(pending):
        found_scores, found_ids = index.search(interests[pending].reshape(-1, dim), depth)
        found_scores, found_ids = found_scores.reshape(-1, k, depth), found_ids.reshape(-1, k, depth)
        local = np.full(batch, -1, dtype=np.int64)
        local[pending] = np.arange(len(pending))
        mine = local[seen_rows] >= 0
        keep, usable = _keep_per_interest(found_ids, (local[seen_rows[mine]], seen_items[mine]), per_interest)
        first = np.argsort(~keep, axis=-1, kind="stable")[..., :per_interest]   # kept entries, best first
        taken = np.take_along_axis(keep, first, axis=-1)
        ids[pending] = np.where(taken, np.take_along_axis(found_ids, first, axis=-1), 0)
        scores[pending] = np.where(taken, np.take_along_axis(found_scores, first, axis=-1), -np.inf)
        if depth >= index.size:
            break
        # a list is short when it lost items to the filter (or an approximate index returned
        # fewer) while the index still had more to give (its last slot was filled)
        short = ((usable < per_interest) & (found_ids[:, :, -1] >= FIRST_ITEM)).any(axis=1)
        pending = pending[short]
        if len(pending):
            depth = min(index.size, max(2 * depth, per_interest + int(seen_count[pending].max())))
    return merge_interest_lists(ids, scores, ids >= FIRST_ITEM, top_n, diversity, item_category)
