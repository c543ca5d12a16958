"""Metrics against scikit-learn, ties included."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, roc_auc_score

from recsys.metrics import auc, ctr_metrics, group_auc, logloss, rela_impr


def sklearn_gauc(y, s, g):
    total, weight, excluded = 0.0, 0, 0
    for user in np.unique(g):
        m = g == user
        if len(np.unique(y[m])) < 2:
            excluded += 1
            continue
        total += m.sum() * roc_auc_score(y[m], s[m])
        weight += m.sum()
    return (total / weight if weight else float("nan")), excluded


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1), st.integers(0, 4)), min_size=1, max_size=120))
def test_gauc_equals_sklearn_per_group_with_ties(rows):
    g = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows])
    s = np.array([r[2] for r in rows], dtype=float) / 4.0      # few distinct scores → many ties
    ours = group_auc(y, s, g)
    expected, excluded = sklearn_gauc(y, s, g)
    assert ours.groups_excluded == excluded
    if np.isnan(expected):
        assert np.isnan(ours.gauc)
    else:
        assert ours.gauc == pytest.approx(expected, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.01, 0.99)), min_size=2, max_size=200))
def test_auc_and_logloss_match_sklearn(rows):
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    if len(np.unique(y)) == 2:
        assert auc(y, p) == pytest.approx(roc_auc_score(y, p))
    else:
        assert np.isnan(auc(y, p))
    assert logloss(y, p) == pytest.approx(log_loss(y, p, labels=[0, 1]), rel=1e-9)


def test_hand_computed_gauc_and_relaimpr():
    # user a: pos 0.9 > neg 0.1 → 1.0 (2 samples); user b: pos 0.2 < negs 0.3, 0.5 → 0.0 (3 samples)
    y = np.array([1, 0, 1, 0, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.5])
    g = np.array(["a", "a", "b", "b", "b"])
    assert group_auc(y, s, g).gauc == pytest.approx(2 / 5)
    assert rela_impr(0.8818, 0.8624) == pytest.approx(5.35, abs=0.01)    # DIN Table 3 (Amazon)
    with pytest.raises(ValueError):
        rela_impr(0.7, 0.5)
    metrics = ctr_metrics(y, s, g)
    assert metrics["users"] == 2 and metrics["gauc_users_excluded"] == 0


def test_bad_metric_inputs_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        auc(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="0 or 1"):
        auc(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="differ in length"):
        group_auc(np.array([0, 1]), np.array([0.1, 0.2]), np.array([1]))


# ---------------------------------------------------------------- retrieval (full ranking)
from recsys.metrics import retrieval_metrics  # noqa: E402


def test_retrieval_metrics_by_hand():
    """Three users, K_max = 5, checked against numbers worked out on paper."""
    topk = np.array([[7, 3, 9, 4, 5],      # truth {3}: hit at rank 1 (0-based)
                     [2, 6, 8, 11, 12],    # truth {8, 12, 40}: hits at ranks 2 and 4; 40 never ranked
                     [5, 4, 3, 2, 10]])    # truth {99}: no hit
    truth = np.array([[3, 0, 0],
                      [8, 12, 40],
                      [99, 0, 0]])
    m = retrieval_metrics(topk, truth, ks=(1, 2, 5))
    assert m["users"] == 3
    # recall@1: nobody has a hit at rank 0
    assert m["recall@1"] == 0.0 and m["hr@1"] == 0.0 and m["ndcg@1"] == 0.0
    # @2: user 0 finds 1 of 1 → recall 1, user 1 finds 0 of 3
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(1 / 3)
    # user 0: DCG = 1/log2(3), IDCG@2 with one truth item = 1 → 0.6309
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / 3)
    # @5: user 0 recall 1, user 1 recall 2/3, user 2 recall 0
    assert m["recall@5"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["hr@5"] == pytest.approx(2 / 3)
    user1_dcg = 1 / np.log2(4) + 1 / np.log2(6)             # ranks 2 and 4
    user1_idcg = 1 + 1 / np.log2(3) + 1 / np.log2(4)        # three truth items at ranks 0, 1, 2
    assert m["ndcg@5"] == pytest.approx((1 / np.log2(3) + user1_dcg / user1_idcg) / 3)


def test_repeated_truth_counts_once_and_padding_never_hits():
    topk = np.array([[4, 0, 5]])   # a 0 in the ranking (should not happen) must not match padding
    truth = np.array([[4, 4, 0, 0]])
    m = retrieval_metrics(topk, truth, ks=(3,))
    assert m["recall@3"] == 1.0 and m["ndcg@3"] == 1.0


def test_retrieval_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="exceeds"):
        retrieval_metrics(np.array([[1, 2]]), np.array([[1]]), ks=(5,))
    with pytest.raises(ValueError, match="at least one ground-truth"):
        retrieval_metrics(np.array([[1, 2]]), np.array([[0]]), ks=(1,))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_retrieval_metrics_equal_a_per_user_loop(data):
    """The vectorised metrics equal the textbook per-user definitions."""
    users = data.draw(st.integers(1, 8))
    n_items, k_max = 30, 10
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    topk = np.stack([rng.permutation(np.arange(2, n_items))[:k_max] for _ in range(users)])
    sizes = rng.integers(1, 6, users)
    truth = np.zeros((users, 5), np.int64)
    for u, size in enumerate(sizes):
        truth[u, :size] = rng.integers(2, n_items, size)
    ks = (1, 3, 10)
    ours = retrieval_metrics(topk, truth, ks)
    for k in ks:
        recall, hr, ndcg = [], [], []
        for u in range(users):
            relevant = set(truth[u][truth[u] != 0].tolist())
            ranked = topk[u, :k].tolist()
            found = [j for j, item in enumerate(ranked) if item in relevant]
            recall.append(len(found) / len(relevant))
            hr.append(float(bool(found)))
            dcg = sum(1 / np.log2(j + 2) for j in found)
            idcg = sum(1 / np.log2(j + 2) for j in range(min(len(relevant), k)))
            ndcg.append(dcg / idcg)
        assert ours[f"recall@{k}"] == pytest.approx(np.mean(recall))
        assert ours[f"hr@{k}"] == pytest.approx(np.mean(hr))
        assert ours[f"ndcg@{k}"] == pytest.approx(np.mean(ndcg))
