"""The reader → build boundary: normalized events and item / user side tables.

An event is one user action: ``user, item, category, behavior, timestamp`` (plus ``label``
int8 where the source has explicit labels, e.g. MovieLens ratings). Raw ids keep their
source type (int64 for Taobao/S3-Rec/MovieLens, string for Amazon's reviewerID/asin);
vocabularies map them to dense int ids later. ``behavior`` is a small int code (below) and
``timestamp`` is int64 seconds, or the position in the sequence for sources without times.

A side table holds one row per raw item (or user) id: the key column ``item`` (``user``)
plus attribute columns. Each attribute column's Arrow type fixes which field kinds it can
feed (:data:`COLUMN_KINDS`): scalars become ``id`` (or ``number`` when numeric), lists of
ids become ``ids``, lists of floats become ``dense``.

The build calls :func:`check_events` on every table a reader yields and
:func:`check_side_table` on every side table, so a reader that drifts from the schema
fails at the boundary with the reader, column and type named.
"""

from __future__ import annotations

from typing import Optional, Tuple

import pyarrow as pa

from recsys.errors import DataError

# Behaviour codes: 0 is padding in histories, so real behaviours start at 1.
BEHAVIORS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4, "review": 5, "rating": 6}
NUM_BEHAVIORS = max(BEHAVIORS.values()) + 1

EVENT_COLUMNS = ("user", "item", "category", "behavior", "timestamp")
OPTIONAL_EVENT_COLUMNS = ("label",)
RAW_ID_TYPES = (pa.int64(), pa.string())


def event_schema(id_type: pa.DataType = pa.int64(), with_label: bool = False) -> pa.Schema:
    """Schema of normalized events with raw ids of ``id_type`` (int64 or string)."""
    columns = [
        ("user", id_type),
        ("item", id_type),
        ("category", id_type),
        ("behavior", pa.int8()),
        ("timestamp", pa.int64()),
    ]
    if with_label:
        columns.append(("label", pa.int8()))
    return pa.schema(columns)


def check_events(table: pa.Table, where: str) -> pa.Table:
    """``table`` if it follows :func:`event_schema`, else a DataError naming ``where``.

    The user, item and category ids may each be int64 or string (Amazon's ids are strings,
    MovieLens genres int64); an all-null category column of another type (sources without
    categories) is cast to the item id type, the only change made here.
    """
    names = table.column_names
    expected = list(EVENT_COLUMNS) + (["label"] if "label" in names else [])
    if names != expected:
        raise DataError(f"{where}: events must have the columns {expected} in that order, got {names}")
    for name in ("user", "item", "category"):
        column = table.column(name)
        if column.type not in RAW_ID_TYPES:
            if name == "category" and column.null_count == len(column):
                table = table.set_column(2, "category", pa.nulls(len(column), table.column("item").type))
                continue
            raise DataError(f"{where}: event column {name!r} has type {column.type}; raw ids are int64 or string")
    schema = event_schema(pa.int64(), "label" in names)
    for name in ("behavior", "timestamp", "label"):
        if name in names and table.column(name).type != schema.field(name).type:
            raise DataError(f"{where}: event column {name!r} has type {table.column(name).type}, "
                            f"expected {schema.field(name).type}")
    return table


# Arrow type family of a side-table column → the field kinds it can feed
COLUMN_KINDS = {"scalar_id": ("id", "number"), "scalar_number": ("id", "number"), "list_id": ("ids",),
                "list_float": ("dense",), "text": ("id",), "list_text": ("ids",)}


def column_family(dtype: pa.DataType) -> Optional[str]:
    """The :data:`COLUMN_KINDS` family of an Arrow type (None = not allowed in a side table)."""
    if pa.types.is_integer(dtype):
        return "scalar_id"
    if pa.types.is_floating(dtype):
        return "scalar_number"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "text"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        inner = dtype.value_type
        if pa.types.is_integer(inner):
            return "list_id"
        if pa.types.is_floating(inner):
            return "list_float"
        if pa.types.is_string(inner) or pa.types.is_large_string(inner):
            return "list_text"
    return None


def side_table_schema(owner: str, id_type: pa.DataType, columns: Tuple[Tuple[str, pa.DataType], ...] = ()) -> pa.Schema:
    """Schema of an item (``owner="item"``) or user side table: the key, then attributes."""
    return pa.schema([(owner, id_type)] + list(columns))


def check_side_table(table: pa.Table, owner: str, where: str) -> pa.Table:
    """``table`` if it is a valid side table of ``owner`` (key first, known column types)."""
    if owner not in ("item", "user"):
        raise DataError(f"{where}: side tables belong to 'item' or 'user', not {owner!r}")
    if not table.column_names or table.column_names[0] != owner:
        raise DataError(f"{where}: a {owner} side table's first column is {owner!r}, got {table.column_names}")
    if table.column(owner).type not in RAW_ID_TYPES:
        raise DataError(f"{where}: key column {owner!r} has type {table.column(owner).type}; raw ids are int64 or string")
    if table.column(owner).null_count:
        raise DataError(f"{where}: key column {owner!r} has {table.column(owner).null_count} null ids")
    for name in table.column_names[1:]:
        if column_family(table.column(name).type) is None:
            raise DataError(f"{where}: column {name!r} has type {table.column(name).type}; side-table columns are "
                            "integers, floats, strings or lists of them")
    return table
