"""The synthetic generator as a source: yields its event blocks directly (no CSV round trip)."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from ..config import SyntheticSource
from ..rejections import RejectionReport
from ..schema import BEHAVIORS
from ..synthetic import SyntheticConfig, _chunks


def synthetic_config(source: SyntheticSource) -> SyntheticConfig:
    return SyntheticConfig(**vars(source))


def read_synthetic(source: SyntheticSource, report: RejectionReport) -> Iterator[pa.Table]:
    codes = [BEHAVIORS[name] for name in ("pv", "cart", "fav", "buy")]
    import numpy as np
    lookup = np.array(codes, dtype=np.int8)
    for cols in _chunks(synthetic_config(source)):
        table = pa.table({"user": cols["user"], "item": cols["item"], "category": cols["category"],
                          "behavior": lookup[cols["behavior"]], "timestamp": cols["timestamp"]})
        report.accepted += table.num_rows
        yield table
