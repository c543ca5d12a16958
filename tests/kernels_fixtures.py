"""Random inputs for the kernels tests: padded and jagged histories with the same content."""

from __future__ import annotations

from typing import List, Sequence

import torch

from recsys.kernels.reference.din_attention import HiddenLayer


def history(lengths: Sequence[int], dim: int, dtype=torch.float32, device="cpu", extra: int = 0, seed: int = 0):
    """Padded [B, L, dim] (L = max length + extra, padding filled with large junk so a kernel
    reading it is caught), lengths [B], the same rows jagged [N, dim] and offsets [B + 1]."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths, default=0) + extra
    padded = torch.randn(len(lengths), width, dim, generator=gen)
    lens = torch.tensor(list(lengths), dtype=torch.int64)
    mask = torch.arange(width).unsqueeze(0) < lens.unsqueeze(1)
    padded[~mask] = 1e4
    jagged = padded[mask]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lens, 0)
    cast = lambda x: x.to(dtype=dtype, device=device)  # noqa: E731
    return cast(padded), lens.to(device), cast(jagged), offsets.to(device)


def attention_mlp(dim: int, widths: Sequence[int], activations: Sequence[str], training: bool,
                  dtype=torch.float32, device="cpu", seed: int = 0) -> List[HiddenLayer]:
    """Random attention-MLP layers (leaf tensors requiring grad) for the DIN op."""
    gen = torch.Generator().manual_seed(seed)
    layers, fan_in = [], 4 * dim
    for width, act in zip(widths, activations):
        def leaf(*shape, scale=1.0, positive=False):
            x = torch.rand(*shape, generator=gen) if positive else torch.randn(*shape, generator=gen)
            return (x * scale).to(dtype=dtype, device=device).requires_grad_()
        layers.append(HiddenLayer(
            weight=leaf(fan_in, width, scale=fan_in ** -0.5), bias=leaf(width, scale=0.1), activation=act,
            prelu_weight=leaf(width, positive=True) if act == "prelu" else None,
            dice_alpha=leaf(width, positive=True) if act == "dice" else None,
            running_mean=(torch.randn(width, generator=gen) * 0.1).to(dtype=dtype, device=device) if act == "dice" else None,
            running_var=(torch.rand(width, generator=gen) + 0.5).to(dtype=dtype, device=device) if act == "dice" else None,
            training=training))
        fan_in = width
    return layers


def leaves(*tensors):
    """Fresh leaf copies requiring grad (so two backends get independent gradients)."""
    return [t.detach().clone().requires_grad_() for t in tensors]


def assert_close(actual, expected, dtype, what: str, scale: float = 1.0) -> None:
    """fp32: tight; fp16: relative to the magnitude of the expected tensor."""
    expected = expected.detach().float()
    actual = actual.detach().float()
    if dtype == torch.float16:
        atol = 2e-2 * max(1.0, float(expected.abs().max())) * scale
        rtol = 2e-2
    else:
        atol, rtol = 1e-4 * max(1.0, float(expected.abs().max())), 1e-4
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


PARAM_SLOTS = ("weight", "bias", "prelu_weight", "dice_alpha")


def gradcheck_mlp(layers: List[HiddenLayer], training: bool):
    """The attention MLP's parameters as gradcheck inputs: returns (params, rebuild) where
    ``rebuild(params)`` gives copies of ``layers`` holding those tensors. In training the running
    statistics are dropped, so gradcheck's many calls all evaluate the same function."""
    import copy
    for layer in layers:
        if training:
            layer.running_mean = layer.running_var = None
    params = [getattr(layer, s) for layer in layers for s in PARAM_SLOTS if getattr(layer, s) is not None]

    def rebuild(ps) -> List[HiddenLayer]:
        hidden, it = [], iter(ps)
        for layer in layers:
            hidden.append(copy.copy(layer))
            for slot in PARAM_SLOTS:
                if getattr(layer, slot) is not None:
                    setattr(hidden[-1], slot, next(it))
        return hidden
    return params, rebuild


def gradcheck_case(activations: Sequence[str], training: bool):
    """A tiny float64 op-1 problem for gradcheck (rows of length 0, 1 and 5, D = 3, hidden
    [5] or [5, 4]): (query, keys, lengths, layers, out_weight, out_bias, params, rebuild)."""
    f64 = torch.float64
    keys, lens, _, _ = history([0, 1, 5], 3, f64, extra=1)
    keys.requires_grad_()
    query = torch.randn(3, 3, dtype=f64, requires_grad=True)
    layers = attention_mlp(3, [5, 4][:len(activations)], activations, training, f64)
    params, rebuild = gradcheck_mlp(layers, training)
    out_w = torch.randn(layers[-1].weight.shape[1], dtype=f64, requires_grad=True)
    out_b = torch.randn((), dtype=f64, requires_grad=True)
    return query, keys, lens, layers, out_w, out_b, params, rebuild
