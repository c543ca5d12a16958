"""Readers for the Amazon review data (McAuley et al.; the source of DIN's Amazon sets).

* Reviews, JSON lines (2014 5-core and 2018): ``reviewerID``, ``asin``, ``unixReviewTime``
  (``overall`` and the text fields are ignored).
* Metadata: 2014 files are Python-literal lines (``{'asin': ..., 'categories': [[...], ...]}``),
  2018 files strict JSON (``"category": [...]``). Following DIN's preprocessing, an item's
  category is the last element of its last category path (2018: of its category list).
  Items without metadata get the unknown category (counted in the report's notes).
* Ratings-only CSV (``user,item,rating,timestamp``, no header).

Ids stay strings (reviewerID, asin); the vocabularies map them to dense ids.

Item side table (:func:`item_side_table`): ``item, categories`` (every category of every
path, first occurrence order, list<string>), ``brand``, ``price`` (float64; a missing or
unparsable price is null) and ``title``, where the metadata has them.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa

from ..config import SourceConfig
from ..rejections import DataError, RejectionReport
from ..schema import BEHAVIORS
from .csv_blocks import float_validator, int_validator, read_delimited, string_validator
from .text_lines import iter_lines


def read_metadata(path: Path, report: RejectionReport) -> Dict[str, str]:
    """asin → category (last element of the last category path)."""
    out: Dict[str, str] = {}
    for record in _metadata_records(path, report):
        paths = record.get("categories")
        if isinstance(paths, list) and paths and isinstance(paths[-1], list) and paths[-1]:
            out[str(record["asin"])] = str(paths[-1][-1])
        elif isinstance(record.get("category"), list) and record["category"]:
            out[str(record["asin"])] = str(record["category"][-1])
    return out


def _price(value) -> Optional[float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lstrip("$").replace(",", "")
        try:
            return float(text)
        except ValueError:
            return None
    return None


def item_side_table(source: SourceConfig) -> Optional[pa.Table]:
    """``item, categories, brand, price, title`` of every metadata record; None without a
    metadata file. Bad metadata lines are counted once, by the event reader (this second
    read reports into a scratch report)."""
    meta = [Path(p) for p in source.paths if "meta" in Path(p).name]
    if not meta:
        return None
    rows: Dict[str, list] = {k: [] for k in ("item", "categories", "brand", "price", "title")}
    for record in _metadata_records(meta[0], RejectionReport()):
        categories: List[str] = []
        paths = record.get("categories")
        flat = [c for p in paths if isinstance(p, list) for c in p] if isinstance(paths, list) else \
            list(record.get("category") or []) if isinstance(record.get("category"), list) else []
        for c in flat:
            if str(c) not in categories:
                categories.append(str(c))
        rows["item"].append(str(record["asin"]))
        rows["categories"].append(categories)
        rows["brand"].append(str(record["brand"]).strip() or None if record.get("brand") is not None else None)
        rows["price"].append(_price(record.get("price")))
        rows["title"].append(str(record["title"]) if record.get("title") is not None else None)
    return pa.table({"item": pa.array(rows["item"], pa.string()),
                     "categories": pa.array(rows["categories"], pa.list_(pa.string())),
                     "brand": pa.array(rows["brand"], pa.string()), "price": pa.array(rows["price"], pa.float64()),
                     "title": pa.array(rows["title"], pa.string())})


def _metadata_records(path: Path, report: RejectionReport) -> Iterator[dict]:
    """The metadata records with an asin (bad lines are reported)."""
    for number, line in iter_lines(path, report):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            try:
                record = ast.literal_eval(line)   # 2014 metadata: Python literals, never eval'd
            except (ValueError, SyntaxError):
                report.reject("bad_metadata_line", str(path), line=number, value=line[:120])
                continue
        if not isinstance(record, dict) or "asin" not in record:
            report.reject("metadata_without_asin", str(path), line=number, value=line[:120])
            continue
        yield record


def read_reviews(path: Path, categories: Dict[str, str], report: RejectionReport,
                 chunk: int = 500_000) -> Iterator[pa.Table]:
    users: List[str] = []
    items: List[str] = []
    times: List[int] = []
    for number, line in iter_lines(path, report):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            report.reject("bad_json", str(path), line=number, value=f"{exc.msg}: {line[:80]}")
            continue
        missing = [k for k in ("reviewerID", "asin", "unixReviewTime") if k not in record]
        if missing:
            report.reject("missing_field", str(path), line=number, field=missing[0], value=line[:80])
            continue
        try:
            timestamp = int(record["unixReviewTime"])
        except (TypeError, ValueError):
            report.reject("bad_timestamp", str(path), line=number, field="unixReviewTime",
                          value=record["unixReviewTime"])
            continue
        users.append(str(record["reviewerID"]))
        items.append(str(record["asin"]))
        times.append(timestamp)
        report.accepted += 1
        if len(users) >= chunk:
            yield _table(users, items, times, categories, report)
            users, items, times = [], [], []
    if users:
        yield _table(users, items, times, categories, report)


def _table(users, items, times, categories, report) -> pa.Table:
    cats = [categories.get(i) for i in items]
    report.note("item_without_metadata_unknown_category", sum(c is None for c in cats))
    return pa.table({"user": pa.array(users, pa.string()), "item": pa.array(items, pa.string()),
                     "category": pa.array(cats, pa.string()),
                     "behavior": pa.array(np.full(len(users), BEHAVIORS["review"], np.int8)),
                     "timestamp": pa.array(times, pa.int64())})


def read_amazon(source: SourceConfig, report: RejectionReport) -> Iterator[pa.Table]:
    """paths: the reviews file and (optionally) the metadata file (its name contains 'meta')."""
    reviews = [Path(p) for p in source.paths if "meta" not in Path(p).name]
    meta = [Path(p) for p in source.paths if "meta" in Path(p).name]
    if len(reviews) != 1:
        raise DataError(f"amazon source needs exactly one reviews file in paths, got {source.paths}")
    categories = read_metadata(meta[0], report) if meta else {}
    yield from read_reviews(reviews[0], categories, report)


def read_ratings_csv(source: SourceConfig, report: RejectionReport) -> Iterator[pa.Table]:
    """Amazon ratings-only CSV: ``user,item,rating,timestamp`` (no header); no categories."""
    columns = ["user", "item", "rating", "timestamp"]
    validators = {"user": string_validator, "item": string_validator, "rating": float_validator,
                  "timestamp": int_validator}
    fast = {"user": pa.string(), "item": pa.string(), "rating": pa.float64(), "timestamp": pa.int64()}
    for path in source.paths:
        for table in read_delimited(Path(path), columns, validators, fast, report):
            report.note("ratings_csv_unknown_category", table.num_rows)
            yield pa.table({"user": table.column("user"), "item": table.column("item"),
                            "category": pa.nulls(table.num_rows, pa.string()),
                            "behavior": pa.array(np.full(table.num_rows, BEHAVIORS["rating"], np.int8)),
                            "timestamp": table.column("timestamp")})
