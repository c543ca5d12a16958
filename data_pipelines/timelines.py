"""Timelines: one row per user with list columns, stably sorted by time.

A partition's encoded events become a table with ``user`` (dense id) and list columns
``items``, ``categories``, ``behaviors``, ``timestamps`` (plus ``labels`` when the source
has explicit labels, e.g. MovieLens ratings). Sorting is stable, so events with equal
timestamps keep their file order.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LIST_COLUMNS = {"item": "items", "category": "categories", "behavior": "behaviors",
                "timestamp": "timestamps", "label": "labels"}


def build_timelines(encoded: pa.Table) -> "tuple[pa.Table, Dict[str, np.ndarray], np.ndarray]":
    """encoded: events with dense int ids (user, item, category, behavior, timestamp[, label]).

    Returns (timeline table, flat value arrays by event column, offsets [U + 1]).
    """
    order = pc.sort_indices(encoded, sort_keys=[("user", "ascending"), ("timestamp", "ascending")])
    users_sorted = pc.take(encoded.column("user"), order).to_numpy()
    boundaries = np.flatnonzero(np.diff(users_sorted)) + 1
    offsets = np.concatenate([[0], boundaries, [len(users_sorted)]]).astype(np.int64)
    user_ids = users_sorted[offsets[:-1]] if len(users_sorted) else np.zeros(0, np.int64)
    flat = {}
    columns = {"user": pa.array(user_ids, pa.int64())}
    arrow_offsets = pa.array(offsets.astype(np.int32) if offsets[-1] < 2**31 else offsets)
    for name, list_name in LIST_COLUMNS.items():
        if name not in encoded.column_names:
            continue
        values = pc.take(encoded.column(name), order).to_numpy()
        flat[name] = values
        list_type = pa.ListArray if arrow_offsets.type == pa.int32() else pa.LargeListArray
        columns[list_name] = list_type.from_arrays(arrow_offsets, pa.array(values))
    return pa.table(columns), flat, offsets
