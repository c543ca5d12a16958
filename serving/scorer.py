"""``Scorer``: click probabilities of raw-id requests with a ranking model of an artifact.

    scorer = Scorer.load("artifacts/din")
    scorer.score(history=[1021, 88, 4410], candidates=[77, 4410, 9]) -> np.ndarray [3] float32
    scorer.score_many([Request(...), {"history": ..., "candidates": ...}]) -> [np.ndarray, ...]

Scores are ``sigmoid(logit)``, the numbers ``recsys evaluate`` writes to a run's
``predictions/<split>.parquet`` for the same rows (tested to float tolerance). The model
scores through ``RankingModel.score_candidates`` in eval mode under
``torch.inference_mode``.

Threads: one Scorer is shared by any number of threads. The model is built once and only
read (eval mode, no gradient, no state written in forward); the vocabularies and tables
are read-only arrays; the only mutable state is the stats counters, updated under a lock.
A request that fails (a :class:`RequestError`) raises in its own caller only. The Scorer
sets no process-global state: the caller owns ``torch.set_num_threads``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from recsys.errors import CheckpointError, ConfigError

from .artifact import Artifact, open_artifact
from .compiled import MODES, compile_model
from .ids import IdMap, RequestError
from .request import COUNT_KEYS, Request, RequestEncoder, as_request


class ScorerStats:
    """Thread-safe counters of what requests held (see ``request.COUNT_KEYS``) plus
    ``failed_requests`` (calls that raised)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNT_KEYS + ("failed_requests",), 0)

    def add(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] = self._counts.get(key, 0) + int(value)

    def snapshot(self) -> Dict[str, int]:
        with self._lock:
            return dict(self._counts)


def load_maps(artifact: Artifact, tables: Sequence[str]) -> Dict[str, IdMap]:
    return {table: IdMap(table, artifact.vocabulary(table)) for table in dict.fromkeys(tables)}


def user_side_tables(artifact: Artifact, features) -> Dict[str, object]:
    tables = {}
    for f in features.of("user", side_only=True):
        if f.kind == "ids":
            tables[f.name] = (artifact.array(f"side/user/{f.name}.values.npy"),
                              artifact.array(f"side/user/{f.name}.offsets.npy"))
            rows = len(tables[f.name][1]) - 1
        else:
            tables[f.name] = artifact.array(f"side/user/{f.name}.npy")
            rows = len(tables[f.name])
        if rows != features.num_users:
            raise CheckpointError(f"{artifact.root}/side/user/{f.name}: {rows} rows for {features.num_users} user ids")
    return tables


def request_encoder(artifact: Artifact, features) -> RequestEncoder:
    """The encoder of one component's spec, from the artifact's vocabularies and tables."""
    tables = ["user", "item"] + [f.table for f in features.of("user", side_only=True) if f.embedded] + \
        [f.table for f in features.of("context") if artifact.features.get("context_columns", {}).get(f.name)
         != "behavior"]
    return RequestEncoder(features, load_maps(artifact, tables), artifact.array("item_category.npy"),
                          user_side_tables(artifact, features), artifact.features.get("context_columns", {}),
                          artifact.features.get("behaviors", {}))


class Scorer:
    """Scores raw-id requests with one ranking model (see the module docstring).

    Use :meth:`load`; ``stats`` is a snapshot of the counters."""

    def __init__(self, model: torch.nn.Module, encoder: RequestEncoder, name: str = "",
                 compiled: str = "off") -> None:
        self.model, self.encoder, self.name = model, encoder, name
        self.features = model.features
        self.compiled = compiled
        self._score_fn = compile_model(model, compiled)
        self._stats = ScorerStats()

    @classmethod
    def load(cls, path: Union[str, Path], role: Optional[str] = None, compiled: str = "off") -> "Scorer":
        """The Scorer of an artifact directory's ranking model (``role``: ranker / fine /
        coarse; default ranker, else fine). ``compiled``: one of :data:`MODES`
        (``"off"`` = eager; see :mod:`recsys.serving.compiled`)."""
        if compiled not in MODES:
            raise ConfigError(f"compiled must be one of {MODES}, got {compiled!r}")
        artifact = open_artifact(path)
        component = artifact.component(role)
        if component.family != "ranking":
            raise CheckpointError(f"{component.path}: the {component.role!r} model is a {component.family} model; "
                                  "a Scorer needs a ranking model (use Recommender for retrieval)")
        model = component.build()
        return cls(model, request_encoder(artifact, model.features), f"{artifact.root}:{component.role}", compiled)

    @property
    def stats(self) -> Dict[str, int]:
        return self._stats.snapshot()

    def score(self, history: Sequence, candidates: Sequence, user=None,
              context: Optional[Mapping] = None) -> np.ndarray:
        """Click probabilities [M] float32 of the M ``candidates`` for one user (see
        :mod:`recsys.serving.request` for what each argument takes)."""
        return self._run([Request(history, candidates, user, context)], ["request"])[0]

    def score_many(self, requests: Sequence[Union[Request, Mapping]]) -> List[np.ndarray]:
        """:meth:`score` of many users in one model call: one array per request, in order.
        One bad request fails the call (a RequestError naming ``requests[i]``)."""
        if isinstance(requests, (str, bytes, Mapping)) or not hasattr(requests, "__len__"):
            raise RequestError(f"score_many takes a list of requests, got {type(requests).__name__}")
        return self._run([as_request(r, i) for i, r in enumerate(requests)],
                         [f"requests[{i}]" for i in range(len(requests))])

    def _run(self, requests: List[Request], names: List[str]) -> List[np.ndarray]:
        try:
            encoded = self.encoder.encode(requests, names)
            out = [np.zeros(0, np.float32) for _ in requests]
            if encoded.rows:
                with torch.inference_mode():
                    probs = torch.sigmoid(self._score_fn(encoded.batch, encoded.candidates)).float().numpy()
                if not np.isfinite(probs).all():
                    raise RequestError(f"{self.name}: the model gave non-finite scores for this request")
                for row, size, scores in zip(encoded.rows, encoded.sizes, probs):
                    out[row] = scores[:size].copy()
        except Exception:
            self._stats.add({"failed_requests": 1})
            raise
        self._stats.add(encoded.counts)
        return out
