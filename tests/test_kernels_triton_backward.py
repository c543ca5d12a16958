"""The fused Triton backward of op 1 (DIN attention) against the exact PyTorch reference
``din_attention_padded``: every input and weight gradient, on random shapes (rows of
length 0 and 1, lengths straddling the interpreter's 16-row block), one or two hidden
layers, sigmoid / ReLU / PReLU / Dice (inference, and training with gradients through
the batch statistics), softmax or raw weights, padded and jagged, values = keys or
separate, fp32 and fp16. On CPU this runs under
TRITON_INTERPRET=1 (set in conftest.py) with tiny shapes and one autotune config."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import recsys.kernels.triton.din_attention_backward as triton_din_bwd  # noqa: E402
from recsys.kernels.din_attention import din_attention  # noqa: E402
from recsys.kernels.reference.din_attention import din_attention_padded  # noqa: E402
from recsys.kernels.reference.din_attention_chunked import din_attention_chunked  # noqa: E402
from tests.kernels_fixtures import PARAM_SLOTS, assert_close, attention_mlp, history  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PROPS = settings(max_examples=60, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

lengths_st = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(lambda xs: [0, 1] + xs)
ACTIVATIONS = ["sigmoid", "relu", "prelu", "dice"]


class _Problem:
    """A random op-1 problem: padded and jagged histories with the same content, an MLP, and
    the flat list of differentiable tensors [query, keys, (values), MLP params..., out_w, out_b]."""

    def __init__(self, lengths, dim, widths, acts, dtype, training=False, dim_v=None, seed=0):
        self.keys, self.lens, self.keys_j, self.offsets = history(lengths, dim, dtype, DEVICE, extra=3, seed=seed)
        dv = dim_v or dim + 2
        self.values, _, self.values_j, _ = history(lengths, dv, dtype, DEVICE, extra=3, seed=seed + 1)
        gen = torch.Generator().manual_seed(seed + 2)
        self.query = torch.randn(len(lengths), dim, generator=gen).to(dtype=dtype, device=DEVICE)
        self.layers = attention_mlp(dim, widths, acts, training, dtype, DEVICE, seed=seed)
        self.out_w = torch.randn(widths[-1], generator=gen).to(dtype=dtype, device=DEVICE)
        self.out_b = torch.randn((), generator=gen).to(dtype=dtype, device=DEVICE)
        self.cotangent = torch.randn(len(lengths), dv, generator=gen).to(DEVICE)
        self.mask = torch.arange(self.keys.shape[1], device=DEVICE).unsqueeze(0) < self.lens.unsqueeze(1)

    def params(self):
        return [getattr(layer, s) for layer in self.layers for s in PARAM_SLOTS if getattr(layer, s) is not None]

    def grads(self, backend: str, jagged: bool, values_mode: str, softmax: bool):
        """(pooled, gradients) of ⟨cotangent, pooled⟩; backend "reference" runs
        ``din_attention_padded`` in fp32 on the padded tensors, "triton" the kernel in the
        problem's dtype. values_mode: "none" (pool the keys), "same" (values=keys) or
        "separate". Jagged gradients of the reference are taken at the valid positions."""
        ref = backend == "reference"
        cast = (lambda t: t.detach().float()) if ref else (lambda t: t.detach())
        layers = copy.deepcopy(self.layers)
        for layer in layers:
            if layer.running_mean is not None:
                layer.running_mean, layer.running_var = cast(layer.running_mean), cast(layer.running_var)
        leaves = [cast(t).clone().requires_grad_() for t in self.params()]
        it = iter(leaves)
        for layer in layers:
            for slot in PARAM_SLOTS:
                if getattr(layer, slot) is not None:
                    setattr(layer, slot, next(it))
        use_jagged = jagged and not ref
        keys = cast(self.keys_j if use_jagged else self.keys).clone().requires_grad_()
        separate = values_mode == "separate"
        values = cast(self.values_j if use_jagged else self.values).clone().requires_grad_() if separate else None
        out_w, out_b = cast(self.out_w).requires_grad_(), cast(self.out_b).requires_grad_()
        query = cast(self.query).requires_grad_()
        v_arg = values if separate else (keys if values_mode == "same" else None)
        if ref:
            out = din_attention_padded(query, keys, self.lens, layers, out_w, out_b, v_arg, softmax)
        else:
            layout = dict(offsets=self.offsets) if jagged else dict(lengths=self.lens)
            out = din_attention(query, keys, hidden=layers, out_weight=out_w, out_bias=out_b, values=v_arg,
                                use_softmax=softmax, backend="triton", **layout)
        cot = self.cotangent[:, :out.shape[1]]
        inputs = [query, keys] + ([values] if separate else []) + leaves + [out_w, out_b]
        grads = list(torch.autograd.grad((out.float() * cot).sum(), inputs))
        if ref and jagged:
            grads[1] = grads[1][self.mask]
            if separate:
                grads[2] = grads[2][self.mask]
        return out, grads


def _compare(problem, jagged, values_mode, softmax, dtype):
    got, got_g = problem.grads("triton", jagged, values_mode, softmax)
    ref, ref_g = problem.grads("reference", jagged, values_mode, softmax)
    assert got.dtype == dtype
    assert_close(got, ref, dtype, "pooled", scale=4.0)
    assert len(got_g) == len(ref_g)
    for i, (a, b) in enumerate(zip(got_g, ref_g)):
        assert a.dtype == dtype and a.shape == b.shape, i
        assert_close(a, b, dtype, f"gradient {i}", scale=4.0)


@PROPS
@given(lengths=lengths_st, dim=st.integers(1, 10), widths=st.lists(st.integers(1, 20), min_size=1, max_size=2),
       acts=st.lists(st.sampled_from(ACTIVATIONS), min_size=2, max_size=2), training=st.booleans(),
       softmax=st.booleans(), jagged=st.booleans(), values_mode=st.sampled_from(["none", "same", "separate"]),
       dtype=st.sampled_from([torch.float32, torch.float16]), seed=st.integers(0, 1000))
def test_fused_backward_matches_reference(lengths, dim, widths, acts, training, softmax, jagged, values_mode, dtype,
                                          seed):
    """training: Dice layers use (and back-propagate through) the batch statistics."""
    problem = _Problem(lengths, dim, widths, acts[:len(widths)], dtype, training=training, seed=seed)
    _compare(problem, jagged, values_mode, softmax, dtype)


@pytest.mark.parametrize("acts,training", [(("sigmoid",), False), (("relu", "prelu"), False),
                                           (("prelu", "dice"), False), (("dice",), True), (("prelu", "dice"), True),
                                           (("dice", "dice"), True)])
def test_backward_launches_the_fused_kernel(monkeypatch, acts, training):
    """Every case runs the Triton backward kernel: once, plus one statistics pass per Dice
    layer in training; and the gradients match the reference."""
    launches = []
    kernel = triton_din_bwd._din_bwd_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return kernel[grid]

    monkeypatch.setattr(triton_din_bwd, "_din_bwd_kernel", Counting())
    problem = _Problem([0, 1, 17, 5, 30], 4, [6, 5][:len(acts)], acts, torch.float32, training=training)
    _compare(problem, jagged=False, values_mode="separate", softmax=True, dtype=torch.float32)
    assert len(launches) == 1 + (acts.count("dice") if training else 0)


def test_backward_of_a_batch_without_behaviours():
    """All rows empty: zero gradients for keys, values and the MLP, and no statistics term."""
    problem = _Problem([0, 0, 0], 3, [5], ("dice",), torch.float32, training=True)
    _compare(problem, jagged=False, values_mode="separate", softmax=True, dtype=torch.float32)
    got = problem.grads("triton", False, "separate", True)[1]
    assert all(float(g.abs().max()) == 0.0 for g in got[1:3])


def _largest_backward_tensor(acts, training, chunked=False):
    """numel of the largest tensor an aten op allocates while the backward of a B = 4, L = 67
    (64 + 3 padding), D = 8, H = 24 problem runs (``chunked``: through the chunked PyTorch
    function instead of the Triton kernel). A dispatch mode (not a function mode) because
    the autograd engine calls the Function's backward below the Python function layer; views
    and in-place ops (the interpreter's storage aliasing) allocate nothing."""
    problem = _Problem([33, 7, 1, 64], 8, [24] * len(acts), acts, torch.float32, training=training, dim_v=8)
    q = problem.query.clone().requires_grad_()
    k = problem.keys.clone().requires_grad_()
    params = problem.params()
    out_w, out_b = problem.out_w.requires_grad_(), problem.out_b.requires_grad_()
    if chunked:
        out = din_attention_chunked(q, k, problem.lens, problem.layers, out_w, out_b, use_softmax=True)
    else:
        out = din_attention(q, k, problem.lens, hidden=problem.layers, out_weight=out_w, out_bias=out_b,
                            use_softmax=True, backend="triton")
    seen = [0]

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if not func.is_view and not func._schema.is_mutable:
                for t in result if isinstance(result, (tuple, list)) else (result,):
                    if isinstance(t, torch.Tensor):
                        seen.append(t.numel())
            return result

    with Spy():
        torch.autograd.grad(out.sum(), [q, k, *params, out_w, out_b])
    return max(seen)


def test_fused_backward_has_no_length_sized_intermediate():
    """The fused backward allocates no [B, L, H] tensor (its largest is dk [B, L, D]), Dice
    in training included; the chunked PyTorch backward does, which shows that the spy sees
    a backward's allocations."""
    limit = 4 * 64 * 24
    assert _largest_backward_tensor(("prelu", "sigmoid"), training=False) < limit
    assert _largest_backward_tensor(("dice", "dice"), training=True) < limit
    assert _largest_backward_tensor(("dice",), training=True, chunked=True) >= limit


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_backward_realistic_shapes_on_gpu(training, dtype):
    """B = 64, lengths up to 300, D = 32, MLP [80, 40] PReLU → Dice, jagged, softmax: natively
    compiled (autotuned block sizes, several rows per program) against the reference."""
    lengths = torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    problem = _Problem(lengths, 32, [80, 40], ("prelu", "dice"), dtype, training=training, dim_v=32)
    _compare(problem, jagged=True, values_mode="separate", softmax=True, dtype=dtype)
