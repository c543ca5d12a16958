"""Triton kernels vs the PyTorch references: outputs and all input/weight gradients on
random shapes (rows of length 0 and 1, lengths not a multiple of the block), padded and
jagged, fp32 and fp16. On CPU these run under TRITON_INTERPRET=1 (set in conftest.py) with
tiny shapes and the single interpreter autotune config; on a GPU the same properties run
natively, plus the realistic-shape tests marked ``gpu``."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

pytest.importorskip("triton")

from recsys.kernels.attention_pooling import attention_pooling  # noqa: E402
from recsys.kernels.din_attention import din_attention  # noqa: E402
from recsys.kernels.reference.din_attention import din_attention_padded  # noqa: E402
from recsys.kernels.topk_attention import topk_target_attention  # noqa: E402
from tests.kernels_fixtures import assert_close, attention_mlp, history, leaves  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAST = settings(max_examples=8, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# rows of length 0 and 1 are always present; others straddle the interpreter's block of 16
lengths_st = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(lambda xs: [0, 1] + xs)
dtype_st = st.sampled_from([torch.float32, torch.float16])


def _both_layouts(lengths, dim, dtype, dim_v=None, seed=0):
    keys, lens, keys_j, offsets = history(lengths, dim, dtype, DEVICE, extra=3, seed=seed)
    dv = dim_v or dim
    values, _, values_j, _ = history(lengths, dv, dtype, DEVICE, extra=3, seed=seed + 1)
    return keys, values, lens, keys_j, values_j, offsets


def _run(fn, tensors, grad_seed=7):
    """Call fn on fresh leaves, back-propagate a fixed random cotangent, return (outputs, grads)."""
    inputs = leaves(*tensors)
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(grad_seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=gen).to(o.device)).sum()
               for o in outs if o.is_floating_point() and o.requires_grad)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return outs, grads


@FAST
@given(lengths=lengths_st, dim=st.integers(1, 12), dim_v=st.integers(1, 9), dtype=dtype_st,
       weighting=st.sampled_from(["softmax", "relu"]), jagged=st.booleans())
def test_attention_pooling_matches_reference(lengths, dim, dim_v, dtype, weighting, jagged):
    keys, values, lens, keys_j, values_j, offsets = _both_layouts(lengths, dim, dtype, dim_v)
    query = torch.randn(len(lengths), dim).to(dtype=dtype, device=DEVICE)
    k_in, v_in = (keys_j, values_j) if jagged else (keys, values)
    layout = dict(offsets=offsets) if jagged else dict(lengths=lens)
    got, got_g = _run(lambda q, k, v: attention_pooling(q, k, values=v, weighting=weighting, backend="triton",
                                                        **layout), [query, k_in, v_in])
    ref, ref_g = _run(lambda q, k, v: attention_pooling(q, k, values=v, weighting=weighting, backend="torch",
                                                        **layout), [query.float(), k_in.float(), v_in.float()])
    assert got[0].dtype == dtype
    assert_close(got[0], ref[0], dtype, "pooled")
    for name, a, b in zip(("d_query", "d_keys", "d_values"), got_g, ref_g):
        assert_close(a, b, dtype, name)


@FAST
@given(lengths=lengths_st, dim=st.integers(1, 12), dim_v=st.integers(1, 9), dtype=dtype_st, jagged=st.booleans(),
       k=st.integers(1, 4))
def test_topk_attention_matches_reference(lengths, dim, dim_v, dtype, jagged, k):
    keys, values, lens, keys_j, values_j, offsets = _both_layouts(lengths, dim, dtype, dim_v)
    k = min(k, max(lengths))
    query = torch.randn(len(lengths), dim).to(dtype=dtype, device=DEVICE)
    k_in, v_in = (keys_j, values_j) if jagged else (keys, values)
    layout = dict(offsets=offsets) if jagged else dict(lengths=lens)
    call = lambda backend: lambda q, kk, v: topk_target_attention(q, kk, v, k=k, backend=backend, **layout)  # noqa: E731
    # the aux-loss path: gradients flow through the full scores too (padding excluded by masking)
    def with_aux(backend):
        def fn(q, kk, v):
            pooled, scores, index = call(backend)(q, kk, v)
            valid = torch.arange(scores.shape[1], device=scores.device).unsqueeze(0) < lens.to(scores.device).unsqueeze(1)
            return pooled, scores.masked_fill(~valid, 0.0), index
        return fn
    got, got_g = _run(with_aux("triton"), [query, k_in, v_in])
    ref, ref_g = _run(with_aux("torch"), [query.float(), k_in.float(), v_in.float()])
    if dtype == torch.float32:   # fp16 rounding may legitimately reorder near-ties
        assert torch.equal(got[2], ref[2])
        assert_close(got[0], ref[0], dtype, "pooled")
        for name, a, b in zip(("d_q_att", "d_k_att", "d_v_rep"), got_g, ref_g):
            assert_close(a, b, dtype, name)
    assert_close(got[1], ref[1], dtype, "scores")
    assert bool((got[2] < lens.unsqueeze(1)).all()) and bool((got[2] >= -1).all())


ACTIVATION_SETS = [("sigmoid",), ("prelu",), ("dice",), ("relu", "sigmoid"), ("prelu", "dice"), ("dice", "dice")]


@FAST
@given(lengths=lengths_st, dim=st.integers(1, 10), widths=st.lists(st.integers(1, 20), min_size=2, max_size=2),
       acts=st.sampled_from(ACTIVATION_SETS), training=st.booleans(), softmax=st.booleans(), jagged=st.booleans(),
       separate_values=st.booleans(), dtype=dtype_st)
def test_din_attention_matches_reference(lengths, dim, widths, acts, training, softmax, jagged, separate_values, dtype):
    keys, values, lens, keys_j, values_j, offsets = _both_layouts(lengths, dim, dtype, dim + 2)
    query = torch.randn(len(lengths), dim).to(dtype=dtype, device=DEVICE)
    layers = attention_mlp(dim, widths[:len(acts)], acts, training, dtype, DEVICE)
    out_w = torch.randn(widths[len(acts) - 1]).to(dtype=dtype, device=DEVICE)
    out_b = torch.randn(()).to(dtype=dtype, device=DEVICE)
    k_in, v_in = (keys_j, values_j) if jagged else (keys, values)
    layout = dict(offsets=offsets) if jagged else dict(lengths=lens)
    weights = [t for layer in layers for t in (layer.weight, layer.bias, layer.prelu_weight, layer.dice_alpha)
               if t is not None] + [out_w, out_b]

    def call(backend, layer_list, float32):
        def fn(q, kk, v, *params):
            hidden, it = [], iter(params)
            for layer in layer_list:
                hidden.append(copy.copy(layer))
                for slot in ("weight", "bias", "prelu_weight", "dice_alpha"):
                    if getattr(layer, slot) is not None:
                        setattr(hidden[-1], slot, next(it))
            ow, ob = next(it), next(it)
            return din_attention(q, kk, hidden=hidden, out_weight=ow, out_bias=ob,
                                 values=v if separate_values else None, use_softmax=softmax, backend=backend, **layout)
        return fn

    ref_layers = copy.deepcopy(layers)
    for layer in ref_layers:
        if layer.running_mean is not None:
            layer.running_mean, layer.running_var = layer.running_mean.float(), layer.running_var.float()
    got, got_g = _run(call("triton", layers, False), [query, k_in, v_in, *weights])
    ref, ref_g = _run(call("torch", ref_layers, True), [query.float(), k_in.float(), v_in.float(),
                                                         *[w.float() for w in weights]])
    assert got[0].dtype == dtype
    assert_close(got[0], ref[0], dtype, "pooled", scale=4.0)
    names = ["d_query", "d_keys", "d_values"] + [f"d_weight{i}" for i in range(len(weights))]
    for name, a, b in zip(names, got_g, ref_g):
        if a is None or b is None:
            assert (a is None) == (b is None) or not separate_values, name
            continue
        assert_close(a, b, dtype, name, scale=4.0)
    # Dice in training moves the running statistics exactly like the reference
    for mine, theirs in zip(layers, ref_layers):
        if mine.activation == "dice" and training and dtype == torch.float32:
            torch.testing.assert_close(mine.running_mean, theirs.running_mean, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(mine.running_var, theirs.running_var, atol=1e-5, rtol=1e-4)


def test_din_kernel_has_no_length_sized_intermediate():
    """The fused forward allocates only [B, *] tensors: nothing of size B·L·H or B·L·4D."""
    lengths = [33, 7, 0, 64]
    keys, lens, _, _ = history(lengths, 8, device=DEVICE)
    layers = attention_mlp(8, [24], ["sigmoid"], False, device=DEVICE)
    query = torch.randn(4, 8, device=DEVICE)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(out.numel())
            return out

    with torch.no_grad(), Spy():
        din_attention(query, keys, lens, hidden=layers, out_weight=torch.randn(24, device=DEVICE),
                      out_bias=torch.zeros((), device=DEVICE), backend="triton")
    assert max(seen) < 4 * 64 * 24, f"an intermediate of {max(seen)} elements was built"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_realistic_shapes_on_gpu(dtype):
    lengths = torch.randint(0, 1000, (256,)).tolist()
    keys, values, lens, keys_j, values_j, offsets = _both_layouts(lengths, 64, dtype)
    query = torch.randn(256, 64, device=DEVICE, dtype=dtype)
    layers = attention_mlp(64, [80, 40], ["prelu", "dice"], True, dtype, DEVICE)
    out_w, out_b = torch.randn(40, device=DEVICE, dtype=dtype), torch.zeros((), device=DEVICE, dtype=dtype)
    got = din_attention(query, keys_j, offsets=offsets, hidden=layers, out_weight=out_w, out_bias=out_b,
                        values=values_j, use_softmax=True, backend="triton")
    ref = din_attention_padded(query.float(), keys.float(), lens, copy.deepcopy(layers), out_w.float(), out_b.float(),
                               values.float(), True)
    assert_close(got, ref, torch.float16 if dtype != torch.float32 else dtype, "pooled", scale=4.0)
    got = attention_pooling(query, keys, lens, values=values, backend="triton")
    ref = attention_pooling(query.float(), keys.float(), lens, values=values.float(), backend="torch")
    assert_close(got, ref, torch.float16 if dtype != torch.float32 else dtype, "pooled")


@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_din_layer_triton_backend_matches_torch(activation):
    """DIN's attention module (models.layers) gives the same output and parameter gradients
    with attention_backend="triton" as with "torch" (training mode: Dice batch statistics)."""
    from recsys.models.layers.attention import ActivationUnitAttention

    torch.manual_seed(0)
    keys, lens, _, _ = history([0, 1, 19, 33], 6, device=DEVICE)
    query = torch.randn(4, 6, device=DEVICE)
    results = []
    for backend in ("torch", "triton"):
        torch.manual_seed(1)
        layer = ActivationUnitAttention(6, hidden_units=(20, 10), activation=activation, backend=backend).to(DEVICE)
        out = layer(query, keys, lens)
        grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
        results.append((out, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
