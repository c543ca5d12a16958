"""Raw ids of a request → the dense ids of a vocabulary (0 padding, 1 unknown, 2.. known).

The vocabularies are the built dataset's ``vocab/<table>.parquet`` files, copied into the
artifact; raw ids keep the type they have in the source data: integers (Taobao, MovieLens,
generated data) or strings (Amazon ASINs). A request must use that type: an integer where
the vocabulary holds strings (or the reverse, a float, a bool, None) is a
:class:`RequestError` naming the field and the position, never a silent unknown. A raw id
of the right type that the vocabulary does not hold maps to 1 (unknown), as in training,
and the caller counts it.

Lookups are read-only after construction (a sorted int64 array searched with
``np.searchsorted``, or a dict for strings), so one map serves any number of threads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from recsys.errors import DataError

FIRST_ID, UNKNOWN_ID = 2, 1


class RequestError(DataError):
    """A request that cannot be scored (wrong type, NaN, unknown field); names what is wrong."""


class IdMap:
    """One vocabulary: ``encode(values, what) -> ids [N] int64`` and ``decode(ids)``."""

    def __init__(self, name: str, raw: pa.Array) -> None:
        self.name = name
        self.size = len(raw) + FIRST_ID
        self.is_int = pa.types.is_integer(raw.type)
        if not (self.is_int or pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type)):
            raise DataError(f"vocabulary {name!r}: raw ids of type {raw.type} are not supported (int or string)")
        self._raw = raw.to_pylist() if not self.is_int else None
        if self.is_int:
            values = raw.to_numpy(zero_copy_only=False).astype(np.int64)
            order = np.argsort(values, kind="stable")
            self._sorted, self._ids = values[order], (order + FIRST_ID).astype(np.int64)
            self._values = values
        else:
            self._index = {value: i + FIRST_ID for i, value in enumerate(self._raw)}

    @property
    def raw_type(self) -> str:
        return "int" if self.is_int else "str"

    def encode(self, values: Sequence, what: str) -> np.ndarray:
        """Dense ids [N] int64 of raw ids (unknown → 1); RequestError for a value of the wrong type."""
        if self.is_int:
            array = _int_array(values, what)
            if not len(array):
                return np.zeros(0, np.int64)
            at = np.minimum(np.searchsorted(self._sorted, array), len(self._sorted) - 1)
            found = (self._sorted[at] == array) if len(self._sorted) else np.zeros(len(array), bool)
            return np.where(found, self._ids[at] if len(self._sorted) else 0, UNKNOWN_ID).astype(np.int64)
        out = np.empty(len(values), np.int64)
        index = self._index
        for i, value in enumerate(values):
            if not isinstance(value, str):
                raise RequestError(f"{what}[{i}]: {value!r} ({type(value).__name__}) is not a raw {self.name} id; "
                                   "this vocabulary holds strings")
            out[i] = index.get(value, UNKNOWN_ID)
        return out

    def decode(self, ids: np.ndarray) -> list:
        """Raw ids of dense ids (padding and unknown → None)."""
        ids = np.asarray(ids, np.int64)
        if self.is_int:
            return [int(self._values[i - FIRST_ID]) if i >= FIRST_ID else None for i in ids.tolist()]
        return [self._raw[i - FIRST_ID] if i >= FIRST_ID else None for i in ids.tolist()]


def _int_array(values: Sequence, what: str) -> np.ndarray:
    """An int64 array of integer raw ids; RequestError naming the first value of another type."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "iu" and values.ndim == 1:
            return values.astype(np.int64, copy=False)
        raise RequestError(f"{what}: a numpy array of dtype {values.dtype} and shape {values.shape}; raw ids of this "
                           "vocabulary are integers (a 1-d integer array or a list of ints)")
    for i, value in enumerate(values):
        if type(value) is not int and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)):
            raise RequestError(f"{what}[{i}]: {value!r} ({type(value).__name__}) is not a raw id of this vocabulary, "
                               "which holds integers")
    try:
        return np.asarray(values, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise RequestError(f"{what}: an id does not fit in int64") from None
