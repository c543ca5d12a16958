"""A fixed user split for the ``users`` protocol (``protocol.user_split_file``).

ComiRec's split assigns each user to train / valid / test by a seeded hash of the user id
(data_pipelines.samples). A split file overrides that for the users it lists: a published
user list, a held-out cohort, or the shifted test users of the generator's coupling mode
(data_pipelines.synthetic.write_shift_split).

The file is Parquet with columns ``user`` (the raw user id, the log's type) and ``split``
(``train``, ``valid`` or ``test``). Checked, with the file, row and field named:

* a missing, unreadable or truncated file, a missing column, a ``user`` column that cannot
  be read as the log's user id type: an error;
* a null user or split, a split outside the three names, a user listed twice: an error;
* a listed user who is not in the log: counted (``unknown_users``), nothing to assign;
* a user of the log who is not listed: split by the hash as without a file, counted
  (``hashed_users``).

The counts go into the build's ``manifest.json`` under ``user_split_file``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.errors import DataError

from .vocab import FIRST_ID, Vocabulary

SPLIT_NAMES = ("train", "valid", "test")
HASHED = -1          # in the per-user array: no listed split, use the hash
ARRAY_FILE = "user_split.npy"


def read_user_split(path: str, users: Vocabulary, codes: dict) -> Tuple[np.ndarray, dict]:
    """(fixed [users.size] int8: the split code of each internal user id, ``HASHED`` where the
    file does not list the user; counts). ``codes`` maps split names to the build's codes."""
    table = _read(Path(path))
    user_values = table.column("user").combine_chunks()
    split_values = table.column("split").combine_chunks()
    for name, values in (("user", user_values), ("split", split_values)):
        if values.null_count:
            row = int(np.flatnonzero(np.asarray(values.is_null()))[0])
            raise DataError(f"{path}: row {row}, field {name!r}: null ({values.null_count} null row(s)); every "
                            "row names a user and its split")
    try:
        split_values = split_values.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{path}: field 'split' ({split_values.type}) is not text: {exc}") from None
    known = pc.is_in(split_values, pa.array(SPLIT_NAMES))
    if not pc.all(known).as_py():
        row = int(np.flatnonzero(~np.asarray(known))[0])
        raise DataError(f"{path}: row {row}, field 'split': {split_values[row].as_py()!r} is not one of "
                        f"{list(SPLIT_NAMES)}")
    try:
        raw = user_values.cast(users.raw.type)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise DataError(f"{path}: field 'user' ({user_values.type}) cannot be read as the log's user ids "
                        f"({users.raw.type}): {exc}") from None
    ids = users.encode(raw)
    listed = ids >= FIRST_ID
    order = np.argsort(ids[listed], kind="stable")
    sorted_ids = ids[listed][order]
    twice = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(twice):
        rows = np.flatnonzero(listed)[order]
        first, second = sorted(rows[twice[0]:twice[0] + 2].tolist())
        raise DataError(f"{path}: row {second}, field 'user': user {raw[second].as_py()!r} is listed twice "
                        f"(first in row {first}); a user has one split")
    fixed = np.full(users.size, HASHED, np.int8)
    names = np.asarray(split_values.to_numpy(zero_copy_only=False), dtype=object)
    for name in SPLIT_NAMES:
        fixed[ids[listed & (names == name)]] = codes[name]
    # the log's users are the ids from FIRST_ID on (0 = padding, 1 = unknown)
    log_users = fixed[FIRST_ID:]
    counts = {"rows": table.num_rows, "unknown_users": int((~listed).sum()),
              "hashed_users": int((log_users == HASHED).sum()),
              **{f"{name}_users": int((log_users == codes[name]).sum()) for name in SPLIT_NAMES}}
    return fixed, counts


def check_file(path: str) -> None:
    """A DataError naming ``path`` when it is not an existing file."""
    if not Path(path).is_file():
        what = "does not exist" if not Path(path).exists() else "is not a file"
        raise DataError(f"{path}: protocol.user_split_file {what} (a Parquet file with columns user, split)")


def _read(path: Path) -> pa.Table:
    check_file(str(path))
    try:
        names = pq.read_schema(str(path)).names
        missing = [c for c in ("user", "split") if c not in names]
        if missing:
            raise DataError(f"{path}: protocol.user_split_file has no column(s) {missing}; columns: {names}")
        return pq.read_table(str(path), columns=["user", "split"])
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: protocol.user_split_file is not a readable Parquet file ({exc}); truncated or "
                        "corrupt") from None
