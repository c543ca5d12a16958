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

import io
import tarfile
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

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
    """user, item int64 arrays of one file; bad lines counted with their line numbers."""
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
        table = pacsv.read_csv(io.BytesIO(data),
                               read_options=pacsv.ReadOptions(column_names=["user", "item"]),
                               parse_options=pacsv.ParseOptions(delimiter=" ", invalid_row_handler=on_invalid),
                               convert_options=pacsv.ConvertOptions(column_types={"user": pa.int64(),
                                                                                 "item": pa.int64()}))
        if not invalid and table.column("user").null_count == 0 and table.column("item").null_count == 0:
            return table.column("user").to_numpy(), table.column("item").to_numpy()
    except pa.ArrowInvalid:
        pass
    # slow path: validate line by line so the report names each bad line
    users, items = [], []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        parts = line.split()
        if len(parts) != 2:
            report.reject("wrong_field_count", f"{where}:{name}", line=number, value=line[:80])
            continue
        try:
            user, item = int(parts[0]), int(parts[1])
        except ValueError:
            field = "user" if not parts[0].lstrip("-").isdigit() else "item"
            report.reject(f"bad_{field}", f"{where}:{name}", line=number, field=field, value=line[:80])
            continue
        users.append(user)
        items.append(item)
    return np.asarray(users, np.int64), np.asarray(items, np.int64)


def read_multibehavior(source: SourceConfig, report: RejectionReport) -> Iterator[pa.Table]:
    if len(source.paths) != 1:
        raise DataError(f"multibehavior source needs one folder or .tar.gz in paths, got {source.paths}")
    path = Path(source.paths[0])
    for name, data in _members(path):
        if not data.strip():
            report.reject("empty_file", f"{path}:{name}", value="file is empty")
            continue
        users, items = _parse(name, data, str(path), report)
        behavior, stage = FILES[name]
        report.accepted += len(users)
        report.note("multibehavior_unknown_category", len(users))
        yield pa.table({"user": pa.array(users), "item": pa.array(items),
                        "category": pa.nulls(len(users), pa.int64()),
                        "behavior": pa.array(np.full(len(users), BEHAVIORS[behavior], np.int8)),
                        "timestamp": pa.array(np.full(len(users), stage, np.int64))})
