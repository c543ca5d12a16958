"""Reader for Taobao ``UserBehavior.csv`` (Tianchi dataset 649).

No header, five columns ``user_id,item_id,category_id,behavior_type,timestamp`` with
behaviours pv/cart/fav/buy. The public file has about 100M rows, so it is streamed in
blocks (plain or gzip) and never loaded whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..rejections import RejectionReport
from ..schema import BEHAVIORS
from .csv_blocks import int_validator, read_delimited, string_validator

COLUMNS = ("user", "item", "category", "behavior", "timestamp")
TAOBAO_BEHAVIORS = ("pv", "cart", "fav", "buy")


def behavior_codes(names: pa.Array) -> "tuple[pa.Array, np.ndarray]":
    """Map behaviour names to int8 codes; returns (codes, unknown mask)."""
    if pa.types.is_dictionary(names.type):
        dictionary = names.dictionary
        entry_codes = np.array([BEHAVIORS[v] if v in TAOBAO_BEHAVIORS else 0
                                for v in dictionary.to_pylist()], dtype=np.int8)
        codes = entry_codes[names.indices.to_numpy(zero_copy_only=False)]
    else:
        lookup = pc.index_in(names, pa.array(TAOBAO_BEHAVIORS)).to_numpy(zero_copy_only=False)
        table = np.array([BEHAVIORS[b] for b in TAOBAO_BEHAVIORS], dtype=np.int8)
        found = ~np.isnan(lookup) if lookup.dtype.kind == "f" else np.ones(len(lookup), bool)
        codes = np.zeros(len(names), dtype=np.int8)
        idx = np.nan_to_num(lookup, nan=0).astype(np.int64)
        codes[found] = table[idx[found]]
    return pa.array(codes, pa.int8()), codes == 0


def read_userbehavior(path: Path, report: RejectionReport, block_size: int = 64 << 20) -> Iterator[pa.Table]:
    """Yield normalized event tables (user, item, category, behavior, timestamp; int64 ids)."""
    validators = {"user": int_validator, "item": int_validator, "category": int_validator,
                  "behavior": string_validator, "timestamp": int_validator}
    fast = {"user": pa.int64(), "item": pa.int64(), "category": pa.int64(),
            "behavior": pa.dictionary(pa.int32(), pa.string()), "timestamp": pa.int64()}

    def check(parsed: Dict[str, pa.Array]) -> Dict[str, np.ndarray]:
        codes, bad = behavior_codes(parsed["behavior"])
        parsed["behavior"] = codes
        return {"unknown_behavior": bad}

    for table in read_delimited(path, COLUMNS, validators, fast, report, block_size=block_size, row_check=check):
        yield table
