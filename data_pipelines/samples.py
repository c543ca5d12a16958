"""Sample protocols: rows that point into timelines, never copies of histories.

A sample is ``(row, user, cut, target_item, target_category, label, split)``: the history
is the user's timeline before ``cut`` (the loader takes the last L of it), the target is
what is scored. Each protocol reproduces a published setup:

``din``   DIN (Zhou et al., KDD 2018), Amazon protocol of the official code: every prefix
          p_1..p_c (c >= 1) → the next item as a positive plus ``n_neg`` sampled
          negatives; each user's last step is the test pair. With ``validation`` (default),
          the second-to-last step is held out as the validation pair, so model selection
          never sees test (the official code selects on test; see docs/data.md).
``dare``  DARE (Feng et al., ICLR 2025), Taobao protocol of the official preprocessing:
          users with at least ``min_length`` (default L + 10) behaviours; test target = the
          last behaviour, validation = the second to last, training targets at T-2, T-7, ...
          (``n_train_targets`` of them, ``target_stride`` apart, 1-based T = length);
          ``n_neg`` negatives per positive drawn by item frequency.
``loo``   leave-one-out next-item prediction (S3-Rec, ICLRec): last item test, second to
          last validation, every earlier prefix a training positive (label 1, no negatives).
``users`` ComiRec's user split (Cen et al., KDD 2020): users split 80/10/10 by a hash of
          the user id; training users give every prefix as a positive; an evaluation user
          gives one row whose cut is at ``history_fraction`` of the timeline (the rest of
          the timeline is the ground truth). ``protocol.user_split_file`` fixes the split
          of the users it lists (data_pipelines.user_splits).

Negatives are seeded, uniform, popularity-weighted or drawn from the user's retrieval
candidates (:class:`CandidateNegativeSampler`), and never an item of the user's whole
timeline (not only the history before the cut).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from recsys.errors import DataError

from .config import ProtocolConfig
from .vocab import FIRST_ID

TRAIN, VALID, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "valid": VALID, "test": TEST}


def _expand(starts: np.ndarray, counts: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """For row r with counts[r] entries: (owner row [sum], position 0..counts[r]-1 [sum])."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    position = np.arange(int(counts.sum())) - np.repeat(first, counts)
    return owner, position + np.repeat(starts, counts)


def protocol_cuts(lengths: np.ndarray, user_ids: np.ndarray, cfg: ProtocolConfig, seed: int,
                  fixed_split: Optional[np.ndarray] = None):
    """Positive targets of one partition: (row [S], cut [S], split [S]) with 1 <= cut < length."""
    n = lengths.astype(np.int64)
    if cfg.name in ("din", "loo"):
        counts = np.maximum(n - 1, 0)
        row, cut = _expand(np.ones(len(n), np.int64), counts)
        split = np.full(len(cut), TRAIN, np.int8)
        split[cut == n[row] - 1] = TEST
        if cfg.validation:
            split[(cut == n[row] - 2)] = VALID
        return row, cut, split
    if cfg.name == "dare":
        min_length = cfg.min_length if cfg.min_length is not None else cfg.max_length + 10
        eligible = n >= max(min_length, 3)
        k = np.arange(cfg.n_train_targets)
        rows = np.flatnonzero(eligible)
        train_cut = n[rows][:, None] - 3 - cfg.target_stride * k[None, :]        # 1-based T-2, T-7, ...
        train_ok = train_cut >= 1
        row = np.concatenate([np.repeat(rows, train_ok.sum(1)), rows, rows])
        cut = np.concatenate([train_cut[train_ok], n[rows] - 2, n[rows] - 1])
        split = np.concatenate([np.full(int(train_ok.sum()), TRAIN, np.int8),
                                np.full(len(rows), VALID, np.int8), np.full(len(rows), TEST, np.int8)])
        return row, cut, split
    if cfg.name == "users":
        share = _user_uniform(user_ids, seed)
        train_share, valid_share = cfg.user_split[0], cfg.user_split[1]
        user_split = np.where(share < train_share, TRAIN, np.where(share < train_share + valid_share, VALID, TEST))
        if fixed_split is not None:   # protocol.user_split_file: its users' splits, the hash for the rest
            listed = fixed_split[user_ids]
            user_split = np.where(listed >= 0, listed, user_split)
        train_rows = np.flatnonzero((user_split == TRAIN) & (n >= 2))
        row_t, cut_t = _expand(np.ones(len(train_rows), np.int64), n[train_rows] - 1)
        row_t = train_rows[row_t]
        eval_rows = np.flatnonzero((user_split != TRAIN) & (n >= 2))
        cut_e = np.clip(np.floor(n[eval_rows] * cfg.history_fraction).astype(np.int64), 1, n[eval_rows] - 1)
        row = np.concatenate([row_t, eval_rows])
        cut = np.concatenate([cut_t, cut_e])
        split = np.concatenate([np.full(len(row_t), TRAIN, np.int8), user_split[eval_rows].astype(np.int8)])
        return row, cut, split
    raise ValueError(f"unknown protocol {cfg.name!r}")


def _user_uniform(user_ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per user id, stable across partitionings."""
    with np.errstate(over="ignore"):   # wrap-around is the point of the mix
        offset = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
    x = user_ids.astype(np.uint64) + offset
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class NegativeSampler:
    """Draws items never seen in a user's timeline, uniformly or by item frequency."""

    def __init__(self, item_counts: np.ndarray, kind: str) -> None:
        self.num_items = len(item_counts)
        if self.num_items <= FIRST_ID:
            raise ValueError("cannot sample negatives from an empty item vocabulary")
        if kind == "popularity":
            weights = item_counts[FIRST_ID:].astype(np.float64)
            self.cdf = np.cumsum(weights) / weights.sum()
        else:
            self.cdf = None

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(FIRST_ID, self.num_items, n)
        return FIRST_ID + np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), len(self.cdf) - 1)

    def seen_keys(self, offsets: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Sorted ``row * num_items + item`` keys of every event [N] (duplicates kept: a plain
        sort is several times faster than ``np.unique`` and ``searchsorted`` does not mind)."""
        lengths = np.diff(offsets)
        user_of_event = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        keys = user_of_event * self.num_items + items
        # the keys are already in row order, unsorted only within each row: the stable sort
        # (timsort) merges such runs ~2.5x faster than the default introsort
        keys.sort(kind="stable")
        return keys

    def negatives(self, rng: np.random.Generator, owner_rows: np.ndarray, offsets: np.ndarray, items: np.ndarray,
                  user_ids: np.ndarray, n_neg: int) -> "tuple[list, dict]":
        """``n_neg`` arrays of one negative per entry of ``owner_rows`` [S] (rows of this
        partition's timelines, whose internal user ids are ``user_ids`` [U]), and the counts
        of how they were drawn (none for this sampler)."""
        seen = self.seen_keys(offsets, items)
        return [self.sample(rng, owner_rows, offsets, items, seen=seen) for _ in range(n_neg)], {}

    def sample(self, rng: np.random.Generator, owner_rows: np.ndarray, offsets: np.ndarray,
               items: np.ndarray, max_rounds: int = 200, seen: Optional[np.ndarray] = None) -> np.ndarray:
        """One negative per entry of ``owner_rows`` (rows of this partition's timelines);
        ``seen`` = :meth:`seen_keys` of the partition, computed here when not given."""
        if seen is None:
            seen = self.seen_keys(offsets, items)
        out = self.draw(rng, len(owner_rows))
        todo = np.arange(len(owner_rows))
        for _ in range(max_rounds):
            keys = owner_rows[todo].astype(np.int64) * self.num_items + out[todo]
            pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
            clash = seen[pos] == keys
            todo = todo[clash]
            if not len(todo):
                return out
            out[todo] = self.draw(rng, len(todo))
        rows = np.unique(owner_rows[todo])
        most = int(np.diff(offsets)[rows].max()) if len(rows) else 0
        raise DataError(f"cannot draw negatives: {len(rows)} user(s) have seen (almost) every item (up to {most} "
                        f"behaviours over a catalogue of {self.num_items - FIRST_ID} items; {len(todo)} samples "
                        "left without a negative after {max_rounds} draws); use a larger catalogue, n_neg: 0, "
                        "or a protocol without sampled negatives (loo, users)".replace("{max_rounds}", str(max_rounds)))


class CandidateNegativeSampler(NegativeSampler):
    """Negatives drawn uniformly from each user's pool of retrieval candidates
    (data_pipelines.candidate_pools), never an item of the user's whole timeline.

    pool_offsets [num_users + 1], pool_items [P]: the pool of internal user id u is
    ``pool_items[pool_offsets[u]:pool_offsets[u + 1]]``. The timeline's items are removed
    from each pool with the same seen keys the rejection loop uses, and the draw is uniform
    over what is left: the distribution of rejection sampling from the pool, with no rounds
    to run out of. A user without a pool, or whose pool lies inside the timeline, gets a
    uniform negative (counted).
    """

    COUNTS = ("candidate_negatives", "uniform_fallback_negatives", "users_without_candidates",
              "users_with_candidates_all_in_timeline")

    def __init__(self, item_counts: np.ndarray, pool_offsets: np.ndarray, pool_items: np.ndarray) -> None:
        super().__init__(item_counts, "uniform")
        self.pool_offsets, self.pool_items = pool_offsets, pool_items

    def negatives(self, rng: np.random.Generator, owner_rows: np.ndarray, offsets: np.ndarray, items: np.ndarray,
                  user_ids: np.ndarray, n_neg: int) -> "tuple[list, dict]":
        seen = self.seen_keys(offsets, items)
        starts, counts = self.pool_offsets[user_ids], np.diff(self.pool_offsets)[user_ids]
        owner, position = _expand(starts, counts)                      # pool entries of this partition [Q]
        candidates = self.pool_items[position]
        keys = owner * self.num_items + candidates
        at = np.minimum(np.searchsorted(seen, keys), max(len(seen) - 1, 0))
        unseen = seen[at] != keys if len(seen) else np.ones(len(keys), bool)
        owner, candidates = owner[unseen], candidates[unseen]          # still grouped by row
        left = np.bincount(owner, minlength=len(user_ids))             # usable pool size per row [U]
        first = np.cumsum(left) - left
        usable = left[owner_rows] > 0
        drawn = []
        for _ in range(n_neg):
            out = np.empty(len(owner_rows), np.int64)
            rows = owner_rows[usable]
            out[usable] = candidates[first[rows] + rng.integers(0, left[rows])]
            if not usable.all():
                out[~usable] = self.sample(rng, owner_rows[~usable], offsets, items, seen=seen)
            drawn.append(out)
        fallback_rows = np.unique(owner_rows[~usable])
        no_pool = counts[fallback_rows] == 0
        stats = {"candidate_negatives": n_neg * int(usable.sum()),
                 "uniform_fallback_negatives": n_neg * int((~usable).sum()),
                 "users_without_candidates": int(no_pool.sum()),
                 "users_with_candidates_all_in_timeline": int((~no_pool).sum())}
        return drawn, stats


def build_samples(offsets: np.ndarray, items: np.ndarray, user_ids: np.ndarray, item_category: np.ndarray,
                  sampler: NegativeSampler, cfg: ProtocolConfig, seed: int, partition: int,
                  labels: Optional[np.ndarray] = None, item_categories: Optional[np.ndarray] = None,
                  counts: Optional[dict] = None, fixed_split: Optional[np.ndarray] = None) -> pa.Table:
    """Samples of one timeline partition (``row`` is the partition-local timeline row).

    offsets [U + 1], items [N] (this partition's flat timelines), user_ids [U],
    item_category [num_items] (category of any item id, for negatives), labels [N]
    (explicit per-event labels, e.g. rating >= 4: then every cut is one sample with its
    own label and no negatives are drawn), item_categories [N] (each event's category).
    ``counts``: when given, the sampler's counts of how the negatives were drawn are added
    to it (see :meth:`NegativeSampler.negatives`). ``fixed_split`` [num_users] int8: the users
    protocol's split per internal user id, -1 = by the hash (``protocol.user_split_file``).
    """
    lengths = np.diff(offsets)
    row, cut, split = protocol_cuts(lengths, user_ids, cfg, seed, fixed_split)
    event = offsets[row] + cut
    positives = items[event]
    pos_category = item_categories[event] if item_categories is not None else item_category[positives]
    if labels is not None:
        return _table(row, user_ids, cut, positives, pos_category, labels[event].astype(np.int8), split)
    n_neg = cfg.n_neg if cfg.name in ("din", "dare") else 0
    rng = np.random.default_rng([seed, 17, partition])
    negatives, drawn = sampler.negatives(rng, row, offsets, items, user_ids, n_neg) if n_neg else ([], {})
    if counts is not None:
        for name, n in drawn.items():
            counts[name] = counts.get(name, 0) + n
    # positive then its negatives, interleaved per cut so a (pos, neg) pair stays together
    group = 1 + n_neg
    targets = np.stack([positives] + negatives, axis=1).reshape(-1)
    categories = np.stack([pos_category] + [item_category[n] for n in negatives], axis=1).reshape(-1)
    labels_out = np.tile(np.array([1] + [0] * n_neg, np.int8), len(row))
    return _table(np.repeat(row, group), user_ids, np.repeat(cut, group), targets, categories, labels_out,
                  np.repeat(split, group))


def _table(row, user_ids, cut, targets, categories, labels, split) -> pa.Table:
    # copy=False: most columns already have their dtype, and a copy per column costs ~0.1 s per 10M rows
    return pa.table({
        "row": row.astype(np.int64, copy=False),
        "user": user_ids[row].astype(np.int64, copy=False),
        "cut": cut.astype(np.int32, copy=False),
        "target_item": targets.astype(np.int32, copy=False),
        "target_category": categories.astype(np.int32, copy=False),
        "label": labels.astype(np.int8, copy=False),
        "split": split.astype(np.int8, copy=False),
    })
