"""din_attention_candidates: M targets sharing one history per row equal the single-query op
on every (row, target) pair (property test), with padding, empty rows, softmax, Dice in eval
mode, two hidden layers and candidate chunking; its input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.kernels.din_attention import din_attention, din_attention_candidates
from recsys.kernels.reference.din_attention import din_attention_candidates_padded
from recsys.kernels.validation import KernelInputError
from tests.kernels_fixtures import attention_mlp, history

DIM = 6


def per_row(queries, keys, lengths, hidden, out_w, out_b, softmax):
    """[B, M, D] by the single-query op on the history repeated M times."""
    users, m, _ = queries.shape
    rows = torch.arange(users).repeat_interleave(m)
    return din_attention(queries.reshape(users * m, -1), keys[rows], lengths[rows], hidden=hidden,
                         out_weight=out_w, out_bias=out_b, use_softmax=softmax,
                         backend="reference").reshape(users, m, -1)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4), m=st.integers(1, 6),
       acts=st.sampled_from([("prelu",), ("dice",), ("sigmoid", "relu"), ("dice", "prelu")]),
       softmax=st.booleans(), max_elements=st.sampled_from([1, 50, 1 << 21]), seed=st.integers(0, 1000))
def test_candidates_equal_single_query_op_per_pair(lengths, m, acts, softmax, max_elements, seed):
    keys, lens, _, _ = history(lengths, DIM, extra=1, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    queries = torch.randn(len(lengths), m, DIM, generator=gen)
    widths = [5, 3][:len(acts)]
    hidden = attention_mlp(DIM, widths, acts, training=False, seed=seed)
    out_w, out_b = torch.randn(widths[-1], generator=gen), torch.randn((), generator=gen)
    with torch.no_grad():
        expected = per_row(queries, keys, lens, hidden, out_w, out_b, softmax)
        got = din_attention_candidates_padded(queries, keys, lens, hidden, out_w, out_b, None, softmax, max_elements)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(got[lens == 0] == 0)          # no behaviour: pools to zeros, as the per-row op


def test_values_are_pooled_and_gradients_flow():
    keys, lens, _, _ = history([3, 1], DIM, seed=2)
    values = torch.randn(2, keys.shape[1], 4, requires_grad=True)
    queries = torch.randn(2, 3, DIM, requires_grad=True)
    hidden = attention_mlp(DIM, [5], ["prelu"], training=False)
    out = din_attention_candidates(queries, keys, lens, hidden=hidden, out_weight=torch.randn(5),
                                   out_bias=torch.zeros(()), values=values)
    assert out.shape == (2, 3, 4)
    out.sum().backward()
    assert queries.grad.abs().sum() > 0 and hidden[0].weight.grad.abs().sum() > 0
    assert torch.all(values.grad[1, 1:] == 0)      # padding positions get no gradient


def test_zero_candidates_give_an_empty_result():
    keys, lens, _, _ = history([2], DIM)
    hidden = attention_mlp(DIM, [5], ["prelu"], training=False)
    out = din_attention_candidates(torch.zeros(1, 0, DIM), keys, lens, hidden=hidden, out_weight=torch.randn(5),
                                   out_bias=torch.zeros(()))
    assert out.shape == (1, 0, DIM)


@pytest.mark.parametrize("change, message", [
    (dict(queries=torch.zeros(2, DIM)), "queries must have 3 dimensions"),
    (dict(queries=torch.zeros(3, 2, DIM)), r"padded keys must be \[B=3"),
    (dict(queries=torch.zeros(2, 2, DIM + 1)), "keys width"),
    (dict(lengths=torch.tensor([1.0, 2.0])), "int32 or int64"),
    (dict(lengths=torch.tensor([9, 1])), "lengths must lie in"),
    (dict(queries=torch.full((2, 2, DIM), float("nan"))), "queries contains NaN"),
    (dict(training_dice=True), "Dice layers in eval mode"),
])
def test_input_checks(change, message):
    keys, lens, _, _ = history([3, 1], DIM)
    args = dict(queries=torch.zeros(2, 2, DIM), lengths=lens)
    args.update({k: v for k, v in change.items() if k != "training_dice"})
    hidden = attention_mlp(DIM, [5], ["dice"], training=change.get("training_dice", False))
    with pytest.raises(KernelInputError, match=message):
        din_attention_candidates(args["queries"], keys, args["lengths"], hidden=hidden, out_weight=torch.randn(5),
                                 out_bias=torch.zeros(()))
