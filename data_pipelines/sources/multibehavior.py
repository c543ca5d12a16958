"""Reader for the Taobao multi-behaviour benchmark of CRGCN / MB-CGCN / HSCD (``taobao/*.txt``).

Files (plain in a folder, or members of a ``.tar.gz``): ``view.txt``, ``cart.txt``,
``buy.txt`` (= ``train.txt``), ``valid.txt``, ``test.txt``, each ``user_id item_id`` per
line, space-separated. There are no timestamps and no categories:

* behaviour = the file (view → pv, cart → cart, buy / valid / test → buy);
* timestamp = the stage: 0 for the training behaviours, 1 for ``valid.txt``, 2 for
  ``test.txt``. Timelines sort stably, so training events keep file order and each user's
  held-out validation and test purchases come last: the ``loo`` protocol then reproduces
  the published split (test = the ``test.txt`` purchase, valid = the ``valid.txt`` one);
* category = unknown (counted in the report's notes).

``train.txt`` is skipped because it is byte-identical to ``buy.txt`` upstream.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pyarrow as pa

from ..config import SourceConfig
from ..rejections import DataError, RejectionReport
from ..schema import BEHAVIORS

FILES = {"view.txt": ("pv", 0), "cart.txt": ("cart", 0), "buy.txt": ("buy", 0), "valid.txt": ("buy", 1),
         "test.txt": ("buy", 2)}


def _members(path: Path) -> List[Tuple[str, bytes]]:
    """(file name, bytes) of the known files, in FILES order."""
    found = {}
    if path.is_dir():
        for name in FILES:
            if (path / name).exists():
                found[name] = (path / name).read_bytes()
    elif path.exists():
        try:
            with tarfile.open(path, "r:*") as tar:
                for member in tar.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and name in FILES:
                        found[name] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{path}: cannot read the archive ({exc}); is it truncated?") from exc
    else:
        raise DataError(f"{path}: does not exist")
    if not found:
        raise DataError(f"{path}: none of {list(FILES)} found")
    return [(name, found[name]) for name in FILES if name in found]


def _parse(name: str, data: bytes, where: str, report: RejectionReport) -> "tuple[np.ndarray, np.ndarray]":
    """user, item int64 arrays of one file; every line is accepted or rejected with its
    file line number (the shared block reader: typed fast path, line-by-line re-read of a
    damaged block only)."""
    from .csv_blocks import int_validator, read_delimited_blocks

    starts = _line_cuts(data, BLOCK_SIZE) + [len(data)]
    blocks = (data[a:b] for a, b in zip(starts, starts[1:]))
    tables = list(read_delimited_blocks(blocks, f"{where}:{name}", ["user", "item"],
                                        {"user": int_validator, "item": int_validator},
                                        {"user": pa.int64(), "item": pa.int64()}, report, delimiter=" "))
    if not tables:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = pa.concat_tables(tables)
    return (table.column("user").to_numpy().astype(np.int64, copy=False),
            table.column("item").to_numpy().astype(np.int64, copy=False))


BLOCK_SIZE = 16 << 20


def _line_cuts(data: bytes, size: int) -> "list[int]":
    """Start offsets of blocks of about ``size`` bytes that begin at a line start."""
    starts, at = [], 0
    while at < len(data):
        starts.append(at)
        nxt = data.find(b"\n", at + size)
        at = len(data) if nxt < 0 else nxt + 1
    return starts


def read_multibehavior(source: SourceConfig, report: RejectionReport) -> Iterator[pa.Table]:
    if len(source.paths) != 1:
        raise DataError(f"multibehavior source needs one folder or .tar.gz in paths, got {source.paths}")
    path = Path(source.paths[0])
    for name, data in _members(path):
        if not data:
            report.file_problem("empty_file", f"{path}:{name}", detail="file is empty (0 lines)")
            continue
        users, items = _parse(name, data, str(path), report)
        behavior, stage = FILES[name]
        report.accepted += len(users)
        report.note("multibehavior_unknown_category", len(users))
        yield pa.table({"user": pa.array(users), "item": pa.array(items),
                        "category": pa.nulls(len(users), pa.int64()),
                        "behavior": pa.array(np.full(len(users), BEHAVIORS[behavior], np.int8)),
                        "timestamp": pa.array(np.full(len(users), stage, np.int64))})
