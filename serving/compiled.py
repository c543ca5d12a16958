"""The scoring function of a model: eager, or compiled behind a switch.

``compile_model(model, mode) -> fn(batch, candidates) -> logits [B, M]``:

* ``"off"`` (default): ``model.score_candidates`` in eager mode.
* ``"compile"``: ``torch.compile(model.forward, dynamic=True)`` inside the same
  ``score_candidates`` row layout (the model's own method, with the compiled forward bound
  for the call): one graph for every (B, M), no recompilation per shape after warm-up.
* ``"trace"``: TorchScript (``torch.jit.trace``) of the forward over the flat
  (user, candidate) rows, traced on first use per input shape and kept (at most
  ``TRACE_CACHE`` graphs): a trace bakes in the Python decisions taken at its shapes (the
  attention kernel's chunked/unchunked choice depends on the row count), so one graph is
  never reused at another shape. Multi-valued profile ids enter as ``[R, max_values]``
  padded ids (the embedding's other accepted form) so their shape is fixed.

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
MAX_ROWS = 16384        # (user, candidate) rows per forward, as score_candidates' default


def compile_model(model: torch.nn.Module, mode: str) -> Callable:
    if mode == "off":
        return model.score_candidates
    if mode == "compile":
        return _Compiled(model)
    if mode == "trace":
        return _Traced(model)
    raise ConfigError(f"compiled mode must be one of {MODES}, got {mode!r}")


def _rows(batch: Batch, candidates: Dict[str, torch.Tensor], start: int, stop: int) -> Batch:
    """The (user, candidate) rows of users ``start:stop`` as one batch, user-major (the
    layout score_candidates builds)."""
    per_user = candidates["item"].shape[1]
    rows = torch.arange(start, stop).repeat_interleave(per_user)
    part = batch.take(rows)
    return part.replace(target={name: candidates[name][start:stop].reshape(-1) for name in batch.target},
                        label=part.label.new_zeros(rows.numel()), sample_index=None)


def _by_chunks(forward: Callable[[Batch], torch.Tensor], batch: Batch,
               candidates: Dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, M] logits, at most MAX_ROWS rows per forward (bounded memory)."""
    users, per_user = candidates["item"].shape
    step = max(1, MAX_ROWS // max(per_user, 1))
    return torch.cat([forward(_rows(batch, candidates, start, min(users, start + step))).reshape(-1, per_user)
                      for start in range(0, users, step)])


class _Compiled:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.forward = torch.compile(model.forward, dynamic=True)

    def __call__(self, batch: Batch, candidates: Dict[str, torch.Tensor]) -> torch.Tensor:
        return _by_chunks(lambda rows: self.forward(rows).logit, batch, candidates)


class _Traced:
    """Traced graphs keyed by row count; built under a lock, then only read."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._graphs: Dict[Tuple, torch.jit.ScriptModule] = {}
        self._lock = threading.Lock()

    def __call__(self, batch: Batch, candidates: Dict[str, torch.Tensor]) -> torch.Tensor:
        return _by_chunks(self._forward, batch, candidates)

    def _forward(self, rows: Batch) -> torch.Tensor:
        names, flat = _flatten(_padded_profile(rows, self.model.features))
        key = (names, tuple(tuple(v.shape) for v in flat))
        graph = self._graphs.get(key)
        if graph is None:
            with self._lock:
                graph = self._graphs.get(key)
                if graph is None:
                    with warnings.catch_warnings():     # the tracer's notes on shape-dependent Python: why
                        warnings.simplefilter("ignore")    # one graph is kept per input shape
                        graph = torch.jit.trace(_FlatForward(self.model, names), flat, check_trace=False)
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


def _flatten(rows: Batch) -> Tuple[Tuple[Tuple[str, str], ...], Tuple[torch.Tensor, ...]]:
    """((store, field) names, tensors) of a batch's inputs, in a fixed order."""
    names = [("core", "user"), ("core", "lengths")]
    for store in ("history", "target", "profile", "context"):
        names += [(store, n) for n in sorted(getattr(rows, store))]
    values = [rows.user if n == "user" else rows.lengths if s == "core" else getattr(rows, s)[n] for s, n in names]
    return tuple(names), tuple(values)


class _FlatForward(torch.nn.Module):
    """forward over tensors (what tracing needs): rebuilds the Batch from its fields."""

    def __init__(self, model: torch.nn.Module, names: Tuple[Tuple[str, str], ...]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *values):
        stores = {"history": {}, "target": {}, "profile": {}, "context": {}, "core": {}}
        for (store, name), value in zip(self.names, values):
            stores[store][name] = value
        lengths = stores["core"]["lengths"]
        batch = Batch(user=stores["core"]["user"], label=torch.zeros_like(lengths, dtype=torch.float32),
                      lengths=lengths, history=stores["history"], target=stores["target"],
                      profile=stores["profile"], context=stores["context"])
        return self.model(batch).logit
