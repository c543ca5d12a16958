"""Normalized event schema shared by every reader.

An event is one user action: ``user, item, category, behavior, timestamp``. Raw ids keep
their source type (int64 for Taobao/S3-Rec/MovieLens, string for Amazon's reviewerID/asin);
vocabularies map them to dense int ids later. ``behavior`` is a small int code (below) and
``timestamp`` is int64 seconds, or the position in the sequence for sources without times.
"""

from __future__ import annotations

import pyarrow as pa

# Behaviour codes: 0 is padding in histories, so real behaviours start at 1.
BEHAVIORS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4, "review": 5, "rating": 6}
NUM_BEHAVIORS = max(BEHAVIORS.values()) + 1

EVENT_COLUMNS = ("user", "item", "category", "behavior", "timestamp")


def event_schema(id_type: pa.DataType = pa.int64()) -> pa.Schema:
    """Schema of normalized events with raw ids of ``id_type`` (int64 or string)."""
    return pa.schema([
        ("user", id_type),
        ("item", id_type),
        ("category", id_type),
        ("behavior", pa.int8()),
        ("timestamp", pa.int64()),
    ])
