"""CTR metrics (AUC, GAUC grouped by user, logloss, RelaImpr) and full-ranking retrieval
metrics (Recall, HitRate and NDCG at K).

GAUC is computed for all groups at once: one lexsort by (group, score), tie-averaged
ranks inside each group, and per-group rank sums with ``np.bincount`` — no Python loop
over users. It equals scikit-learn's ``roc_auc_score`` per group, ties included (tests
check this). The plain AUC is scikit-learn's.

Retrieval metrics take each user's top-``K_max`` item ids of a full ranking (every item
scored, never sampled negatives) and the user's ground-truth items, and are computed for
all users and every K at once from one ``[U, K_max]`` hit matrix:

* ``recall@K = |top-K ∩ truth| / |truth|`` (ComiRec's definition; equals HR@K when each
  user has one ground-truth item, as in leave-one-out);
* ``hr@K = 1`` when any ground-truth item is in the top K;
* ``ndcg@K = DCG@K / IDCG@K`` with binary gains, ``DCG@K = Σ_{j<K} hit_j / log2(j + 2)``
  (rank j is 0-based) and ``IDCG@K`` the DCG of ``min(|truth|, K)`` hits at the top.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass
class GroupAUC:
    gauc: float              # Σ_u w_u AUC_u / Σ_u w_u over users with both classes (NaN if none)
    groups_used: int         # users with both classes
    groups_excluded: int     # users whose labels are all one class (AUC undefined)
    samples_used: int


def _check(y_true: np.ndarray, y_score: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    y_true = np.asarray(y_true).reshape(-1)
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} differ in length")
    if not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(y_score).any():
        raise ValueError(f"{int(np.isnan(y_score).sum())} scores are NaN")
    return y_true.astype(np.int64), y_score


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ROC AUC (NaN when only one class is present)."""
    y_true, y_score = _check(y_true, y_score)
    if y_true.min(initial=1) == y_true.max(initial=0):
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


def group_auc(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> GroupAUC:
    """GAUC (DIN, eq. 1): per-user AUC weighted by the user's sample count."""
    y_true, y_score = _check(y_true, y_score)
    groups = np.asarray(groups).reshape(-1)
    if groups.shape != y_true.shape:
        raise ValueError(f"groups {groups.shape} and labels {y_true.shape} differ in length")
    if len(y_true) == 0:
        return GroupAUC(float("nan"), 0, 0, 0)
    _, gid = np.unique(groups, return_inverse=True)
    order = np.lexsort((y_score, gid))
    g, s, y = gid[order], y_score[order], y_true[order]
    n = len(g)
    # runs of equal (group, score) get the average of their positions
    new_run = np.ones(n, dtype=bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.append(run_start, n))
    group_start = np.zeros(gid.max() + 1, dtype=np.int64)
    first_of_group = np.ones(n, dtype=bool)
    first_of_group[1:] = g[1:] != g[:-1]
    group_start[g[first_of_group]] = np.flatnonzero(first_of_group)
    # 1-based rank within the group, averaged over ties
    avg_rank = (run_start + (run_len - 1) / 2.0)[run_id] - group_start[g] + 1
    n_groups = gid.max() + 1
    n_pos = np.bincount(g, weights=y, minlength=n_groups)
    n_all = np.bincount(g, minlength=n_groups).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(g, weights=avg_rank * y, minlength=n_groups)
    valid = (n_pos > 0) & (n_neg > 0)
    per_group = np.zeros(n_groups)
    per_group[valid] = (rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    weights = n_all * valid
    value = float((per_group * weights).sum() / weights.sum()) if weights.sum() > 0 else float("nan")
    return GroupAUC(value, int(valid.sum()), int((~valid).sum()), int(n_all[valid].sum()))


def logloss(y_true: np.ndarray, y_prob: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 − eps])."""
    y_true, y_prob = _check(y_true, y_prob)
    if len(y_true) == 0:
        return float("nan")
    p = np.clip(y_prob, eps, 1 - eps)
    return float(-(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)).mean())


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr (DIN, eq. 11) in percent: ((AUC_model − 0.5) / (AUC_base − 0.5) − 1) × 100."""
    if auc_base <= 0.5:   # a base no better than random: the ratio's sign flips below 0.5
        raise ValueError(f"RelaImpr is undefined for a base AUC of {auc_base} (<= 0.5)")
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def ctr_metrics(y_true: np.ndarray, y_prob: np.ndarray, users: Optional[np.ndarray] = None) -> dict:
    """AUC, GAUC (when users are given), logloss and counts in one dict."""
    out = {"auc": auc(y_true, y_prob), "logloss": logloss(y_true, y_prob), "samples": int(len(y_true)),
           "positives": int(np.asarray(y_true).sum())}
    if users is not None:
        grouped = group_auc(y_true, y_prob, users)
        out.update({"gauc": grouped.gauc, "users": int(len(np.unique(users))),
                    "gauc_users_used": grouped.groups_used, "gauc_users_excluded": grouped.groups_excluded})
    return out


def topk_hits(topk: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Which ranked items are relevant: topk [U, K] item ids, truth [U, T] ground-truth ids
    right-padded with 0 (0 is the padding id and never ranked) → hits [U, K] bool.

    An item listed twice in a user's truth counts once (a repeated purchase is one item to
    find)."""
    topk = np.asarray(topk)
    truth = np.asarray(truth)
    if topk.ndim != 2 or truth.ndim != 2 or len(topk) != len(truth):
        raise ValueError(f"topk {topk.shape} and truth {truth.shape} must be [U, K] and [U, T] with equal U")
    hits = np.zeros(topk.shape, dtype=bool)
    for t in range(truth.shape[1]):   # T columns, each a vectorised [U, K] comparison
        column = truth[:, t:t + 1]
        hits |= (topk == column) & (column != 0)
    return hits


def distinct_truth_counts(truth: np.ndarray) -> np.ndarray:
    """[U] number of distinct non-padding ids per row of a [U, T] 0-padded id matrix."""
    truth = np.sort(np.asarray(truth), axis=1)
    new = np.ones(truth.shape, dtype=bool)
    new[:, 1:] = truth[:, 1:] != truth[:, :-1]
    return (new & (truth != 0)).sum(axis=1)


def retrieval_sums(hits: np.ndarray, num_truth: np.ndarray, ks: Sequence[int]) -> Dict[str, float]:
    """Per-metric sums over users (``recall@K``, ``hr@K``, ``ndcg@K``) plus ``users``, so
    batches and ranks can be added up before dividing; see :func:`retrieval_metrics`.

    hits [U, K_max] bool (rank order), num_truth [U] (>= 1) distinct ground-truth items."""
    hits = np.asarray(hits, dtype=bool)
    num_truth = np.asarray(num_truth, dtype=np.float64)
    if len(hits) != len(num_truth):
        raise ValueError(f"hits {hits.shape} and num_truth {num_truth.shape} differ in length")
    if (num_truth < 1).any():
        raise ValueError("every user needs at least one ground-truth item")
    if ks and max(ks) > hits.shape[1]:
        raise ValueError(f"K = {max(ks)} exceeds the {hits.shape[1]} ranked items per user")
    discount = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)         # [K_max]
    dcg = np.cumsum(hits * discount, axis=1)                          # [U, K_max]
    found = np.cumsum(hits, axis=1)                                   # [U, K_max]
    ideal = np.cumsum(discount)                                       # IDCG of j + 1 hits
    out: Dict[str, float] = {"users": float(len(hits))}
    for k in ks:
        idcg = ideal[np.minimum(num_truth, k).astype(np.int64) - 1]
        out[f"recall@{k}"] = float((found[:, k - 1] / num_truth).sum()) if len(hits) else 0.0
        out[f"hr@{k}"] = float((found[:, k - 1] > 0).sum())
        out[f"ndcg@{k}"] = float((dcg[:, k - 1] / idcg).sum()) if len(hits) else 0.0
    return out


def retrieval_metrics(topk: np.ndarray, truth: np.ndarray, ks: Sequence[int] = (5, 10, 20, 50)) -> dict:
    """Recall@K, HR@K, NDCG@K (means over users) of full-ranking top-K lists.

    topk [U, K_max] ranked item ids (best first), truth [U, T] ground-truth ids padded
    with 0. Returns ``{"recall@5": .., "hr@5": .., "ndcg@5": .., ..., "users": U}``."""
    sums = retrieval_sums(topk_hits(topk, truth), distinct_truth_counts(truth), ks)
    return mean_of_sums(sums)


def mean_of_sums(sums: Dict[str, float]) -> dict:
    """Divide the per-user sums of :func:`retrieval_sums` by the user count (NaN if none)."""
    users = sums["users"]
    out = {key: (value / users if users else float("nan")) for key, value in sums.items() if key != "users"}
    out["users"] = int(users)
    return out


__all__ = ["GroupAUC", "auc", "ctr_metrics", "distinct_truth_counts", "group_auc", "logloss", "mean_of_sums",
           "rela_impr", "retrieval_metrics", "retrieval_sums", "topk_hits", "asdict"]
