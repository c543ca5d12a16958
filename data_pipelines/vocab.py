"""Vocabularies: raw id → dense id, 0 = padding, 1 = unknown/rare, then by descending frequency.

Counting streams (``VocabCounter.update`` per block); the finished vocabulary is a Parquet
file beside the data (columns ``raw``, ``id``, ``count``) and encodes new data with unseen
or rare ids mapped to 1. Ties in frequency are broken by raw id, so the ids are
deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PAD_ID = 0
UNKNOWN_ID = 1
FIRST_ID = 2


class VocabCounter:
    """Streaming frequency counter of one field."""

    def __init__(self) -> None:
        self._parts: list[pa.Table] = []
        self._pending = 0

    def update(self, values: pa.Array) -> None:
        counts = pc.value_counts(values)
        self._parts.append(pa.table({"raw": counts.field("values"), "count": counts.field("counts")}))
        self._pending += len(counts)
        if len(self._parts) > 16 and self._pending > 4_000_000:
            self._parts = [self._merged()]
            self._pending = self._parts[0].num_rows

    def _merged(self) -> pa.Table:
        table = pa.concat_tables(self._parts)
        return table.group_by("raw").aggregate([("count", "sum")]).rename_columns(["raw", "count"])

    def finish(self, min_count: int = 1) -> "Vocabulary":
        if not self._parts:
            raise ValueError("cannot build a vocabulary from no values")
        merged = self._merged()
        merged = merged.filter(pc.invert(pc.is_null(merged.column("raw"))))
        return Vocabulary.from_counts(merged.column("raw").combine_chunks(),
                                      merged.column("count").combine_chunks(), min_count)


@dataclass
class Vocabulary:
    """raw: [V] raw ids kept (id order 2, 3, ...); counts: [V]; rare_count: occurrences mapped to 1."""

    raw: pa.Array
    counts: np.ndarray
    rare_values: int = 0
    rare_count: int = 0

    @classmethod
    def from_counts(cls, raw: pa.Array, counts: pa.Array, min_count: int = 1) -> "Vocabulary":
        counts_np = counts.to_numpy(zero_copy_only=False).astype(np.int64)
        keep = counts_np >= min_count
        raw_kept, counts_kept = pc.filter(raw, pa.array(keep)), counts_np[keep]
        order = pc.sort_indices(pa.table({"c": -counts_kept, "r": raw_kept}),
                                sort_keys=[("c", "ascending"), ("r", "ascending")])
        return cls(pc.take(raw_kept, order), counts_kept[order.to_numpy()],
                   rare_values=int((~keep).sum()), rare_count=int(counts_np[~keep].sum()))

    @property
    def size(self) -> int:
        """Number of ids including padding and unknown (the embedding table size)."""
        return len(self.raw) + FIRST_ID

    def encode(self, values: pa.Array) -> np.ndarray:
        """Dense ids [N] int64; unseen or rare values → 1, nulls → 1."""
        index = pc.index_in(values, value_set=self.raw)
        return pc.fill_null(pc.add(index, FIRST_ID), UNKNOWN_ID).to_numpy(zero_copy_only=False).astype(np.int64)

    def decode(self, ids: np.ndarray) -> pa.Array:
        """Raw values of dense ids (padding and unknown decode to null)."""
        ids = np.asarray(ids)
        valid = ids >= FIRST_ID
        taken = pc.take(self.raw, pa.array(np.where(valid, ids - FIRST_ID, 0)))
        return pc.if_else(pa.array(valid), taken, pa.nulls(len(ids), self.raw.type))

    def id_counts(self) -> np.ndarray:
        """Frequency per dense id [size] (0 for padding, the rare total for unknown)."""
        out = np.zeros(self.size, dtype=np.int64)
        out[UNKNOWN_ID] = self.rare_count
        out[FIRST_ID:] = self.counts
        return out

    def save(self, path: Path) -> None:
        table = pa.table({"raw": self.raw, "id": np.arange(FIRST_ID, self.size, dtype=np.int64),
                          "count": self.counts})
        table = table.replace_schema_metadata({"rare_values": str(self.rare_values),
                                               "rare_count": str(self.rare_count)})
        pq.write_table(table, str(path))

    @classmethod
    def load(cls, path: Path) -> "Vocabulary":
        table = pq.read_table(str(path))
        ids = table.column("id").to_numpy()
        if len(ids) and not np.array_equal(ids, np.arange(FIRST_ID, FIRST_ID + len(ids))):
            raise ValueError(f"{path}: vocabulary ids are not 2..{FIRST_ID + len(ids) - 1} in order; file is corrupted")
        meta = table.schema.metadata or {}
        return cls(table.column("raw").combine_chunks(), table.column("count").to_numpy(),
                   int(meta.get(b"rare_values", 0)), int(meta.get(b"rare_count", 0)))


def build_vocabulary(values: pa.Array, min_count: int = 1) -> Vocabulary:
    counter = VocabCounter()
    counter.update(values)
    return counter.finish(min_count)


def stable_hash(values: pa.Array, buckets: int) -> np.ndarray:
    """Partition of raw ids [N] → [0, buckets): a fixed integer mix for ints, the Arrow
    hash-free FNV of the UTF-8 bytes for strings (stable across runs and machines)."""
    if pa.types.is_integer(values.type):
        x = values.to_numpy(zero_copy_only=False).astype(np.uint64)
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        return (x % np.uint64(buckets)).astype(np.int64)
    strings = values.to_pylist()
    out = np.empty(len(strings), dtype=np.int64)
    for i, s in enumerate(strings):  # string ids only come from small sources (Amazon)
        h = 0xCBF29CE484222325
        for byte in (s or "").encode():
            h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        out[i] = h % buckets
    return out
