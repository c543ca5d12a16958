"""Per-split sample columns as ``.npy`` files, appended partition by partition.

The build knows a column's length only at the end, so each file is written with a
fixed-size placeholder header, the partitions' values are appended behind it, and the
real header (same size: 128 bytes, numpy pads headers to 64-byte multiples) is written
last. The result is an ordinary ``.npy`` that ``np.load(mmap_mode="r")`` memory-maps, so
the loader's RAM does not grow with the number of samples.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Dict

import numpy as np

HEADER_BYTES = 128
# the loader's columns: name -> dtype (as written by samples._table)
SAMPLE_COLUMNS = {"row": np.int64, "user": np.int64, "cut": np.int32, "target_item": np.int32,
                  "target_category": np.int32, "label": np.int8}


def _header(dtype: np.dtype, length: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (length,)})
    header = buf.getvalue()
    if len(header) != HEADER_BYTES:  # cannot happen for 1-D arrays below 10**40 rows
        raise RuntimeError(f"unexpected .npy header size {len(header)}")
    return header


class NpyAppender:
    """One 1-D ``.npy`` file grown by :meth:`append`; :meth:`close` writes the real header."""

    def __init__(self, path: Path, dtype) -> None:
        self.path, self.dtype, self.length = Path(path), np.dtype(dtype), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._file.write(b"\0" * HEADER_BYTES)

    def append(self, values: np.ndarray) -> None:
        if values.dtype != self.dtype:
            raise TypeError(f"{self.path}: expected {self.dtype}, got {values.dtype}")
        self._file.write(np.ascontiguousarray(values).data)
        self.length += len(values)

    def close(self) -> None:
        self._file.seek(0)
        self._file.write(_header(self.dtype, self.length))
        self._file.close()


class SplitColumnWriter:
    """``split_columns/{split}/{column}.npy`` for every split, in partition order."""

    def __init__(self, root: Path, splits: Dict[str, int]) -> None:
        self.splits = splits
        self.files = {(split, name): NpyAppender(root / split / f"{name}.npy", dtype)
                      for split in splits for name, dtype in SAMPLE_COLUMNS.items()}

    def append(self, columns: Dict[str, np.ndarray], split: np.ndarray) -> None:
        for split_name, code in self.splits.items():
            sel = np.flatnonzero(split == code)
            for name in SAMPLE_COLUMNS:
                self.files[(split_name, name)].append(columns[name][sel])

    def close(self) -> None:
        for f in self.files.values():
            f.close()
