"""Reader for the S3-Rec / ICLRec sequence files (``<Name>.txt`` + ``<Name>_item2attributes.json``).

Each line is ``uid item1 item2 ...`` in time order; there are no timestamps, so an event's
position in the line is its time. An item's category is its first attribute by default
(``category_attribute: last`` takes the last); items without attributes get the unknown
category and are counted in the report's notes. All attributes of each item, in file order
(so the category stays the first), are the ``attributes`` list column of the item side table
(:func:`item_side_table`; a field of kind ``ids`` declares it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List

import numpy as np
import pyarrow as pa

from ..config import SourceConfig
from ..rejections import DataError, RejectionReport
from ..schema import BEHAVIORS
from .text_lines import iter_lines, read_json_object


def _split_paths(source: SourceConfig) -> "tuple[Path, Path | None]":
    sequences = [Path(p) for p in source.paths if "item2attributes" not in Path(p).name]
    attributes = [Path(p) for p in source.paths if "item2attributes" in Path(p).name]
    if len(sequences) != 1:
        raise DataError(f"s3rec source needs exactly one sequence file in paths, got {source.paths}")
    return sequences[0], attributes[0] if attributes else None


def item_attributes(path: Path) -> Dict[int, List[int]]:
    """item id → attribute ids (brand and category ids share one space upstream)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: attribute file does not exist")
    raw = read_json_object(path)
    return {int(k): [int(a) for a in v] for k, v in raw.items()}


def item_side_table(source: SourceConfig) -> "pa.Table | None":
    """``item`` (int64), ``attributes`` (list<int64>: brand and category ids, one space
    upstream) of every item of the attribute file; None without one."""
    _, attributes_path = _split_paths(source)
    if attributes_path is None:
        return None
    attributes = item_attributes(attributes_path)
    keys = sorted(attributes)
    return pa.table({"item": pa.array(keys, pa.int64()),
                     "attributes": pa.array([attributes[k] for k in keys], pa.list_(pa.int64()))})


def read_s3rec(source: SourceConfig, report: RejectionReport, chunk_users: int = 50_000) -> Iterator[pa.Table]:
    sequences, attributes_path = _split_paths(source)
    attributes = item_attributes(attributes_path) if attributes_path else {}
    pick = 0 if source.category_attribute == "first" else -1
    users: List[int] = []
    items: List[int] = []
    positions: List[int] = []
    for number, line in iter_lines(sequences, report):
        tokens = line.split()
        if not tokens:
            report.reject("empty_line", str(sequences), line=number)
            continue
        try:
            ids = [int(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not t.lstrip("-").isdigit())
            report.reject("bad_item", str(sequences), line=number, field="item", value=bad)
            continue
        if len(ids) < 2:
            report.reject("empty_sequence", str(sequences), line=number, field="items", value=line)
            continue
        users.extend([ids[0]] * (len(ids) - 1))
        items.extend(ids[1:])
        positions.extend(range(len(ids) - 1))
        report.accepted += len(ids) - 1
        if len(users) >= chunk_users * 10:
            yield _table(users, items, positions, attributes, pick, report)
            users, items, positions = [], [], []
    if users:
        yield _table(users, items, positions, attributes, pick, report)


def _table(users, items, positions, attributes, pick, report) -> pa.Table:
    item_arr = np.asarray(items, dtype=np.int64)
    categories = [attributes.get(i, [None])[pick] if attributes.get(i) else None for i in items]
    missing = sum(c is None for c in categories)
    report.note("item_without_attributes_unknown_category", missing)
    return pa.table({
        "user": pa.array(users, pa.int64()), "item": pa.array(item_arr),
        "category": pa.array(categories, pa.int64()),
        "behavior": pa.array(np.full(len(items), BEHAVIORS["review"], np.int8)),
        "timestamp": pa.array(np.asarray(positions, dtype=np.int64)),
    })
