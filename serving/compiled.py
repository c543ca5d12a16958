"""The scoring function of a model: eager, or compiled behind a switch.

``compile_model(model, mode) -> fn(batch, candidates) -> logits [B, M]``:

* ``"off"`` (default): ``model.score_candidates`` in eager mode.
* ``"compile"``: ``torch.compile(model.forward, dynamic=True)`` inside the same
  ``score_candidates`` row layout (the model's own method, with the compiled forward bound
  for the call): one graph for every (B, M), no recompilation per shape after warm-up.
* ``"trace"``: TorchScript (``torch.jit.trace``) of the forward over the flat
  (user, candidate) rows, traced per row count on first use and kept (a traced graph
  fixes its shapes; one per distinct B × M, bounded by ``TRACE_CACHE``), since a trace
  taken at one row count is not valid at another.

What each mode measured on this machine is in docs/serving.md (bench/bench_serving.py
``--compiled``); every mode gives the eager logits to float tolerance (tested).
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, Tuple

import torch

from recsys.contract import Batch
from recsys.errors import ConfigError

MODES = ("off", "compile", "trace")
TRACE_CACHE = 64


def compile_model(model: torch.nn.Module, mode: str) -> Callable:
    if mode == "off":
        return model.score_candidates
    if mode == "compile":
        return _Compiled(model)
    if mode == "trace":
        return _Traced(model)
    raise ConfigError(f"compiled mode must be one of {MODES}, got {mode!r}")


def _rows(batch: Batch, candidates: Dict[str, torch.Tensor]) -> Batch:
    """The B × M (user, candidate) rows as one batch (what score_candidates builds)."""
    users, per_user = candidates["item"].shape
    rows = torch.arange(users).repeat_interleave(per_user)
    part = batch.take(rows)
    return part.replace(target={name: candidates[name].reshape(-1) for name in batch.target},
                        label=part.label.new_zeros(rows.numel()), sample_index=None)


class _Compiled:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.forward = torch.compile(model.forward, dynamic=True)

    def __call__(self, batch: Batch, candidates: Dict[str, torch.Tensor]) -> torch.Tensor:
        users, per_user = candidates["item"].shape
        return self.forward(_rows(batch, candidates)).logit.reshape(users, per_user)


class _Traced:
    """Traced graphs keyed by row count; built under a lock, then only read."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._graphs: Dict[Tuple, torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def _key(self, rows: Batch) -> Tuple:
        return tuple(sorted((n, tuple(v.shape)) for n, v in
                            list(rows.history.items()) + list(rows.target.items()) + list(rows.context.items())))

    def __call__(self, batch: Batch, candidates: Dict[str, torch.Tensor]) -> torch.Tensor:
        users, per_user = candidates["item"].shape
        rows = _rows(batch, candidates)
        if rows.profile:     # Jagged profile values do not trace: eager for such models
            return self.model.score_candidates(batch, candidates)
        flat = _flatten(rows)
        key = self._key(rows)
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    wrapper = _FlatForward(self.model, rows)
                    graph = torch.jit.trace(wrapper, flat, check_trace=False)
                    if len(self._graphs) >= TRACE_CACHE:
                        self._graphs.pop(next(iter(self._graphs)))
                    self._graphs[key] = graph
        return graph(*flat).reshape(users, per_user)


def _flatten(rows: Batch) -> Tuple[torch.Tensor, ...]:
    return (rows.user, rows.lengths) + tuple(rows.history[n] for n in sorted(rows.history)) + \
        tuple(rows.target[n] for n in sorted(rows.target)) + tuple(rows.context[n] for n in sorted(rows.context))


class _FlatForward(torch.nn.Module):
    """forward over tensors (what tracing needs): rebuilds the Batch from its fields."""

    def __init__(self, model: torch.nn.Module, example: Batch) -> None:
        super().__init__()
        self.model = model
        self.history, self.target, self.context = sorted(example.history), sorted(example.target), sorted(example.context)

    def forward(self, user, lengths, *values):
        h, t = len(self.history), len(self.target)
        batch = Batch(user=user, label=torch.zeros_like(lengths, dtype=torch.float32), lengths=lengths,
                      history=dict(zip(self.history, values[:h])), target=dict(zip(self.target, values[h:h + t])),
                      context=dict(zip(self.context, values[h + t:])))
        return self.model(batch).logit
