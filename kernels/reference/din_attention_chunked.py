"""Op 1 on CPU without any [B, L, H] tensor kept for backward: a chunked autograd.Function.

Same math as ``din_attention_padded`` (the exact reference, kept for tests), but the history
is processed in chunks of ``chunk`` behaviours so that only one [B, chunk, H] block of
hidden activations lives at a time:

* forward (no autograd graph): Dice batch statistics (training) are computed layer by layer
  in chunked passes (sum, then sum of squared deviations over the valid positions); then the
  scores [B, L] are computed chunk by chunk. Weights (softmax or masked scores) and the pooled
  output follow from the [B, L] scores. Saved for backward: the inputs, the scores [B, L] and
  the Dice statistics [H] — nothing of size [B, L, H].
* backward: dscores [B, L] from the pooling/softmax; then each chunk's MLP is recomputed with
  autograd and back-propagated with its slice of dscores, accumulating dq, dk, the weight
  gradients and dL/dmean, dL/dvar of every Dice layer. The statistics' gradient is then
  pushed back through mean/var (dx = mask·(dmean + 2·dvar·(x − mean))/n) in one more chunked
  pass per Dice layer, last layer first (a layer's statistics depend on earlier layers').

Running statistics are updated in the forward exactly as the reference does.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .din_attention import HiddenLayer, activate

_PARAM_SLOTS = ("weight", "bias", "prelu_weight", "dice_alpha")


def default_chunk(batch: int, widest_hidden: int, cuda: bool = False) -> int:
    """Behaviours per chunk: one [B, chunk, H] block near 1M elements (~4 MB fp32, cache-sized)
    on CPU; near 64M elements on CUDA, where each chunk costs kernel launches and memory, not
    cache, is the limit (backend="torch" on CUDA tensors)."""
    budget = 1 << 26 if cuda else 1 << 20
    return max(8, budget // max(1, batch * widest_hidden))


class _Net:
    """The activation-unit MLP as plain tensors, evaluated on one chunk of keys."""

    def __init__(self, layers: Sequence[HiddenLayer], params: List[Optional[Tensor]], stats, d: int):
        self.layers, self.params, self.stats, self.d = layers, params, stats, d

    def p(self, i: int, slot: str) -> Optional[Tensor]:
        return self.params[4 * i + _PARAM_SLOTS.index(slot)]

    def pre0(self, q: Tensor, k: Tensor) -> Tensor:
        """First-layer pre-activation [B, c, H1] of keys k [B, c, D] (no [B, c, 4D])."""
        d, w1 = self.d, self.p(0, "weight")
        wa, wb, wc, wd = w1[:d], w1[d:2 * d], w1[2 * d:3 * d], w1[3 * d:]
        per_target = q @ (wa + wc) + self.p(0, "bias")
        return k @ (wb - wc) + (k * q.unsqueeze(1)) @ wd + per_target.unsqueeze(1)

    def run(self, q: Tensor, k: Tensor, upto: Optional[int] = None) -> Tensor:
        """Pre-activation of layer ``upto`` [B, c, H], or the scores [B, c] when None."""
        x = self.pre0(q, k)
        for i, layer in enumerate(self.layers):
            if upto == i:
                return x
            mean, var = self.stats[i] if self.stats[i] is not None else (layer.running_mean, layer.running_var)
            x = activate(x, layer.activation, self.p(i, "prelu_weight"), self.p(i, "dice_alpha"), mean, var, layer.eps)
            if i + 1 < len(self.layers):
                x = x @ self.p(i + 1, "weight") + self.p(i + 1, "bias")
        return x @ self.params[-2] + self.params[-1]


def _chunks(lengths: Tensor, length: int, chunk: int):
    """(start, end, rows) per chunk of positions; rows = the rows with at least one valid
    behaviour in the chunk (None: all rows). Chunks past every row's end are skipped, so
    padding costs (almost) nothing."""
    for start in range(0, length, chunk):
        active = lengths > start
        n_active = int(active.sum())
        if n_active == 0:
            return
        rows = None if n_active == lengths.shape[0] else active.nonzero().squeeze(1)
        yield start, min(length, start + chunk), rows


def _take(x: Tensor, rows: Optional[Tensor], s: int, e: int) -> Tensor:
    """x[rows, s:e] (x[:, s:e] when rows is None)."""
    return x[:, s:e] if rows is None else x[rows, s:e]


def _sel(x: Tensor, rows: Optional[Tensor]) -> Tensor:
    return x if rows is None else x[rows]


def _batch_stats(net: _Net, i: int, q: Tensor, keys: Tensor, mask: Tensor, chunk: int):
    """Biased mean/var [H] of layer i's pre-activations over valid positions, and the count."""
    n = int(mask.sum())
    h = net.p(i, "weight").shape[1]
    if n == 0:
        return q.new_zeros(h), q.new_ones(h), 0
    lengths = mask.sum(1)
    total = q.new_zeros(h)
    for s, e, rows in _chunks(lengths, keys.shape[1], chunk):
        total += net.run(_sel(q, rows), _take(keys, rows, s, e), upto=i)[_take(mask, rows, s, e)].sum(0)
    mean = total / n
    sq = q.new_zeros(h)
    for s, e, rows in _chunks(lengths, keys.shape[1], chunk):
        x = net.run(_sel(q, rows), _take(keys, rows, s, e), upto=i)[_take(mask, rows, s, e)]
        sq += (x - mean).pow(2).sum(0)
    return mean, sq / n, n


class _ChunkedDin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layers, use_softmax, chunk, query, keys, values, lengths, out_weight, out_bias, *flat):
        # values None: the keys are pooled (one [B, L, D] gradient instead of two summed ones)
        ctx.pool_keys = values is None
        values = keys if values is None else values
        params = list(flat) + [out_weight, out_bias]
        mask = torch.arange(keys.shape[1], device=keys.device).unsqueeze(0) < lengths.unsqueeze(1)
        net = _Net(layers, params, [None] * len(layers), query.shape[-1])
        counts = [0] * len(layers)
        for i, layer in enumerate(layers):
            if layer.activation == "dice" and layer.training:
                mean, var, n = _batch_stats(net, i, query, keys, mask, chunk)
                net.stats[i], counts[i] = (mean, var), n
                if n and layer.running_mean is not None:
                    layer.running_mean.lerp_(mean, layer.momentum)
                    layer.running_var.lerp_(var * (n / max(n - 1, 1)), layer.momentum)
        scores = torch.zeros(keys.shape[:2], dtype=query.dtype, device=query.device)  # padding: masked below
        for s, e, rows in _chunks(lengths, keys.shape[1], chunk):
            if rows is None:
                scores[:, s:e] = net.run(query, keys[:, s:e])
            else:
                scores[rows, s:e] = net.run(query[rows], keys[rows, s:e])
        if use_softmax:
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
        else:
            weights = scores * mask
        pooled = torch.einsum("bl,bld->bd", weights.to(values.dtype), values)
        stat_tensors = [t for st in net.stats if st is not None for t in st]
        ctx.save_for_backward(query, keys, values, lengths, mask, weights, *stat_tensors, *params)
        ctx.layers, ctx.use_softmax, ctx.chunk, ctx.counts = layers, use_softmax, chunk, counts
        ctx.has_stats = [st is not None for st in net.stats]
        ctx.n_stats = len(stat_tensors)
        return pooled

    @staticmethod
    def backward(ctx, grad_out):
        query, keys, values, lengths, mask, weights, *rest = ctx.saved_tensors
        stat_tensors, params = rest[:ctx.n_stats], rest[ctx.n_stats:]
        layers, chunk = ctx.layers, ctx.chunk
        grad_out = grad_out.to(values.dtype)
        d_weights = torch.einsum("bld,bd->bl", values, grad_out).to(weights.dtype)
        if ctx.use_softmax:
            d_scores = weights * (d_weights - (d_weights * weights).sum(1, keepdim=True))
        else:
            d_scores = d_weights * mask

        # leaves for the chunk recomputation
        q = query.detach().requires_grad_()
        leaf_params = [None if t is None else t.detach().requires_grad_() for t in params]
        it = iter(stat_tensors)
        leaf_stats = [(next(it).detach().requires_grad_(), next(it).detach().requires_grad_()) if has else None
                      for has in ctx.has_stats]
        net = _Net(layers, leaf_params, leaf_stats, query.shape[-1])
        grad_params = [None if t is None else torch.zeros_like(t) for t in params]
        grad_q = torch.zeros_like(query)
        grad_k = torch.zeros_like(keys)
        grad_stats = [None if st is None else [torch.zeros_like(st[0]), torch.zeros_like(st[1])] for st in leaf_stats]
        used_params = [j for j, t in enumerate(leaf_params) if t is not None]

        def backprop(out_of: Tensor, grad: Tensor, k_leaf: Tensor, s: int, e: int, rows, stat_layers):
            stat_leaves = [t for i in stat_layers for t in leaf_stats[i]]
            inputs = [q, k_leaf] + [leaf_params[j] for j in used_params] + stat_leaves
            grads = torch.autograd.grad(out_of, inputs, grad, allow_unused=True)
            grad_q.add_(grads[0])
            if rows is None:
                grad_k[:, s:e] += grads[1]
            else:
                grad_k[rows, s:e] += grads[1]      # rows are distinct
            for j, g in zip(used_params, grads[2:2 + len(used_params)]):
                if g is not None:
                    grad_params[j] += g
            for pos, i in enumerate(stat_layers):
                for w in range(2):
                    g = grads[2 + len(used_params) + 2 * pos + w]
                    if g is not None:
                        grad_stats[i][w] += g

        dice_layers = [i for i, st in enumerate(leaf_stats) if st is not None and ctx.counts[i] > 0]
        with torch.enable_grad():
            for s, e, rows in _chunks(lengths, keys.shape[1], chunk):
                k_leaf = _take(keys, rows, s, e).detach().requires_grad_()
                backprop(net.run(_sel(q, rows), k_leaf), _take(d_scores, rows, s, e), k_leaf, s, e, rows, dice_layers)
            # gradient through the batch statistics, last Dice layer first
            for i in reversed(dice_layers):
                mean, var = leaf_stats[i]
                d_mean, d_var = grad_stats[i]
                n = ctx.counts[i]
                earlier = [j for j in dice_layers if j < i]
                for s, e, rows in _chunks(lengths, keys.shape[1], chunk):
                    k_leaf = _take(keys, rows, s, e).detach().requires_grad_()
                    x = net.run(_sel(q, rows), k_leaf, upto=i)
                    g = (d_mean + 2 * d_var * (x.detach() - mean.detach())) / n * _take(mask, rows, s, e)[..., None]
                    backprop(x, g, k_leaf, s, e, rows, earlier)
        if ctx.pool_keys:   # d_values = w ⊗ dO, added in place (no second [B, L, D])
            grad_k.addcmul_(weights.to(grad_k.dtype).unsqueeze(-1), grad_out.to(grad_k.dtype).unsqueeze(1))
            d_values = None
        else:
            d_values = torch.einsum("bl,bd->bld", weights.to(values.dtype), grad_out)
        n_flat = len(params) - 2
        return (None, None, None, grad_q, grad_k, d_values, None, grad_params[-2], grad_params[-1],
                *grad_params[:n_flat])


def din_attention_chunked(query: Tensor, keys: Tensor, lengths: Tensor, hidden: Sequence[HiddenLayer],
                          out_weight: Tensor, out_bias: Tensor, values: Optional[Tensor] = None,
                          use_softmax: bool = False, chunk: Optional[int] = None) -> Tensor:
    """pooled [B, Dv]; same arguments and result as ``din_attention_padded`` (padded input).

    query [B, D], keys [B, L, D], lengths [B], values [B, L, Dv] (default keys).
    ``chunk``: behaviours per chunk (default: ``default_chunk``).
    """
    if values is keys:
        values = None
    if chunk is None:
        chunk = default_chunk(query.shape[0], max(layer.weight.shape[1] for layer in hidden), query.is_cuda)
    flat = [getattr(layer, slot) for layer in hidden for slot in _PARAM_SLOTS]
    return _ChunkedDin.apply(tuple(hidden), use_softmax, int(chunk), query, keys, values, lengths,
                             out_weight, out_bias, *flat)
