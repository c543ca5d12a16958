"""Batch candidate retrieval: a file of users → (user, rank, item, score) candidates.

``retrieve(run_dir, users, out)`` (``recsys retrieve RUN --users users.parquet --out
candidates.parquet``) streams the users file in chunks of ``chunk_users`` rows:

* **Users file.** Parquet with a ``user`` column of raw user ids, as in the source data (the
  type is cast to the vocabulary's). The history of a user is the user's whole timeline in
  the run's built dataset (its last ``max_length`` behaviours are the model input). An
  optional ``history`` column (list of raw item ids) replaces the timeline for that row
  (a null list keeps the timeline); its items are mapped through the item vocabulary
  (unknown ones become id 1, as in training, and are counted), categories come from the
  item table, behaviour types are not given (padding 0).
* **Fallbacks, counted.** A user the user vocabulary does not know (``unknown_users``) or
  one with an empty history (``no_history``) gets the most popular items (training event
  counts; ``score`` = the count, ``fallback`` = true). Every input row gets candidates or is
  counted: nothing is dropped silently. A user with fewer than ``top_n`` unseen items gets
  fewer rows (``short_users``).
* **Search.** The run's index ``RUN/index/NAME.faiss`` (checked against the run's weights
  and item vocabulary; the exact ``flat`` index is built on first use), K interests ×
  ``per_interest`` each, merged (:mod:`recsys.retrieval.search`); already-seen items (the
  history) are left out unless ``exclude_seen=False``; optional λ-greedy diversity.
  FAISS and torch use ``threads`` threads.
* **Output.** ``out`` is Parquet with columns ``user`` (raw, the input's values), ``rank``
  (int32, 0 = best), ``item`` (raw item id), ``score`` (float32), ``fallback`` (bool), one
  row per candidate, users in input order; the counts and the index stamp are in its schema
  metadata (key ``recsys``). It is written complete or not at all: every chunk is written
  to ``.OUT.parts/part-NNNNNN.parquet`` (temporary name + rename), the parts are then
  concatenated into a temporary file renamed to ``out``, and the parts removed. A killed
  job resumes where it stopped when run again with the same arguments (the parts folder
  records the job: run weights, index stamp, users file sha256 and the options; a different
  job's parts are discarded). An existing ``out`` is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from recsys.contract import Batch
from recsys.data_pipelines.loader import gather_histories
from recsys.errors import CheckpointError, ConfigError, DataError

from .index import FIRST_ITEM, IndexConfig, build_run_index, file_sha256, index_path, load_run_index
from .search import Candidates, check_finite_interests, multi_interest_search

COUNT_KEYS = ("users", "retrieved", "unknown_users", "no_history", "short_users", "history_rows",
              "unknown_history_items", "candidates")


@dataclass(frozen=True)
class RetrieveOptions:
    top_n: int = 200
    per_interest: Optional[int] = None      # None = top_n (ComiRec)
    exclude_seen: bool = True
    diversity: float = 0.0                  # ComiRec's λ (0 = plain score merge)
    index: str = "flat"
    nprobe: Optional[int] = None            # override the index's search parameters
    ef_search: Optional[int] = None
    chunk_users: int = 4096
    threads: Optional[int] = None

    def __post_init__(self) -> None:
        if self.top_n < 1 or self.chunk_users < 1:
            raise ConfigError(f"top_n ({self.top_n}) and chunk_users ({self.chunk_users}) must be at least 1")
        if not np.isfinite(self.diversity) or self.diversity < 0:
            raise ConfigError(f"diversity (λ) must be a finite number >= 0, got {self.diversity}")


class UserHistories:
    """The run's dataset seen from the user side: raw user id → timeline, item vocabulary,
    item categories, popularity. Built once per job."""

    def __init__(self, dataset, max_length: int) -> None:
        self.dataset, self.max_length = dataset, max_length
        self.users = dataset.vocabulary("user")
        self.items = dataset.vocabulary("item")
        self.offsets = np.asarray(dataset.flat("offsets"), dtype=np.int64)
        self.flat = {name: dataset.flat(name) for name in ("item", "category", "behavior", "timestamp")
                     if (dataset.path / "flat" / f"{name}.npy").exists()}
        timeline_users = pq.read_table(str(dataset.path / "timelines"), columns=["user"]).column("user").to_numpy()
        self.row_of_user = np.full(self.users.size, -1, dtype=np.int64)
        self.row_of_user[np.asarray(timeline_users, dtype=np.int64)] = np.arange(len(timeline_users))
        self.item_category = np.asarray(dataset.item_category, dtype=np.int64)
        counts = self.items.id_counts()
        self.counts = counts
        popular = np.argsort(-counts[FIRST_ITEM:], kind="stable") + FIRST_ITEM
        self.popular = popular.astype(np.int64)

    def encode_users(self, raw: pa.Array, source: str) -> np.ndarray:
        try:
            raw = raw.cast(self.users.raw.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"{source}: column 'user' ({raw.type}) cannot be read as the vocabulary's raw user ids "
                            f"({self.users.raw.type}): {exc}") from None
        return self.users.encode(raw)


def _open_users(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise FileNotFoundError(f"users file {path} does not exist")
    try:
        users = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    names = users.schema_arrow.names
    if "user" not in names:
        raise DataError(f"{path}: no 'user' column (raw user ids); columns: {names}")
    if "history" in names and not pa.types.is_list(users.schema_arrow.field("history").type) and \
            not pa.types.is_large_list(users.schema_arrow.field("history").type):
        raise DataError(f"{path}: column 'history' must be a list of raw item ids, got "
                        f"{users.schema_arrow.field('history').type}")
    return users


def _histories(ctx: UserHistories, ids: np.ndarray, chunk: pa.RecordBatch, source: str, first_row: int,
               counts: Dict[str, int]):
    """(history item/category/behavior/timestamp [B, L], lengths [B], seen (row, item) pairs)
    of one chunk: the timeline of each known user, or the row's given history."""
    batch, length = len(ids), ctx.max_length
    rows = np.where(ids >= FIRST_ITEM, ctx.row_of_user[ids], -1)
    has_row = rows >= 0
    safe_rows = np.where(has_row, rows, 0)
    timeline_len = np.where(has_row, ctx.offsets[safe_rows + 1] - ctx.offsets[safe_rows], 0)
    positions, lengths, valid = gather_histories(ctx.offsets, safe_rows, timeline_len, length)
    hist = {}
    for name, values in ctx.flat.items():
        hist[name] = np.where(valid, np.asarray(values[positions]), 0).astype(np.int64)
    # every timeline item is "seen", not only the last L
    seen_owner = np.repeat(np.arange(batch), timeline_len)
    first = np.cumsum(timeline_len) - timeline_len
    seen_pos = np.arange(int(timeline_len.sum())) - np.repeat(first, timeline_len) + \
        np.repeat(ctx.offsets[safe_rows], timeline_len)
    seen_items = np.asarray(ctx.flat["item"][seen_pos], dtype=np.int64)

    if "history" in chunk.schema.names:
        given = chunk.column("history")
        override = ~np.asarray(given.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if override.any():
            counts["history_rows"] += int(override.sum())
            given_rows = np.flatnonzero(override)
            lists = given.take(pa.array(given_rows))
            list_offsets = np.asarray(lists.offsets.to_numpy(), dtype=np.int64)
            list_offsets = list_offsets - list_offsets[0]
            values = lists.flatten()
            try:
                values = values.cast(ctx.items.raw.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise DataError(f"{source} rows {first_row}..{first_row + batch - 1}: column 'history' items "
                                f"({values.type}) cannot be read as raw item ids ({ctx.items.raw.type}): {exc}") \
                    from None
            item_ids = ctx.items.encode(values)
            counts["unknown_history_items"] += int((item_ids == 1).sum())
            given_len = np.diff(list_offsets)
            # the last L items of each given list, right-padded, most recent last
            g_positions, g_lengths, g_valid = gather_histories(list_offsets, np.arange(len(given_rows)), given_len,
                                                               length)
            g_items = np.where(g_valid, item_ids[g_positions] if len(item_ids) else 0, 0)
            hist["item"][given_rows] = g_items
            hist["category"][given_rows] = np.where(g_valid, ctx.item_category[g_items], 0)
            for name in hist:
                if name not in ("item", "category"):
                    hist[name][given_rows] = 0
            lengths = lengths.copy()
            lengths[given_rows] = g_lengths
            # seen: the given list replaces the timeline's items for those rows
            keep = ~np.isin(seen_owner, given_rows)
            given_owner = np.repeat(given_rows, given_len)
            seen_owner = np.concatenate([seen_owner[keep], given_owner])
            seen_items = np.concatenate([seen_items[keep], item_ids])
    return hist, lengths, (seen_owner, seen_items)


def user_batch(ids: np.ndarray, hist: dict, lengths: np.ndarray) -> Batch:
    """The model input of users ``ids`` [B] with histories ``hist`` {field: [B, L]}
    (targets and labels are placeholders: retrieval and candidate scoring ignore them)."""
    batch = len(ids)
    zeros = torch.zeros(batch, dtype=torch.long)
    tensors = {name: torch.from_numpy(values) for name, values in hist.items()}
    return Batch(user=torch.from_numpy(ids), label=torch.zeros(batch), lengths=torch.from_numpy(lengths),
                 target_item=zeros, target_category=zeros, hist_item=tensors["item"],
                 hist_category=tensors["category"], hist_behavior=tensors["behavior"],
                 hist_timestamp=tensors.get("timestamp"))


def _interests(model: torch.nn.Module, hist: dict, lengths: np.ndarray, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.user_interests(user_batch(ids, hist, lengths)).interests.float().cpu().numpy()


def chunk_inputs(ctx: UserHistories, chunk: pa.RecordBatch, source: str, first_row: int, counts: Dict[str, int]):
    """One chunk of the users file → (user ids [B], histories {field: [B, L]}, lengths [B],
    seen (row, item) pairs, use_model [B] bool: False for the popularity fallback rows),
    counting users, unknown_users, no_history, history_rows, unknown_history_items and
    retrieved (the model rows) into ``counts``."""
    ids = ctx.encode_users(chunk.column("user"), source)
    counts["users"] = len(ids)
    hist, lengths, seen = _histories(ctx, ids, chunk, source, first_row, counts)
    unknown = ids < FIRST_ITEM
    # a row with a given history is a known user as far as the model goes
    if "history" in chunk.schema.names:
        unknown &= np.asarray(chunk.column("history").is_null().to_numpy(zero_copy_only=False), dtype=bool)
    empty = (lengths == 0) & ~unknown
    use_model = ~unknown & ~empty
    counts["unknown_users"], counts["no_history"] = int(unknown.sum()), int(empty.sum())
    counts["retrieved"] = int(use_model.sum())
    return ids, hist, lengths, seen, use_model


def flat_rows(items: np.ndarray) -> "tuple[np.ndarray, np.ndarray]":
    """items [B, n] (valid first, 0 padding) → (owner row, rank) of every valid entry, in
    row order: the long output table's rows."""
    per_user = (items >= FIRST_ITEM).sum(axis=1)
    owner = np.repeat(np.arange(len(items)), per_user)
    rank = np.arange(int(per_user.sum())) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    return owner, rank


def _chunk_rows(ctx: UserHistories, model, index, options: RetrieveOptions, chunk: pa.RecordBatch, source: str,
                first_row: int) -> "tuple[pa.Table, Dict[str, int]]":
    counts = {k: 0 for k in COUNT_KEYS}
    raw_users = chunk.column("user")
    ids, hist, lengths, seen, use_model = chunk_inputs(ctx, chunk, source, first_row, counts)
    batch = len(ids)

    items = np.zeros((batch, options.top_n), dtype=np.int64)
    scores = np.full((batch, options.top_n), -np.inf, dtype=np.float32)
    model_rows = np.flatnonzero(use_model)
    if len(model_rows):
        interests = _interests(model, {k: v[model_rows] for k, v in hist.items()}, lengths[model_rows],
                               ids[model_rows])
        if not np.isfinite(interests).all():            # name the users (only then: .as_py() per row)
            check_finite_interests(interests, [f"{raw_users[int(r)].as_py()!r} (row {first_row + int(r)})"
                                               for r in model_rows])
        remap = np.full(batch, -1, dtype=np.int64)
        remap[model_rows] = np.arange(len(model_rows))
        in_model = use_model[seen[0]]
        model_seen = (remap[seen[0][in_model]], seen[1][in_model]) if options.exclude_seen else None
        found: Candidates = multi_interest_search(index, interests, options.top_n, options.per_interest, model_seen,
                                                  options.diversity, ctx.item_category)
        items[model_rows], scores[model_rows] = found.items, found.scores
    fallback_rows = np.flatnonzero(~use_model)
    if len(fallback_rows):
        popular = ctx.popular[:options.top_n]
        items[fallback_rows, :len(popular)] = popular
        scores[fallback_rows, :len(popular)] = ctx.counts[popular].astype(np.float32)
    per_user = (items >= FIRST_ITEM).sum(axis=1)
    counts["short_users"] = int((per_user < options.top_n).sum())
    counts["candidates"] = int(per_user.sum())
    owner, rank = flat_rows(items)
    flat_items = items[owner, rank]
    table = pa.table({"user": raw_users.take(pa.array(owner)), "rank": pa.array(rank.astype(np.int32)),
                      "item": ctx.items.decode(flat_items), "score": pa.array(scores[owner, rank]),
                      "fallback": pa.array(~use_model[owner])})
    return table, counts


def _job_key(run_dir: Path, users: Path, index_stamp: dict, options: RetrieveOptions) -> dict:
    return {"run": str(run_dir.resolve()), "model_sha256": index_stamp["model_sha256"],
            "index_sha256": index_stamp["index_sha256"], "users": str(users.resolve()),
            "users_sha256": file_sha256(users), "options": asdict(options)}


def _prepare_parts(parts: Path, key: dict) -> "tuple[bool, Path]":
    """The parts folder of this job (resumed when it records the same job)."""
    job = parts / "job.json"
    if parts.exists():
        try:
            if json.loads(job.read_text()) == key:
                return True, parts
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            pass
        shutil.rmtree(parts)            # another job's (or a damaged) partial output
    parts.mkdir(parents=True)
    tmp = parts / ".job.json.tmp"
    tmp.write_text(json.dumps(key, indent=2))
    tmp.replace(job)
    return False, parts


def _write_part(table: pa.Table, counts: Dict[str, int], path: Path) -> None:
    table = table.replace_schema_metadata({"recsys_counts": json.dumps(counts)})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, str(tmp))
    tmp.replace(path)


def _read_part_counts(path: Path) -> Dict[str, int]:
    try:
        meta = pq.read_schema(str(path)).metadata or {}
        return json.loads(meta[b"recsys_counts"])
    except (pa.ArrowInvalid, OSError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: a damaged part of an interrupted retrieve ({exc!r}); delete "
                              f"{path.parent} and run again") from None


def retrieve(run_dir: Union[str, Path], users: Union[str, Path], out: Union[str, Path],
             options: RetrieveOptions = RetrieveOptions(), overwrite: bool = False, progress: bool = True,
             after_chunk: Optional[Callable[[int], None]] = None) -> dict:
    """Run the batch retrieval job (module docstring); returns the summary (counts, stamp,
    timings). ``after_chunk(i)`` is called after chunk i is written (tests interrupt there)."""
    from recsys import run_state
    from recsys.runner import load_run, open_dataset, run_features
    from recsys.artifacts import spec_diff

    started = time.perf_counter()
    run_dir, users, out = Path(run_dir), Path(users), Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    config, model = load_run(run_dir)
    if config.family != "retrieval":
        raise ConfigError(f"{run_dir}: `recsys retrieve` needs a retrieval model, this run trained "
                          f"{config.model.class_path} (ranking)")
    unsupported = [f.name for f in model.features.of("user", side_only=True) + model.features.of("context",
                                                                                                 side_only=True)]
    if unsupported:
        raise ConfigError(f"{run_dir}: the model uses user/context fields {unsupported}, which retrieve does not "
                          "gather yet (models over the core and item fields only)")
    dataset = open_dataset(config, build=False)
    current = run_features(dataset, config)
    if model.features != current:
        raise CheckpointError(f"{run_dir}: the model was trained on data with different vocabularies (checkpoint, "
                              f"data): {spec_diff(model.features, current)}")
    run_state.check_same_vocabulary(run_dir, dataset)
    threads = options.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:
        if options.index == "flat" and not index_path(run_dir, "flat").exists():
            build_run_index(run_dir, IndexConfig("flat"), model=model)
        index = load_run_index(run_dir, options.index)
        index.set_search_params(options.nprobe, options.ef_search)
        users_file = _open_users(users)
        ctx = UserHistories(dataset, model.features.max_length)
        model.eval()
        part_paths, totals, reused = run_parts(
            users_file, out, _job_key(run_dir, users, index.stamp, options), options.chunk_users,
            lambda chunk, first_row: _chunk_rows(ctx, model, index, options, chunk, str(users), first_row),
            COUNT_KEYS, "retrieve", progress, after_chunk)
        seconds = time.perf_counter() - started
        summary = {"run": str(run_dir), "users_file": str(users), "counts": totals, "options": asdict(options),
                   "index": {k: index.stamp.get(k) for k in ("kind", "factory", "params", "model_sha256",
                                                             "item_vocabulary", "index_sha256", "faiss_version")},
                   "resumed_parts": reused, "threads": threads, "seconds": round(seconds, 3),
                   "users_per_second": round(totals["users"] / max(seconds, 1e-9), 1)}
        finish_parts(part_paths, out, _output_schema(users_file, ctx), summary)
        return summary
    finally:
        torch.set_num_threads(previous_threads)


def run_parts(users_file: pq.ParquetFile, out: Path, key: dict, chunk_users: int,
              process: Callable[[pa.RecordBatch, int], "tuple[pa.Table, Dict[str, int]]"], count_keys,
              desc: str, progress: bool = True, after_chunk: Optional[Callable[[int], None]] = None) \
        -> "tuple[list, Dict[str, int], int]":
    """The streamed, resumable part of a users-file job (``retrieve``, ``recommend``): each
    chunk of ``chunk_users`` rows (columns user[, history]) → ``process(chunk, first_row)``
    → (table, counts) written as ``.OUT.parts/part-NNNNNN.parquet`` (temporary name +
    rename), a part already there (same job ``key``) reused. Returns (part paths, summed
    counts over ``count_keys``, parts reused); :func:`finish_parts` writes ``out``."""
    _, parts_dir = _prepare_parts(out.with_name(f".{out.name}.parts"), key)
    bar = tqdm(total=users_file.metadata.num_rows, desc=desc, unit="user", disable=not progress)
    first_row, reused, part_paths = 0, 0, []
    columns = [c for c in ("user", "history") if c in users_file.schema_arrow.names]
    for i, chunk in enumerate(users_file.iter_batches(batch_size=chunk_users, columns=columns)):
        path = parts_dir / f"part-{i:06d}.parquet"
        part_paths.append(path)
        if not path.exists():
            table, counts = process(chunk, first_row)
            _write_part(table, counts, path)
        else:
            reused += 1
        first_row += chunk.num_rows
        bar.update(chunk.num_rows)
        if after_chunk is not None:
            after_chunk(i)
    bar.close()
    totals = {k: 0 for k in count_keys}
    for path in part_paths:
        for name, value in _read_part_counts(path).items():
            totals[name] = totals.get(name, 0) + value
    return part_paths, totals, reused


def finish_parts(part_paths, out: Path, schema: pa.Schema, summary: dict) -> None:
    """Concatenate the parts into ``out`` (temporary name + rename, ``summary`` in the
    schema metadata under ``recsys``) and remove the parts folder."""
    _concatenate(part_paths, out, schema, summary)
    shutil.rmtree(out.with_name(f".{out.name}.parts"))


def _output_schema(users_file: pq.ParquetFile, ctx: UserHistories) -> pa.Schema:
    return pa.schema([("user", users_file.schema_arrow.field("user").type), ("rank", pa.int32()),
                      ("item", ctx.items.raw.type), ("score", pa.float32()), ("fallback", pa.bool_())])


def _concatenate(parts, out: Path, schema: pa.Schema, summary: dict) -> None:
    schema = schema.with_metadata({"recsys": json.dumps(summary)})
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for path in parts:
                table = pq.read_table(str(path)).replace_schema_metadata(None)
                writer.write_table(table.cast(schema.remove_metadata()).replace_schema_metadata(schema.metadata))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def read_summary(path: Union[str, Path]) -> dict:
    """The summary (counts, options, index stamp) a finished retrieve stored in ``path``."""
    meta = pq.read_schema(str(path)).metadata or {}
    if b"recsys" not in meta:
        raise DataError(f"{path}: not a `recsys retrieve` output (no summary in its metadata)")
    return json.loads(meta[b"recsys"])
