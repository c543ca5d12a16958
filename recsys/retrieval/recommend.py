"""Batch recommendation through the cascade: a file of users → ranked lists.

``recommend(config, users, out)`` (``recsys recommend CONFIG --users users.parquet --out
recs.parquet``) runs :class:`recsys.cascade.Cascade` (FAISS retrieval → coarse ranking →
fine ranking, each ranking stage optional) over the users file in chunks, with the machinery
of ``recsys retrieve`` (:mod:`recsys.retrieval.batch`): the same users-file format (a
``user`` column of raw ids, an optional ``history`` column of raw item lists), the same
histories (the user's timeline in the retrieval run's built dataset, its last
``max_length`` behaviours the input of every stage), the same counted fallbacks (unknown
users and users without history get the most popular unseen items through every stage,
``fallback`` = true), parts written per chunk and resumed after a kill, the output complete
or absent, a progress bar.

**Config** (YAML, :class:`RecommendConfig`; ``configs/cascade/*.yaml``); a ranking stage
is switched off by one line, ``coarse: null`` / ``fine: null`` (``--set coarse=null``)::

    retrieval:
      run: RUN             # a retrieval run (FAISS stage)
      index: flat          # its index name (flat is built on first use)
      nprobe: null         # override the index's search parameters
      ef_search: null
      n: 500               # candidates per user
      per_interest: null   # per interest (null = n)
      exclude_seen: true
      diversity: 0.0       # ComiRec's λ
    coarse: {run: RUN, m: 100}    # or null
    fine: {run: RUN, n: 20}       # or null
    max_rows: 16384        # rows per ranking forward
    fallback_ranking: popularity  # or rank (recsys.cascade)
    chunk_users: 2048
    threads: 1

Every run must share the retrieval run's item, category and user vocabularies (checked from
their ``data_fingerprint.json`` before any model is loaded: a one-line ConfigError).

**Output.** Parquet, one row per recommended item, users in input order: ``user`` (raw),
``rank`` (int32, 0 = best), ``item`` (raw id), ``score`` (float32, the last stage's score:
its logit, or the FAISS inner product when both ranking stages are off, or the popularity
count of a fallback row kept in popularity order), one ``{stage}_score`` column per stage
that ran (``retrieval_score``, ``coarse_score``, ``fine_score``: what each stage gave the
item) and ``fallback`` (bool). The counts (users, fallbacks, short lists per stage) and the
runs' and index's identities are in the schema metadata (key ``recsys``,
:func:`recsys.retrieval.batch.read_summary`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Union

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from recsys.cascade import STAGES, Cascade, CascadeConfig, check_same_vocabulary
from recsys.errors import CheckpointError, ConfigError

from .batch import UserHistories, _open_users, chunk_inputs, finish_parts, flat_rows, run_parts, user_batch
from .index import file_sha256

COUNT_KEYS = ("users", "retrieved", "unknown_users", "no_history", "history_rows", "unknown_history_items",
              "short_users", "recommended", "retrieval_short", "coarse_short", "fine_short")


@dataclass(frozen=True)
class RecommendConfig:
    """A ``recsys recommend`` config (module docstring)."""

    retrieval_run: str
    coarse_run: Optional[str] = None
    fine_run: Optional[str] = None
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    index: str = "flat"
    nprobe: Optional[int] = None
    ef_search: Optional[int] = None
    chunk_users: int = 2048
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("chunk_users",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("nprobe", "ef_search", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        for stage, run, size in (("coarse", self.coarse_run, self.cascade.coarse_m),
                                 ("fine", self.fine_run, self.cascade.fine_n)):
            if (run is None) != (size is None):
                key = "m" if stage == "coarse" else "n"
                raise ConfigError(f"{stage}.run and {stage}.{key} go together (the stage is off when {stage} is "
                                  f"null); got {stage}.run = {run!r}, {stage}.{key} = {size!r}")

    @property
    def runs(self) -> Dict[str, Path]:
        return {stage: Path(run) for stage, run in (("retrieval", self.retrieval_run), ("coarse", self.coarse_run),
                                                     ("fine", self.fine_run)) if run is not None}

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "<recommend config>") -> "RecommendConfig":
        """The YAML form (module docstring) → a config. Strict: an unknown key is a
        ConfigError naming the file and the key."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: a recommend config is a mapping, got {type(raw).__name__}")
        raw = dict(raw)
        _check_keys(raw, ("retrieval", "coarse", "fine") + JOB_KEYS + RANKING_KEYS, source)
        retrieval = raw.get("retrieval")
        if not isinstance(retrieval, Mapping) or not retrieval.get("run"):
            raise ConfigError(f"{source}: retrieval.run (a retrieval run directory) is required")
        _check_keys(retrieval, ("run",) + RETRIEVAL_KEYS + INDEX_KEYS, f"{source}: retrieval")
        cascade = {RETRIEVAL_KEYS_TO_CASCADE.get(k, k): v for k, v in retrieval.items() if k in RETRIEVAL_KEYS}
        cascade.update({k: raw[k] for k in RANKING_KEYS if k in raw})
        runs = {}
        for stage, size in (("coarse", "m"), ("fine", "n")):
            section = raw.get(stage)
            if section is None:
                continue
            if not isinstance(section, Mapping) or not section.get("run") or section.get(size) is None:
                raise ConfigError(f"{source}: {stage} is null (stage off) or {{run: RUN, {size}: N}}, got {section!r}")
            _check_keys(section, ("run", size), f"{source}: {stage}")
            runs[stage] = str(section["run"])
            cascade["coarse_m" if stage == "coarse" else "fine_n"] = section[size]
        try:
            return cls(retrieval_run=str(retrieval["run"]), coarse_run=runs.get("coarse"), fine_run=runs.get("fine"),
                       cascade=CascadeConfig(**cascade), **{k: retrieval[k] for k in INDEX_KEYS if k in retrieval},
                       **{k: raw[k] for k in JOB_KEYS if k in raw})
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict:
        """The YAML form (``from_dict(to_dict())`` is the same config)."""
        c = self.cascade
        retrieval = {"run": self.retrieval_run, "index": self.index, "nprobe": self.nprobe,
                     "ef_search": self.ef_search, "n": c.retrieve_n, "per_interest": c.per_interest,
                     "exclude_seen": c.exclude_seen, "diversity": c.diversity}
        return {"retrieval": retrieval,
                "coarse": None if self.coarse_run is None else {"run": self.coarse_run, "m": c.coarse_m},
                "fine": None if self.fine_run is None else {"run": self.fine_run, "n": c.fine_n},
                "max_rows": c.max_rows, "fallback_ranking": c.fallback_ranking,
                "chunk_users": self.chunk_users, "threads": self.threads}


JOB_KEYS = ("chunk_users", "threads")
RANKING_KEYS = ("max_rows", "fallback_ranking")
INDEX_KEYS = ("index", "nprobe", "ef_search")
RETRIEVAL_KEYS = ("n", "per_interest", "exclude_seen", "diversity")
RETRIEVAL_KEYS_TO_CASCADE = {"n": "retrieve_n"}


def _check_keys(section: Mapping, known, source: str) -> None:
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")


def load_recommend_config(path: Union[str, Path], overrides: Optional[Mapping] = None) -> RecommendConfig:
    """Read a YAML recommend config; ``overrides`` {dotted key: value} replace entries
    (``fine.n``, ``coarse`` (null: stage off), ``retrieval.n``, ``threads``, ...)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recommend config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    for key, value in (overrides or {}).items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{path}: cannot set {key}: {part} is not a mapping")
        node[last] = value
    return RecommendConfig.from_dict(raw, str(path))


def recommend(config: RecommendConfig, users: Union[str, Path], out: Union[str, Path], overwrite: bool = False,
              progress: bool = True, after_chunk: Optional[Callable[[int], None]] = None) -> dict:
    """Run the batch recommendation job (module docstring); returns the summary (counts,
    runs, index stamp, timings). ``after_chunk(i)`` is called after chunk i is written."""
    from recsys import run_state
    from recsys.artifacts import read_model_json, spec_diff
    from recsys.runner import load_config, open_dataset, run_features

    started = time.perf_counter()
    users, out = Path(users), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    runs = config.runs
    max_length = 0
    for stage, run in runs.items():          # families, side fields and vocabularies from JSON, before any weights
        described = read_model_json(run)
        wanted = "retrieval" if stage == "retrieval" else "ranking"
        if described.get("family") != wanted:
            raise ConfigError(f"{run}: the {stage} stage needs a {wanted} model, this run trained a "
                              f"{described.get('family')} one")
        features = described["features"]
        max_length = max(max_length, features.max_length)
        unsupported = [f.name for f in features.of("user", side_only=True) + features.of("context", side_only=True)]
        if unsupported:
            raise ConfigError(f"{run}: the {stage} model uses user/context fields {unsupported}, which recommend "
                              "does not gather yet (models over the core and item fields only)")
    check_same_vocabulary(runs)
    if not (runs["retrieval"] / "config.yaml").exists():
        raise CheckpointError(f"{runs['retrieval']} is not a finished run: config.yaml is missing")
    run_config = load_config(runs["retrieval"] / "config.yaml")
    dataset = open_dataset(run_config, build=False)
    run_state.check_same_vocabulary(runs["retrieval"], dataset)
    threads = config.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        ctx = UserHistories(dataset, max_length)          # the longest history any stage reads
        cascade = Cascade.from_runs(runs["retrieval"], runs.get("coarse"), runs.get("fine"), config.cascade,
                                    item_category=ctx.item_category, popularity=ctx.counts,
                                    index_name=config.index)
        current = run_features(dataset, run_config)
        if cascade.retrieval_model.features != current:
            raise CheckpointError(f"{runs['retrieval']}: the model was trained on data with different vocabularies "
                                  f"(checkpoint, data): {spec_diff(cascade.retrieval_model.features, current)}")
        cascade.index.set_search_params(config.nprobe, config.ef_search)
        users_file = _open_users(users)
        stages = [s for s in STAGES if s in runs]
        key = {"runs": {s: str(r.resolve()) for s, r in runs.items()},
               "weights": {s: file_sha256(r / "model.safetensors") for s, r in runs.items()},
               "index_sha256": cascade.index.stamp["index_sha256"], "users": str(users.resolve()),
               "users_sha256": file_sha256(users), "config": config.to_dict()}
        part_paths, totals, reused = run_parts(
            users_file, out, key, config.chunk_users,
            lambda chunk, first_row: _chunk_rows(ctx, cascade, stages, chunk, str(users), first_row),
            COUNT_KEYS, "recommend", progress, after_chunk)
        seconds = time.perf_counter() - started
        summary = {"runs": {s: str(r) for s, r in runs.items()}, "users_file": str(users), "counts": totals,
                   "config": config.to_dict(), "stages": stages,
                   "index": {k: cascade.index.stamp.get(k) for k in ("kind", "factory", "params", "model_sha256",
                                                                     "item_vocabulary", "index_sha256")},
                   "resumed_parts": reused, "threads": threads, "seconds": round(seconds, 3),
                   "users_per_second": round(totals["users"] / max(seconds, 1e-9), 1)}
        finish_parts(part_paths, out, _output_schema(users_file, ctx, stages), summary)
        return summary
    finally:
        torch.set_num_threads(previous_threads)


def _chunk_rows(ctx: UserHistories, cascade: Cascade, stages, chunk: pa.RecordBatch, source: str,
                first_row: int) -> "tuple[pa.Table, Dict[str, int]]":
    counts = {k: 0 for k in COUNT_KEYS}
    raw_users = chunk.column("user")
    ids, hist, lengths, seen, _ = chunk_inputs(ctx, chunk, source, first_row, counts)
    # the cascade's fallback rows (empty history) are the job's ~use_model rows: an unknown user
    # without a given history has an empty one
    result = cascade.run(user_batch(ids, hist, lengths), seen)
    final = result.final
    for stage in stages:
        counts[f"{stage}_short"] = result.stats[f"{stage}_short"]
    counts["short_users"] = int((final.counts < final.items.shape[1]).sum())
    counts["recommended"] = int(final.counts.sum())
    owner, rank = flat_rows(final.items)
    columns = {"user": raw_users.take(pa.array(owner)), "rank": pa.array(rank.astype(np.int32)),
               "item": ctx.items.decode(final.items[owner, rank]), "score": pa.array(final.scores[owner, rank])}
    for stage in stages:
        columns[f"{stage}_score"] = pa.array(result.stage_scores[stage][owner, rank])
    columns["fallback"] = pa.array(result.fallback[owner])
    return pa.table(columns), counts


def _output_schema(users_file: pq.ParquetFile, ctx: UserHistories, stages) -> pa.Schema:
    return pa.schema([("user", users_file.schema_arrow.field("user").type), ("rank", pa.int32()),
                      ("item", ctx.items.raw.type), ("score", pa.float32())] +
                     [(f"{stage}_score", pa.float32()) for stage in stages] + [("fallback", pa.bool_())])
