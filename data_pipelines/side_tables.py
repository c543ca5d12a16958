"""Side fields: item / user side tables and context fields, encoded once beside the vocabularies.

A side table has one row per id of its owner (item id or user id; row 0 padding and row 1
unknown stay zero) and is stored once, never copied into samples or timelines::

    side/{item,user}/{field}.npy                 id [N] int64 | number [N] float32 | dense [N, d] float32
    side/{item,user}/{field}.values.npy          ids: the values of all rows back to back, int64
    side/{item,user}/{field}.offsets.npy         ids: row r is values[offsets[r]:offsets[r + 1]], [N + 1] int64
    vocab/{table}.parquet                        the vocabulary of an id / ids field's table

Encoding rules (each handling is counted in the build report's notes):

* a side-table row whose key is not in the owner's vocabulary (never seen in the events,
  or rare) is dropped: ``{owner}_side_rows_not_in_vocabulary``; a repeated key keeps its
  first row: ``{owner}_side_rows_duplicate_key``;
* an id of the vocabulary without a side row (e.g. a user without a profile row) gets the
  unknown id 1 (id), an empty list (ids), NaN (number) or zeros (dense):
  ``{owner}s_without_side_row``;
* a null value: unknown id 1 / empty list / NaN / (dense) zeros: ``{field}_null``; an empty
  list is allowed and counted: ``{field}_empty_list``;
* a dense vector of the wrong width or with a NaN / infinite value is an error naming the
  item (content vectors are inputs, never silently repaired).

Vocabularies follow the id rules of :mod:`data_pipelines.vocab` (0 padding, 1 unknown,
then by descending frequency, counted over side-table rows). Fields naming the same
``table`` share one vocabulary; naming a core table (item, category, user) encodes with the
core vocabulary, which is not changed.

Context fields are not stored per sample: the loader derives them from the target step's
event (the timeline event at the sample's cut). ``hour`` (UTC) and ``weekday`` (Monday = 0)
have fixed vocabularies (id = value + 2) saved with their event counts; ``behavior`` uses
the core behaviour codes and table.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import DataError

from .config import CORE_FIELDS, DataConfig, FieldConfig
from .rejections import RejectionReport
from .schema import COLUMN_KINDS, NUM_BEHAVIORS, check_side_table, column_family
from .vocab import FIRST_ID, UNKNOWN_ID, VocabCounter, Vocabulary

CONTEXT_SIZES = {"hour": 24, "weekday": 7}
SECONDS_PER_HOUR, SECONDS_PER_DAY = 3600, 86400
EPOCH_WEEKDAY = 3    # 1970-01-01 was a Thursday (Monday = 0)


def context_values(column: str, timestamps: np.ndarray) -> np.ndarray:
    """Raw hour (0..23, UTC) or weekday (0..6, Monday = 0) of unix-second timestamps."""
    ts = np.asarray(timestamps, dtype=np.int64)
    if column == "hour":
        return (ts // SECONDS_PER_HOUR) % 24
    return (ts // SECONDS_PER_DAY + EPOCH_WEEKDAY) % 7


def context_ids(column: str, timestamps: np.ndarray, behaviors: np.ndarray) -> np.ndarray:
    """Context field ids [B] int64 of the target steps' events."""
    if column == "behavior":
        return np.asarray(behaviors).astype(np.int64)
    return context_values(column, timestamps) + FIRST_ID


class ContextCounter:
    """Event counts per hour / weekday value, accumulated over pass 1's blocks."""

    def __init__(self, fields: List[FieldConfig]) -> None:
        self.columns = sorted({f.column for f in fields if f.owner == "context" and f.column in CONTEXT_SIZES})
        self.counts = {c: np.zeros(CONTEXT_SIZES[c], np.int64) for c in self.columns}

    def update(self, timestamps: pa.ChunkedArray) -> None:
        if not self.columns:
            return
        ts = timestamps.to_numpy()
        for c in self.columns:
            self.counts[c] += np.bincount(context_values(c, ts), minlength=CONTEXT_SIZES[c])

    def vocabularies(self) -> Dict[str, Vocabulary]:
        """Fixed vocabularies: value v has id v + 2 (ids in value order, not by frequency)."""
        return {c: Vocabulary(pa.array(np.arange(CONTEXT_SIZES[c], dtype=np.int64)), self.counts[c])
                for c in self.columns}


def vocabulary_fingerprint(vocab: Vocabulary) -> str:
    """sha256 of a vocabulary's raw values in id order: side tables are stamped with it."""
    h = hashlib.sha256(str(vocab.raw.type).encode())
    raw = vocab.raw
    if pa.types.is_integer(raw.type):
        h.update(raw.to_numpy(zero_copy_only=False).astype(np.int64).tobytes())
    else:
        for value in raw.to_pylist():
            h.update(str(value).encode() + b"\0")
    return h.hexdigest()


def field_dict(name: str, kind: str, owner: str, table: str = "", size: int = 0, frozen: bool = False,
               max_values: int = 0, mean: float = 0.0, std: float = 1.0) -> dict:
    """The manifest form of one field: exactly ``recsys.contract.FieldSpec.to_dict()``."""
    if kind in ("id", "ids") and not table:
        table = name
    if kind == "number":
        size = 1
    return {"name": name, "kind": kind, "owner": owner, "table": table, "size": int(size), "frozen": bool(frozen),
            "max_values": int(max_values), "mean": float(mean), "std": float(std)}


def core_field_dicts(sizes: Dict[str, int]) -> List[dict]:
    return [field_dict("user", "id", "user", size=sizes["user"]),
            field_dict("item", "id", "event", size=sizes["item"]),
            field_dict("category", "id", "event", size=sizes["category"]),
            field_dict("behavior", "id", "event", size=sizes["behavior"])]


def check_side_fields(config: DataConfig, tables: Dict[str, Optional[pa.Table]], where: Dict[str, str]) -> None:
    """Every declared item / user field has its side table, its column, and a column type
    that fits its kind; else a DataError naming the field, the column and the file. Run
    before pass 1, so a typo in a config fails before the events are read."""
    for f in config.fields:
        if f.owner not in ("item", "user"):
            continue
        table = tables.get(f.owner)
        if table is None:
            raise DataError(f"field {f.name!r} (owner {f.owner}) is declared, but the {config.source.format} source "
                            f"{config.source.paths} has no {f.owner} side table (give one with source.{f.owner}_file)")
        check_side_table(table, f.owner, where[f.owner])
        if f.column not in table.column_names:
            raise DataError(f"field {f.name!r}: column {f.column!r} is absent from the {f.owner} table of "
                            f"{where[f.owner]}; its columns: {table.column_names[1:]}")
        family = column_family(table.column(f.column).type)
        if f.kind not in COLUMN_KINDS[family]:
            raise DataError(f"field {f.name!r}: column {f.column!r} of {where[f.owner]} has type "
                            f"{table.column(f.column).type}, which cannot be a {f.kind!r} field "
                            f"(it can be: {list(COLUMN_KINDS[family])})")


class SideTableWriter:
    """Encodes the configured item / user side fields of one build into ``out``."""

    def __init__(self, config: DataConfig, tables: Dict[str, Optional[pa.Table]], where: Dict[str, str],
                 vocabs: Dict[str, Vocabulary], report: RejectionReport, out: Path) -> None:
        check_side_fields(config, tables, where)
        self.config, self.vocabs, self.report, self.out = config, vocabs, report, out
        self.where = where
        self.fields = [f for f in config.fields if f.owner in ("item", "user")]
        self.tables = {owner: self._rows(owner, tables[owner]) for owner in {f.owner for f in self.fields}}

    def _rows(self, owner: str, table: pa.Table) -> dict:
        """The side table's rows kept, sorted by owner id, with their ids."""
        ids = self.vocabs[owner].encode(table.column(owner))
        known = ids >= FIRST_ID
        self.report.note(f"{owner}_side_rows_not_in_vocabulary", int((~known).sum()))
        keep = np.flatnonzero(known)
        # first row of each id wins (a stable sort keeps file order among equal ids)
        order = keep[np.argsort(ids[keep], kind="stable")]
        sorted_ids = ids[order]
        first = np.ones(len(order), bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        self.report.note(f"{owner}_side_rows_duplicate_key", int((~first).sum()))
        order, sorted_ids = order[first], sorted_ids[first]
        size = self.vocabs[owner].size
        self.report.note(f"{owner}s_without_side_row", int(size - FIRST_ID - len(sorted_ids)))
        missing = np.ones(size, bool)
        missing[:FIRST_ID] = False
        missing[sorted_ids] = False
        return {"table": table.take(pa.array(order)), "ids": sorted_ids, "size": size, "missing": missing}

    def missing_rows(self, owner: str) -> Optional[np.ndarray]:
        """[num ids] bool: ids of the owner's vocabulary without a side row (None: no such table)."""
        return self.tables[owner]["missing"] if owner in self.tables else None

    def _table_vocabularies(self) -> Dict[str, Vocabulary]:
        """One vocabulary per id/ids table, counted over the side rows of its fields."""
        out: Dict[str, Vocabulary] = {}
        by_table: Dict[str, List[FieldConfig]] = {}
        for f in self.fields:
            if f.kind in ("id", "ids"):
                by_table.setdefault(f.table, []).append(f)
        for table, fields in by_table.items():
            if table in ("item", "category", "user"):
                out[table] = self.vocabs[table]
                continue
            counter = VocabCounter()
            for f in fields:
                values = self.tables[f.owner]["table"].column(f.column)
                counter.update(pc.list_flatten(values) if f.kind == "ids" else values)
            try:
                out[table] = counter.finish(min(f.min_count for f in fields))
            except ValueError:
                out[table] = Vocabulary(pa.array([], values.type if f.kind == "id" else values.type.value_type),
                                        np.zeros(0, np.int64))
            out[table].save(self.out / "vocab" / f"{table}.parquet")
        return out

    def write(self) -> List[dict]:
        """Write every side field; returns their manifest field dicts."""
        vocabs = self._table_vocabularies()
        specs = []
        for f in self.fields:
            rows = self.tables[f.owner]
            folder = self.out / "side" / f.owner
            folder.mkdir(parents=True, exist_ok=True)
            column = rows["table"].column(f.column).combine_chunks()
            if f.kind == "id":
                specs.append(self._write_id(f, rows, column, vocabs[f.table], folder))
            elif f.kind == "ids":
                specs.append(self._write_ids(f, rows, column, vocabs[f.table], folder))
            elif f.kind == "number":
                specs.append(self._write_number(f, rows, column, folder))
            else:
                specs.append(self._write_dense(f, rows, column, folder))
        return specs

    def _write_id(self, f, rows, column, vocab, folder) -> dict:
        out = np.zeros(rows["size"], np.int64)
        out[FIRST_ID:] = UNKNOWN_ID
        self.report.note(f"{f.name}_null", column.null_count)
        out[rows["ids"]] = vocab.encode(column)
        np.save(folder / f"{f.name}.npy", out)
        return field_dict(f.name, "id", f.owner, f.table, vocab.size)

    def _write_ids(self, f, rows, column, vocab, folder) -> dict:
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        self.report.note(f"{f.name}_null", column.null_count)
        self.report.note(f"{f.name}_empty_list", int((lengths == 0).sum()) - column.null_count)
        per_id = np.zeros(rows["size"], np.int64)
        per_id[rows["ids"]] = lengths
        offsets = np.zeros(rows["size"] + 1, np.int64)
        np.cumsum(per_id, out=offsets[1:])
        values = vocab.encode(pc.list_flatten(column)) if len(column) else np.zeros(0, np.int64)
        np.save(folder / f"{f.name}.values.npy", values.astype(np.int64))
        np.save(folder / f"{f.name}.offsets.npy", offsets)
        return field_dict(f.name, "ids", f.owner, f.table, vocab.size, max_values=int(per_id.max(initial=0)))

    def _write_number(self, f, rows, column, folder) -> dict:
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)   # nulls → NaN
        self.report.note(f"{f.name}_null", int(np.isnan(values).sum()))
        out = np.full(rows["size"], np.nan, np.float32)
        out[:FIRST_ID] = 0.0
        out[rows["ids"]] = values
        finite = out[FIRST_ID:][np.isfinite(out[FIRST_ID:])]
        mean = float(finite.mean()) if len(finite) else 0.0
        std = float(finite.std()) if len(finite) else 1.0
        np.save(folder / f"{f.name}.npy", out)
        return field_dict(f.name, "number", f.owner, mean=mean, std=std if std > 0 else 1.0)

    def _write_dense(self, f, rows, column, folder) -> dict:
        table = rows["table"]
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        valid = ~np.isnan(lengths.astype(np.float64)) if column.null_count else np.ones(len(column), bool)
        width = f.width or (int(lengths[valid][0]) if valid.any() else 0)
        if width < 1:
            raise DataError(f"field {f.name!r}: no vector in {self.where[f.owner]} to take its width from")
        bad = valid & (np.nan_to_num(lengths.astype(np.float64), nan=-1) != width)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"field {f.name!r}: {f.owner} {table.column(f.owner)[i].as_py()!r} in "
                            f"{self.where[f.owner]} has a vector of width {int(lengths[i])}, expected {width}")
        self.report.note(f"{f.name}_null", int((~valid).sum()))
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
        vectors = np.zeros((len(column), width), np.float32)
        vectors[valid] = flat.reshape(-1, width)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise DataError(f"field {f.name!r}: {f.owner} {table.column(f.owner)[i].as_py()!r} in "
                            f"{self.where[f.owner]} has a NaN or infinite value in its vector")
        out = np.zeros((rows["size"], width), np.float32)
        out[rows["ids"]] = vectors
        np.save(folder / f"{f.name}.npy", out)
        return field_dict(f.name, "dense", f.owner, size=width, frozen=f.frozen)


def context_field_dicts(config: DataConfig) -> List[dict]:
    out = []
    for f in config.fields:
        if f.owner != "context":
            continue
        size = NUM_BEHAVIORS if f.column == "behavior" else CONTEXT_SIZES[f.column] + FIRST_ID
        out.append(field_dict(f.name, "id", "context", f.table, size))
    return out


def side_field_names(config: DataConfig) -> List[str]:
    return [f.name for f in config.fields if f.name not in CORE_FIELDS]
