"""``Recommender``: one user's history → ranked ``[(raw item id, score), ...]`` through the
cascade of an exported bundle (retrieval + optional coarse + fine ranking).

    rec = Recommender.load("artifacts/bundle", fine_n=20)   # `recsys export RETRIEVAL_RUN --fine RUN --out ...`
    rec.recommend(history=[...raw item ids...], user=raw_user_id) -> [(raw item, score), ...]

Built on :class:`recsys.cascade.Cascade`: the retrieval model's interests searched in the
bundle's FAISS index (checked against the weights it was built from), the user's history
items left out (``exclude_seen``), then each ranking stage present keeps its top M / N by
its logit. Requests are encoded as for the :class:`~recsys.serving.Scorer`
(:mod:`recsys.serving.request`: raw ids through the vocabularies, unknowns counted, the
history truncated to the most recent L of each stage); a user without a (known) history
gets the most popular unseen items, as in the cascade.

The score of a pair is the last stage's: the fine (or coarse) model's logit, the retrieval
inner product when only retrieval runs, the training event count for popularity rows.

Threads: like the Scorer, one instance serves many threads (models and index only read,
counters under a lock). FAISS and torch thread pools are process settings the caller owns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pyarrow.parquet as pq

from recsys.cascade import Cascade, CascadeConfig
from recsys.contract import ContractError, FeatureSpec
from recsys.errors import CheckpointError, ConfigError
from recsys.retrieval.index import FIRST_ITEM, file_sha256, load_index

from .artifact import WEIGHTS, Artifact, open_artifact
from .ids import RequestError
from .request import Request, as_request
from .scorer import ScorerStats, request_encoder

DEFAULT_SIZES = {"retrieve_n": 200, "coarse_m": 100, "fine_n": 20}


def union_spec(specs: Sequence[FeatureSpec]) -> FeatureSpec:
    """Every field any stage reads (one spec, the longest L): what a request must carry."""
    fields = {}
    for spec in specs:
        for f in spec.fields:
            if fields.setdefault(f.name, f) != f:
                raise CheckpointError(f"the bundle's models declare field {f.name!r} differently ({fields[f.name]} vs "
                                      f"{f}); they were not trained on one dataset")
    try:
        return FeatureSpec(list(fields.values()), max(s.max_length for s in specs))
    except ContractError as exc:
        raise CheckpointError(f"the bundle's models do not share one feature spec: {exc}") from None


def _popularity(artifact: Artifact, num_items: int) -> np.ndarray:
    """Training event count per item id [N] (0 for padding / unknown)."""
    path = artifact.root / "vocab" / "item.parquet"
    counts = pq.read_table(str(path), columns=["count"]).column("count").to_numpy()
    if len(counts) + FIRST_ITEM != num_items:
        raise CheckpointError(f"{path}: {len(counts)} items, the retrieval model embeds {num_items - FIRST_ITEM}")
    out = np.zeros(num_items, np.float64)
    out[FIRST_ITEM:] = counts
    return out


class Recommender:
    """Top-N raw-id recommendations for raw-id users (see the module docstring)."""

    def __init__(self, cascade: Cascade, encoder, name: str = "") -> None:
        self.cascade, self.encoder, self.name = cascade, encoder, name
        self.items = encoder.maps["item"]
        self._stats = ScorerStats()

    @classmethod
    def load(cls, path: Union[str, Path], config: Optional[Union[CascadeConfig, Mapping]] = None,
             **sizes) -> "Recommender":
        """The Recommender of a bundle directory. ``config`` (a CascadeConfig or its keys) or
        keyword sizes (``retrieve_n``, ``coarse_m``, ``fine_n``, ``exclude_seen``, ...) set
        the cascade; the defaults are :data:`DEFAULT_SIZES` for the stages the bundle has."""
        artifact = open_artifact(path)
        retrieval = artifact.component("retrieval")
        if retrieval.family != "retrieval":
            raise CheckpointError(f"{retrieval.path}: not a retrieval model")
        stages = {role: artifact.component(role) for role in ("coarse", "fine") if role in artifact.components}
        raw = dict(config.__dict__) if isinstance(config, CascadeConfig) else dict(config or {})
        raw.update(sizes)
        defaults = {"retrieve_n": DEFAULT_SIZES["retrieve_n"]}
        for role, key in (("coarse", "coarse_m"), ("fine", "fine_n")):
            defaults[key] = DEFAULT_SIZES[key] if role in stages else None
            if role not in stages and raw.get(key) is not None:
                raise ConfigError(f"{artifact.root}: {key} given but the bundle has no {role} model "
                                  f"(components: {sorted(artifact.components)})")
        config = CascadeConfig.from_dict({**defaults, **raw}, "Recommender.load")
        models = {"retrieval": retrieval.build(), **{role: c.build() for role, c in stages.items()}}
        entry = artifact.manifest["components"]["retrieval"]
        index_file = retrieval.path / "index" / f"{entry.get('index', 'flat')}.faiss"
        index = load_index(index_file, expect={"model_sha256": file_sha256(retrieval.path / WEIGHTS),
                                               "item_vocabulary": entry.get("item_vocabulary")})
        num_items = models["retrieval"].features.num_items
        cascade = Cascade(models["retrieval"], index, models.get("coarse"), models.get("fine"),
                          item_category=artifact.array("item_category.npy"),
                          popularity=_popularity(artifact, num_items), config=config)
        spec = union_spec([m.features for m in models.values()])
        return cls(cascade, request_encoder(artifact, spec), str(artifact.root))

    @property
    def stats(self) -> Dict[str, int]:
        """Request counters (as the Scorer's) plus the cascade's per-stage counts."""
        return self._stats.snapshot()

    def recommend(self, history: Sequence, user=None, context: Optional[Mapping] = None) -> List[Tuple[object, float]]:
        """[(raw item id, score)] best first for one user (at most the last stage's size)."""
        return self._run([Request(history, (), user, context)], ["request"])[0]

    def recommend_many(self, requests: Sequence[Union[Request, Mapping]]) -> List[List[Tuple[object, float]]]:
        """:meth:`recommend` for many users in one cascade call (``candidates`` not needed)."""
        if isinstance(requests, (str, bytes, Mapping)) or not hasattr(requests, "__len__"):
            raise RequestError(f"recommend_many takes a list of requests, got {type(requests).__name__}")
        normalised = [as_request(dict(r, candidates=()) if isinstance(r, Mapping) and "candidates" not in r else r, i)
                      for i, r in enumerate(requests)]
        return self._run(normalised, [f"requests[{i}]" for i in range(len(requests))])

    def _run(self, requests: List[Request], names: List[str]) -> List[List[Tuple[object, float]]]:
        try:
            if not requests:
                return []
            encoded = self.encoder.encode(requests, names, scoring=False)
            seen_rows = np.concatenate([np.full(len(h), b, np.int64) for b, h in enumerate(encoded.histories)])
            seen_items = np.concatenate(encoded.histories)
            known = seen_items >= FIRST_ITEM
            result = self.cascade.run(encoded.batch, (seen_rows[known], seen_items[known]))
            final = result.final
            out = []
            for items, scores in zip(final.items, final.scores):
                keep = (items >= FIRST_ITEM) & np.isfinite(scores)
                out.append(list(zip(self.items.decode(items[keep]), scores[keep].astype(float).tolist())))
        except Exception:
            self._stats.add({"failed_requests": 1})
            raise
        self._stats.add(encoded.counts)
        self._stats.add({f"cascade_{key}": value for key, value in result.stats.items()})
        return out
