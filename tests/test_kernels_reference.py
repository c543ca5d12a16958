"""PyTorch references of the kernels ops: float64 gradcheck, a hand-computed case, the
decomposed first layer against the naive [B, L, 4D] form, and the dispatchers' input
validation and backend choice."""

from __future__ import annotations

import pytest
import torch

from recsys.kernels.attention_pooling import attention_pooling
from recsys.kernels.attention_pooling import backend_for as pooling_backend
from recsys.kernels.din_attention import din_attention
from recsys.kernels.din_attention import backend_for as din_backend
from recsys.kernels.reference.attention_pooling import attention_pooling_padded
from recsys.kernels.reference.din_attention import HiddenLayer, apply_activation, din_attention_padded
from recsys.kernels.reference.topk_attention import topk_target_attention_padded
from recsys.kernels.topk_attention import topk_target_attention
from recsys.kernels.topk_attention import backend_for as topk_backend
from recsys.kernels.validation import KernelInputError
from tests.kernels_fixtures import attention_mlp, gradcheck_case, history

F64 = torch.float64


@pytest.mark.parametrize("acts, softmax, training", [
    (("sigmoid",), False, False), (("prelu", "dice"), True, True), (("dice",), False, True),
    (("relu", "sigmoid"), True, False), (("prelu", "dice"), False, False)])
def test_din_reference_gradcheck(acts, softmax, training):
    query, keys, lens, layers, out_w, out_b, params, rebuild = gradcheck_case(acts, training)

    def fn(q, k, ow, ob, *ps):
        hidden = rebuild(ps)
        return din_attention_padded(q, k, lens, hidden, ow, ob, None, softmax)

    assert torch.autograd.gradcheck(fn, (query, keys, out_w, out_b, *params), fast_mode=True)


@pytest.mark.parametrize("weighting", ["softmax", "relu"])
def test_pooling_reference_gradcheck(weighting):
    keys, lens, _, _ = history([0, 1, 6], 4, F64)
    values, _, _, _ = history([0, 1, 6], 3, F64, seed=2)
    query = torch.randn(3, 4, dtype=F64)
    inputs = [t.clone().requires_grad_() for t in (query, keys, values)]
    assert torch.autograd.gradcheck(lambda q, k, v: attention_pooling_padded(q, k, lens, v, weighting), inputs,
                                      fast_mode=True)


def test_topk_reference_gradcheck():
    keys, lens, _, _ = history([0, 1, 6, 4], 4, F64)
    values, _, _, _ = history([0, 1, 6, 4], 3, F64, seed=2)
    query = torch.randn(4, 4, dtype=F64)
    inputs = [t.clone().requires_grad_() for t in (query, keys, values)]

    def fn(q, k, v):
        pooled, scores, _ = topk_target_attention_padded(q, k, v, lens, 3)
        mask = torch.arange(scores.shape[1]).unsqueeze(0) < lens.unsqueeze(1)
        return pooled, scores.masked_fill(~mask, 0.0)
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_din_hand_computed():
    """D = 1, one sigmoid unit with weights picking q⊙k: score_j = w_o·σ(q k_j) + b_o."""
    query = torch.tensor([[2.0]])
    keys = torch.tensor([[[1.0], [-1.0], [9.0]]])
    layer = HiddenLayer(weight=torch.tensor([[0.0], [0.0], [0.0], [1.0]]), bias=torch.zeros(1))
    out = din_attention(query, keys, torch.tensor([2]), hidden=[layer], out_weight=torch.tensor([3.0]),
                        out_bias=torch.tensor(0.5), backend="torch")
    s = [3 * torch.sigmoid(torch.tensor(2.0)) + 0.5, 3 * torch.sigmoid(torch.tensor(-2.0)) + 0.5]
    assert torch.allclose(out, (s[0] * 1.0 + s[1] * -1.0).reshape(1, 1))
    soft = din_attention(query, keys, torch.tensor([2]), hidden=[layer], out_weight=torch.tensor([3.0]),
                         out_bias=torch.tensor(0.5), use_softmax=True, backend="torch")
    p = torch.softmax(torch.stack(s), 0)
    assert torch.allclose(soft, (p[0] - p[1]).reshape(1, 1))


@pytest.mark.parametrize("acts", [("prelu",), ("sigmoid", "relu")])
def test_decomposed_first_layer_equals_naive_concat(acts):
    """q(Wa+Wc) + k(Wb−Wc) + (q⊙k)Wd is the [q, k, q−k, q⊙k] @ W1 of FuxiCTR's form."""
    keys, lens, _, _ = history([4, 0, 7], 5, F64)
    query = torch.randn(3, 5, dtype=F64)
    layers = attention_mlp(5, [6, 3], acts, False, F64)
    out_w, out_b = torch.randn(layers[-1].weight.shape[1], dtype=F64), torch.randn((), dtype=F64)
    q = query.unsqueeze(1).expand_as(keys)
    x = torch.cat([q, keys, q - keys, q * keys], -1)
    for layer in layers:
        x = apply_activation(x @ layer.weight + layer.bias, layer)
    scores = (x @ out_w + out_b) * (torch.arange(keys.shape[1]).unsqueeze(0) < lens.unsqueeze(1))
    naive = torch.einsum("bl,bld->bd", scores, keys)
    torch.testing.assert_close(din_attention_padded(query, keys, lens, layers, out_w, out_b), naive)


def test_padding_is_never_selected_and_short_rows_get_minus_one():
    keys, lens, _, _ = history([1, 3], 4)
    keys[0, 1:] = 100.0   # padding that would win the top-k if it were not masked
    pooled, scores, index = topk_target_attention(torch.ones(2, 4), keys, torch.randn(2, 3, 2), lens, k=2,
                                                  backend="torch")
    assert index[0].tolist() == [0, -1]
    assert bool((index[1] >= 0).all())


def test_jagged_equals_padded_on_reference():
    keys, lens, keys_j, offsets = history([3, 0, 1, 5], 4)
    query = torch.randn(4, 4)
    a = attention_pooling(query, keys, lens, backend="torch")
    b = attention_pooling(query, keys_j, offsets=offsets, backend="torch")
    torch.testing.assert_close(a, b)
    layers = attention_mlp(4, [6], ["dice"], False)
    a = din_attention(query, keys, lens, hidden=layers, out_weight=torch.ones(6), out_bias=torch.zeros(()),
                      backend="torch")
    b = din_attention(query, keys_j, offsets=offsets, hidden=layers, out_weight=torch.ones(6),
                      out_bias=torch.zeros(()), backend="torch")
    torch.testing.assert_close(a, b)
    pa, sa, ia = topk_target_attention(query, keys, keys, lens, k=2, backend="torch")
    pb, sb, ib = topk_target_attention(query, keys_j, keys_j, offsets=offsets, k=2, backend="torch")
    torch.testing.assert_close(pa, pb)
    assert torch.equal(ia, ib)


def test_auto_backend_on_cpu_is_torch():
    keys, lens, _, _ = history([2, 3], 4)
    query = torch.randn(2, 4)
    assert pooling_backend(query, keys) == "torch"
    assert topk_backend(query, keys) == "torch"
    hidden = attention_mlp(4, [3], ["sigmoid"], False)
    assert din_backend(query, keys, hidden=hidden) == "reference"       # small: the unchunked reference
    assert din_backend(query, keys, hidden=hidden, backend="naive") == "naive"
    assert din_backend(query, keys, hidden=hidden * 3, backend="auto") == "reference"   # > 2 layers: never fused
    with pytest.raises(KernelInputError, match="backend"):
        din_backend(query, keys, hidden=hidden, backend="cuda")
    # the query is what the op runs: the naive form equals the reference on the same inputs
    kw = dict(hidden=hidden, out_weight=torch.ones(3), out_bias=torch.zeros(()))
    torch.testing.assert_close(din_attention(query, keys, lens, backend="naive", **kw),
                               din_attention(query, keys, lens, **kw))


def _pool(**overrides):
    keys, lens, keys_j, offsets = history([2, 3], 4)
    args = dict(query=torch.randn(2, 4), keys=keys, lengths=lens)
    args.update(overrides)
    return attention_pooling(**args, backend="torch")


@pytest.mark.parametrize("overrides, message", [
    (dict(query=torch.randn(3, 4)), "padded keys must be"),
    (dict(query=torch.randn(2, 5)), "width"),
    (dict(query=torch.randn(2, 4, dtype=F64)), "dtype"),
    (dict(query=torch.tensor([[float("nan")] * 4] * 2)), "NaN"),
    (dict(lengths=torch.tensor([2, 9])), "lengths must lie"),
    (dict(lengths=torch.tensor([2.0, 3.0])), "int32 or int64"),
    (dict(lengths=None), "exactly one of"),
    (dict(keys=torch.randn(5, 4), lengths=None, offsets=torch.tensor([0, 3, 2])), "non-decreasing"),
    (dict(keys=torch.randn(5, 4), lengths=None, offsets=torch.tensor([0, 2, 4])), "end at 4"),
    (dict(keys=torch.randn(5, 4), lengths=None, offsets=torch.tensor([1, 2, 5])), "start at 0"),
    (dict(weighting="tanh"), "weighting"),
])
def test_pooling_validation(overrides, message):
    with pytest.raises(KernelInputError, match=message):
        _pool(**overrides)


def test_device_mismatch_is_reported():
    meta = torch.randn(2, 3, 4, device="meta")
    with pytest.raises(KernelInputError):
        attention_pooling(torch.randn(2, 4), meta, torch.tensor([1, 2]), backend="torch")


@pytest.mark.parametrize("k, message", [(0, "positive"), (-1, "positive"), (4, "larger than the longest row")])
def test_topk_k_validation(k, message):
    keys, lens, keys_j, offsets = history([2, 3], 4)
    with pytest.raises(KernelInputError, match=message):
        topk_target_attention(torch.randn(2, 4), keys_j, keys_j, offsets=offsets, k=k)


def test_topk_value_layout_must_match():
    keys, lens, _, _ = history([2, 3], 4)
    with pytest.raises(KernelInputError, match="v_rep"):
        topk_target_attention(torch.randn(2, 4), keys, torch.randn(2, 2, 3), lens, k=1)


def test_unknown_backend():
    keys, lens, _, _ = history([2, 3], 4)
    with pytest.raises(KernelInputError, match="backend"):
        attention_pooling(torch.randn(2, 4), keys, lens, backend="cuda")
