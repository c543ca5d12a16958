"""The scoring function of a model: eager, or compiled behind a switch.

``compile_model(model, mode) -> fn(batch, candidates) -> logits [B, M]``:

* ``"off"`` (default): ``model.score_candidates`` in eager mode.
* ``"compile"``: ``torch.compile(model.score_candidates, dynamic=True)``: the model's own
  scoring path (DIN's shared-history path, HCN's two-tower path, the base class's repeated
  rows), one graph for every shape after warm-up.
* ``"trace"``: TorchScript (``torch.jit.trace``) of ``model.score_candidates`` over the
  batch's and the candidates' tensors, traced on first use per input shape and kept (at
  most ``TRACE_CACHE`` graphs): a trace bakes in the Python decisions taken at its shapes
  (chunk sizes, the attention kernel's chunked/unchunked choice), so one graph is never
  reused at another shape. Multi-valued profile ids enter as ``[B, max_values]`` padded
  ids (the embedding's other accepted form) so their shape is fixed.

What each mode measured on this machine is in docs/serving.md (bench/bench_serving.py
``--compiled``); every mode gives the eager logits to float tolerance (tested).
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable, Dict, Tuple

import torch

from recsys.contract import Batch, Jagged
from recsys.errors import ConfigError

MODES = ("off", "compile", "trace")
TRACE_CACHE = 64


def compile_model(model: torch.nn.Module, mode: str) -> Callable:
    if mode == "off":
        return model.score_candidates
    if mode == "compile":
        return torch.compile(model.score_candidates, dynamic=True)
    if mode == "trace":
        return _Traced(model)
    raise ConfigError(f"compiled mode must be one of {MODES}, got {mode!r}")


class _Traced:
    """Traced graphs keyed by input names and shapes; built under a lock, then only read."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._graphs: Dict[Tuple, torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def __call__(self, batch: Batch, candidates: Dict[str, torch.Tensor]) -> torch.Tensor:
        names, flat = _flatten(_padded_profile(batch, self.model.features), candidates)
        key = (names, tuple(tuple(v.shape) for v in flat))
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    with warnings.catch_warnings():     # the tracer's notes on shape-dependent Python: why
                        warnings.simplefilter("ignore")    # one graph is kept per input shape
                        graph = torch.jit.trace(_FlatScore(self.model, names), flat, check_trace=False)
                    if len(self._graphs) >= TRACE_CACHE:
                        self._graphs.pop(next(iter(self._graphs)))
                    self._graphs[key] = graph
        return graph(*flat)


def _padded_profile(rows: Batch, features) -> Batch:
    """Multi-valued profile ids as [R, max_values] padded with 0 (what the embedding takes
    besides Jagged; a fixed width, so the traced shapes do not depend on the values)."""
    profile = {}
    for name, value in rows.profile.items():
        if isinstance(value, Jagged):
            value = value.to_padded(max(int(features[name].max_values), 1))
        profile[name] = value
    return rows.replace(profile=profile)


def _flatten(rows: Batch, candidates: Dict[str, torch.Tensor]) -> Tuple[Tuple[Tuple[str, str], ...],
                                                                         Tuple[torch.Tensor, ...]]:
    """((store, field) names, tensors) of a batch's inputs and the candidates, in a fixed order."""
    names = [("core", "user"), ("core", "lengths")]
    for store in ("history", "target", "profile", "context"):
        names += [(store, n) for n in sorted(getattr(rows, store))]
    names += [("candidates", n) for n in sorted(candidates)]
    values = [rows.user if n == "user" else rows.lengths if s == "core" else
              candidates[n] if s == "candidates" else getattr(rows, s)[n] for s, n in names]
    return tuple(names), tuple(values)


class _FlatScore(torch.nn.Module):
    """score_candidates over tensors (what tracing needs): rebuilds the Batch and the
    candidates from their fields."""

    def __init__(self, model: torch.nn.Module, names: Tuple[Tuple[str, str], ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *values):
        stores = {"history": {}, "target": {}, "profile": {}, "context": {}, "core": {}, "candidates": {}}
        for (store, name), value in zip(self.names, values):
            stores[store][name] = value
        lengths = stores["core"]["lengths"]
        batch = Batch(user=stores["core"]["user"], label=torch.zeros_like(lengths, dtype=torch.float32),
                      lengths=lengths, history=stores["history"], target=stores["target"],
                      profile=stores["profile"], context=stores["context"])
        return self.model.score_candidates(batch, stores["candidates"])
