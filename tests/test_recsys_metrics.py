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
