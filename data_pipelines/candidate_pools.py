"""Per-user negative pools read from a retrieval stage's candidates (``negatives: candidates``).

The file is what ``recsys retrieve`` writes (recsys/retrieval/batch.py): Parquet with columns
``user`` (raw user id), ``rank`` (0 = best), ``item`` (raw item id), ``score`` and ``fallback``
(popularity rows for users the retrieval model could not serve). Only ``user``, ``rank``,
``item`` and ``fallback`` are read.

Rows are taken in this order, each left-out row counted once, by the first reason that applies:

* ``fallback_rows``: ``fallback`` is true (popularity, not retrieval, candidates);
* ``beyond_top_rows``: ``rank >= negatives_top`` (when ``negatives_top > 0``);
* ``unknown_user_rows``: the raw user id is not in the build's user vocabulary (or null);
* ``unknown_item_rows``: the raw item id is not in the item vocabulary (unseen, rare under
  ``min_count``, or null): no embedding row of its own, so no negative;
* ``duplicate_rows``: a (user, item) pair already taken.

The pool is CSR over internal user ids: ``offsets [num_users + 1]`` (int64) and ``items [P]``
(int32 internal item ids, sorted within each user, so the pool is a set and does not depend
on the file's row order). It is written as ``negative_pool/{offsets,items}.npy`` in the
build's folder, where every pass-2 partition (in-process or in a worker) loads it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.errors import DataError

from .vocab import FIRST_ID, Vocabulary

POOL_DIR = "negative_pool"
REQUIRED_COLUMNS = ("user", "rank", "item", "fallback")


def read_candidate_pool(path: str, users: Vocabulary, items: Vocabulary,
                        top: int = 0) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(offsets [users.size + 1] int64, items [P] int32, counts) of the candidates file ``path``;
    counts: ``rows`` (read), the left-out rows by reason (module docstring), ``pool_items`` (P)
    and ``users_with_pool``."""
    table = _read(Path(path))
    n_rows = table.num_rows
    fallback = _column(table, "fallback", pa.bool_(), path)
    rank = _column(table, "rank", pa.int64(), path)
    for name, values in (("fallback", fallback), ("rank", rank)):
        if values.null_count:
            raise DataError(f"{path}: column {name!r} has {values.null_count} null value(s); a `recsys retrieve` "
                            "candidates file has none")
    user_raw = _column(table, "user", users.raw.type, path)
    item_raw = _column(table, "item", items.raw.type, path)
    keep = ~fallback.to_numpy(zero_copy_only=False)
    n_fallback = n_rows - int(keep.sum())
    beyond = 0
    if top:
        in_top = rank.to_numpy() < top
        beyond = int((keep & ~in_top).sum())
        keep &= in_top
    user = users.encode(user_raw)
    unknown_user = keep & (user < FIRST_ID)
    keep &= ~unknown_user
    item = items.encode(item_raw)
    unknown_item = keep & (item < FIRST_ID)
    keep &= ~unknown_item
    keys = np.unique(user[keep] * np.int64(items.size) + item[keep])   # sorted by (user, item), one per pair
    pool_users = keys // items.size
    offsets = np.zeros(users.size + 1, np.int64)
    np.cumsum(np.bincount(pool_users, minlength=users.size), out=offsets[1:])
    counts = {"rows": n_rows, "fallback_rows": n_fallback, "beyond_top_rows": beyond,
              "unknown_user_rows": int(unknown_user.sum()), "unknown_item_rows": int(unknown_item.sum()),
              "duplicate_rows": int(keep.sum()) - len(keys), "pool_items": len(keys),
              "users_with_pool": int(np.count_nonzero(np.diff(offsets)))}
    if not len(keys):
        raise DataError(f"{path}: no usable candidates for negatives ({counts}); are they from a run on this "
                        "dataset's source (the same raw user and item ids)?")
    return offsets, (keys % items.size).astype(np.int32), counts


def check_file(path: str) -> None:
    """A DataError naming ``path`` when it is not an existing file."""
    if not Path(path).exists():
        raise DataError(f"{path}: protocol.negatives_file does not exist (write it with `recsys retrieve`)")
    if not Path(path).is_file():
        raise DataError(f"{path}: protocol.negatives_file is not a file (a `recsys retrieve` candidates Parquet)")


def _read(path: Path) -> pa.Table:
    check_file(str(path))
    try:
        names = pq.read_schema(str(path)).names
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: protocol.negatives_file is not a readable Parquet file ({exc}); truncated or "
                        "corrupt: write it again with `recsys retrieve`") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: protocol.negatives_file has no column(s) {missing} (a `recsys retrieve` "
                        f"candidates file has {list(REQUIRED_COLUMNS)} and score); columns: {names}")
    try:
        return pq.read_table(str(path), columns=list(REQUIRED_COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: protocol.negatives_file could not be read ({exc}); truncated or corrupt: write "
                        "it again with `recsys retrieve`") from None


def _column(table: pa.Table, name: str, to: pa.DataType, path: str) -> pa.Array:
    values = table.column(name).combine_chunks()
    try:
        return values.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        what = f"the type of the dataset's raw {name} ids" if name in ("user", "item") else "its type in a " \
            "`recsys retrieve` candidates file"
        raise DataError(f"{path}: column {name!r} ({values.type}) cannot be read as {to} ({what}): {exc}") from None


def save_pool(build_dir: Path, offsets: np.ndarray, items: np.ndarray) -> None:
    folder = Path(build_dir) / POOL_DIR
    folder.mkdir()
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "items.npy", items)


def load_pool(build_dir: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(offsets [num_users + 1], items [P]) saved by :func:`save_pool`."""
    folder = Path(build_dir) / POOL_DIR
    return np.load(folder / "offsets.npy"), np.load(folder / "items.npy")
