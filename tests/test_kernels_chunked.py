"""Op 1's chunked CPU path (``din_attention_chunked``) against the exact unchunked reference:
outputs, every input/weight gradient, Dice running statistics, float64 gradcheck, and a
hypothesis sweep over shapes, lengths (incl. 0 and 1), activations and chunk sizes."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from recsys.kernels.din_attention import backend_for, din_attention
from recsys.kernels.reference.din_attention import din_attention_padded
from recsys.kernels.reference.din_attention_chunked import din_attention_chunked
from tests.kernels_fixtures import PARAM_SLOTS, attention_mlp, gradcheck_case, history

F64 = torch.float64
SLOTS = PARAM_SLOTS


def _run(fn, query, keys, values, lens, layers, out_w, out_b, softmax, **kw):
    """Output, gradients of (query, keys, values, out_w, out_b, layer params) and the
    running statistics after the call, on independent copies of every tensor."""
    leaf = lambda t: None if t is None else t.detach().clone().requires_grad_()  # noqa: E731
    q, k, ow, ob = leaf(query), leaf(keys), leaf(out_w), leaf(out_b)
    v = None if values is None else leaf(values)
    hidden = []
    for layer in layers:
        h = copy.copy(layer)
        for slot in SLOTS:
            setattr(h, slot, leaf(getattr(layer, slot)))
        h.running_mean = None if layer.running_mean is None else layer.running_mean.clone()
        h.running_var = None if layer.running_var is None else layer.running_var.clone()
        hidden.append(h)
    out = fn(q, k, lens, hidden, ow, ob, v, softmax, **kw)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    params = [getattr(h, s) for h in hidden for s in SLOTS if getattr(h, s) is not None]
    grads = [t.grad for t in [q, k, v, ow, ob, *params] if t is not None]
    stats = [t for h in hidden for t in (h.running_mean, h.running_var) if t is not None]
    return out, grads, stats


def _compare(lengths, dim, dim_v, widths, acts, training, softmax, dtype, chunk, seed=0):
    keys, lens, _, _ = history(lengths, dim, dtype, extra=1, seed=seed)
    values = None if dim_v is None else history(lengths, dim_v, dtype, extra=1, seed=seed + 1)[0]
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(len(lengths), dim, generator=gen).to(dtype)
    layers = attention_mlp(dim, widths, acts, training, dtype, seed=seed)
    out_w = torch.randn(widths[-1], generator=gen).to(dtype)
    out_b = torch.randn((), generator=gen).to(dtype)
    args = (query, keys, values, lens, layers, out_w, out_b, softmax)
    ref_out, ref_grads, ref_stats = _run(din_attention_padded, *args)
    out, grads, stats = _run(din_attention_chunked, *args, chunk=chunk)
    tol = dict(atol=1e-10, rtol=1e-8) if dtype == F64 else dict(atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(out, ref_out, **tol)
    assert len(grads) == len(ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        scale = max(1.0, float(r.abs().max()))
        torch.testing.assert_close(g, r, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"grad {i}: {m}")
    for s, r in zip(stats, ref_stats):
        torch.testing.assert_close(s, r, **tol)


@pytest.mark.parametrize("acts, training, softmax", [
    (("sigmoid", "sigmoid"), False, False), (("prelu", "dice"), True, True), (("dice",), True, False),
    (("dice", "dice"), True, True), (("relu", "prelu"), False, True), (("dice", "prelu"), False, False)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_chunked_matches_reference(acts, training, softmax, dtype):
    _compare([5, 0, 1, 9, 3], 4, 3, [6, 5][:len(acts)], acts, training, softmax, dtype, chunk=3)


@pytest.mark.parametrize("acts, training, softmax", [
    (("sigmoid",), False, False), (("prelu", "dice"), True, True), (("dice", "dice"), True, False),
    (("relu", "dice"), False, True)])
def test_chunked_gradcheck(acts, training, softmax):
    query, keys, lens, layers, out_w, out_b, params, rebuild = gradcheck_case(acts, training)
    values = history([0, 1, 5], 2, F64, extra=1, seed=3)[0].requires_grad_()

    def fn(q, k, v, ow, ob, *ps):
        hidden = rebuild(ps)
        return din_attention_chunked(q, k, lens, hidden, ow, ob, v, softmax, chunk=2)

    assert torch.autograd.gradcheck(fn, (query, keys, values, out_w, out_b, *params))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lengths=st.lists(st.integers(0, 12), min_size=1, max_size=5), dim=st.integers(1, 6),
       dim_v=st.one_of(st.none(), st.integers(1, 4)), widths=st.lists(st.integers(1, 7), min_size=1, max_size=2),
       acts=st.lists(st.sampled_from(["sigmoid", "relu", "prelu", "dice"]), min_size=2, max_size=2),
       training=st.booleans(), softmax=st.booleans(), chunk=st.integers(1, 13), seed=st.integers(0, 99))
def test_chunked_property(lengths, dim, dim_v, widths, acts, training, softmax, chunk, seed):
    _compare(lengths, dim, dim_v, widths, acts[:len(widths)], training, softmax, F64, chunk, seed)


@pytest.mark.parametrize("threshold", [0, 1 << 30])   # chunked / reference below the size threshold
def test_dispatcher_torch_is_chunked_and_reference_is_selectable(monkeypatch, threshold):
    monkeypatch.setattr("recsys.kernels.din_attention.CHUNKED_MIN_ELEMENTS", threshold)
    keys, lens, keys_j, offsets = history([3, 0, 6], 4)
    query = torch.randn(3, 4)
    layers = attention_mlp(4, [6, 3], ["dice", "sigmoid"], False)
    kw = dict(hidden=layers, out_weight=torch.ones(3), out_bias=torch.zeros(()), use_softmax=True)
    a = din_attention(query, keys, lens, backend="torch", **kw)
    assert backend_for(query, keys, hidden=layers, backend="torch") == ("chunked" if threshold == 0 else "reference")
    b = din_attention(query, keys, lens, backend="reference", **kw)
    assert backend_for(query, keys, hidden=layers, backend="reference") == "reference"
    c = din_attention(query, keys_j, offsets=offsets, backend="torch", **kw)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, b)


def test_chunked_keeps_no_hidden_sized_tensor_for_backward():
    """What the graph holds for backward is O(B·L·D + B·L + params), never [B, L, H]."""
    batch, length, dim, width = 4, 64, 3, 50
    keys, lens, _, _ = history([length] * batch, dim)
    keys.requires_grad_()
    query = torch.randn(batch, dim, requires_grad=True)
    layers = attention_mlp(dim, [width, width], ["dice", "prelu"], True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        din_attention_chunked(query, keys, lens, layers, torch.ones(width), torch.zeros(()), chunk=8)
    assert max(saved) < batch * length * width
