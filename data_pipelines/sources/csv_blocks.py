"""Streaming a delimited text file in Arrow blocks, with every bad row counted.

Clean files take a fast path: pyarrow parses the columns straight into their types, on
all cores. When a value does not parse (a non-numeric id, say) or a row has the wrong
number of fields, the rest of the file is read again single-threaded with every column as
a string and each row validated, so the report names the line and the field of each bad
row. Blocks already emitted by the fast pass are skipped (boundaries depend on bytes only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..rejections import DataError, RejectionReport, readable_file

INT_PATTERN = r"^\s*-?[0-9]+\s*$"
FLOAT_PATTERN = r"^\s*-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"

# Validates one string column: returns a boolean mask of valid rows and the parsed column.
Validator = Callable[[pa.Array], "tuple[np.ndarray, pa.Array]"]


def int_validator(array: pa.Array) -> "tuple[np.ndarray, pa.Array]":
    ok = pc.fill_null(pc.match_substring_regex(array, INT_PATTERN), False).to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(array), pa.scalar("0"))
    return ok, pc.cast(cleaned, pa.int64())


def float_validator(array: pa.Array) -> "tuple[np.ndarray, pa.Array]":
    ok = pc.fill_null(pc.match_substring_regex(array, FLOAT_PATTERN), False).to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(pa.array(ok), pc.utf8_trim_whitespace(array), pa.scalar("0"))
    return ok, pc.cast(cleaned, pa.float64())


def string_validator(array: pa.Array) -> "tuple[np.ndarray, pa.Array]":
    ok = pc.fill_null(pc.greater(pc.utf8_length(array), 0), False).to_numpy(zero_copy_only=False)
    return ok, array


def open_input(path: Path) -> pa.NativeFile:
    """Plain or gzip (by extension) input stream."""
    compression = "gzip" if str(path).endswith((".gz", ".gzip")) else None
    return pa.input_stream(str(path), compression=compression, buffer_size=1 << 20)


class _LineTracker:
    """Maps a row's index in a block back to its physical line number.

    Rows rejected by the invalid-row handler are not in the blocks, so a row's line is its
    running index plus the handler-rejected lines before it in the same block (the reader
    runs single-threaded, so the handler calls made while parsing a block belong to it).
    """

    def __init__(self, header_lines: int) -> None:
        self.consumed = header_lines          # physical lines before the current block
        self.block_invalid: List[int] = []    # 1-based lines the handler skipped in this block

    def line_of(self, index_in_block: int) -> int:
        line = self.consumed + 1 + index_in_block
        for invalid in sorted(self.block_invalid):
            if invalid <= line:
                line += 1
        return line

    def advance(self, n_rows: int) -> None:
        self.consumed += n_rows + len(self.block_invalid)
        self.block_invalid = []


def read_delimited(path: Path, columns: Sequence[str], validators: Dict[str, Validator],
                   fast_types: Dict[str, pa.DataType], report: RejectionReport,
                   delimiter: str = ",", header: bool = False, block_size: int = 64 << 20,
                   row_check: Optional[Callable[[Dict[str, pa.Array]], Dict[str, np.ndarray]]] = None,
                   ) -> Iterator[pa.Table]:
    """Yield tables with ``columns`` parsed by ``validators``; bad rows go to ``report``.

    row_check, if given, receives the parsed columns of a block and returns extra
    ``{reason: bad_mask}`` checks (for example an unknown behaviour type).
    """
    path = Path(path)
    if not readable_file(path, report):
        return
    state = _ReadState()
    try:
        yield from _read(path, columns, validators, fast_types, report, delimiter, header, block_size,
                         row_check, typed=True, state=state)
    except _NeedsSlowPath:
        # Block boundaries depend on bytes only, so the string pass skips the blocks the
        # typed pass already emitted (and already counted).
        yield from _read(path, columns, validators, fast_types, report, delimiter, header, block_size,
                         row_check, typed=False, state=_ReadState(skip_blocks=state.blocks_done))


class _NeedsSlowPath(Exception):
    pass


class _ReadState:
    def __init__(self, skip_blocks: int = 0) -> None:
        self.skip_blocks = skip_blocks
        self.blocks_done = 0


def _read(path, columns, validators, fast_types, report, delimiter, header, block_size, row_check, typed, state):
    tracker = _LineTracker(header_lines=1 if header else 0)
    field_count_errors: List[tuple] = []

    def on_invalid(row) -> str:
        number = int(row.number) if row.number is not None and row.number >= 0 else None
        tracker.block_invalid.append(number if number is not None else 0)
        field_count_errors.append((number, row.text, row.actual_columns))
        return "skip"

    types = dict(fast_types) if typed else {c: pa.string() for c in columns}
    read_options = pacsv.ReadOptions(column_names=list(columns), skip_rows=1 if header else 0,
                                     block_size=block_size, use_threads=typed)
    parse_options = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid,
                                       quote_char='"' if delimiter == "," else False)
    convert_options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                           quoted_strings_can_be_null=False)
    try:
        reader = pacsv.open_csv(open_input(path), read_options=read_options, parse_options=parse_options,
                                convert_options=convert_options)
    except pa.ArrowInvalid as exc:
        if "Empty CSV" in str(exc):
            report.reject("empty_file", str(path), value="file has no rows")
            return
        if typed and "conversion" in str(exc).lower():
            raise _NeedsSlowPath() from exc
        raise DataError(f"{path}: cannot read as delimited text: {exc}") from exc
    except (OSError, EOFError) as exc:
        report.reject("truncated_file", str(path), line=1, value=str(exc))
        return
    block = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            if typed and field_count_errors:
                raise _NeedsSlowPath()
            break
        except pa.ArrowInvalid as exc:
            if typed and "conversion" in str(exc).lower():
                raise _NeedsSlowPath() from exc
            report.reject("truncated_file", str(path), line=tracker.consumed + 1, value=str(exc))
            break
        except (OSError, EOFError) as exc:
            report.reject("truncated_file", str(path), line=tracker.consumed + 1, value=str(exc))
            break
        if typed and field_count_errors:
            # the threaded typed pass cannot tell exact line numbers: redo from this block
            # single-threaded, which names the line of every bad row
            raise _NeedsSlowPath()
        n = batch.num_rows
        report.defer()
        if block < state.skip_blocks:
            block += 1
            field_count_errors.clear()
            tracker.advance(n)
            continue
        for number, text, actual in field_count_errors:
            report.reject("wrong_field_count", str(path), line=number, value=f"{actual} fields: {text}")
        field_count_errors.clear()
        good = np.ones(n, dtype=bool)
        if typed:
            parsed = {c: batch.column(c) for c in columns}
        else:
            parsed = {}
            for c in columns:
                column = batch.column(c)
                ok, values = validators[c](column)
                reason = f"empty_{c}" if validators[c] is string_validator else f"bad_{c}"
                _reject_rows(report, path, tracker, ~ok & good, reason, c, column)
                good &= ok
                parsed[c] = values
        if row_check is not None:
            original = dict(parsed)   # row_check may replace columns; examples show raw values
            for reason, bad in row_check(parsed).items():
                bad = bad & good
                _reject_rows(report, path, tracker, bad, reason, None, None, original)
                good &= ~bad
        report.flush()
        tracker.advance(n)
        if not good.all():
            mask = pa.array(good)
            parsed = {c: pc.filter(v, mask) for c, v in parsed.items()}
        report.accepted += int(good.sum())
        block += 1
        state.blocks_done = block
        yield pa.table(parsed)
    for number, text, actual in field_count_errors:
        report.reject("wrong_field_count", str(path), line=number, value=f"{actual} fields: {text}")


def _reject_rows(report, path, tracker, bad: np.ndarray, reason: str, field: Optional[str], column, parsed=None):
    n_bad = int(bad.sum())
    if not n_bad:
        return
    rows = np.flatnonzero(bad)
    room = max(report.max_examples - len(report.examples.get(reason, [])), 0)
    shown = rows[:room] if report.on_error == "skip" else rows[:1]
    for r in shown:
        if column is not None:
            value = column[int(r)].as_py()
        elif parsed is not None:
            value = ",".join(str(parsed[c][int(r)].as_py()) for c in parsed)
        else:
            value = None
        report.reject(reason, str(path), line=tracker.line_of(int(r)), field=field, value=value)
    if n_bad > len(shown):
        report.counts[reason] += n_bad - len(shown)
