"""Streaming a delimited text file in Arrow blocks, with every bad line counted.

The file (plain or gzip) is decompressed by one thread into blocks of about
``block_size`` bytes cut at a line end, so block boundaries, line numbers and the outcome
depend on the bytes only, never on thread timing. Each block takes a fast path: pyarrow
parses it straight into typed columns on all cores. A block is accepted from the fast
path only when every one of its lines became a row (no blank line, no bad field count, no
value that failed to convert); otherwise that block alone is re-read line by line: blank
lines, undecodable bytes, stray carriage returns and wrong field counts are classified
in Python, the remaining lines are parsed as strings and validated per column, so each
bad line is reported with its file line number and reason and only the bad lines are
lost.

A gzip stream that ends early or is corrupt keeps every complete line before the damage;
the partial line is rejected as ``truncated_file`` and the file's problem is listed in
the report. Formats read here have no quoting (a ``"`` is an ordinary byte), so a stray
quote can never swallow the lines after it.
"""

from __future__ import annotations

import queue
import threading
import zlib
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..rejections import RejectionReport, readable_file

# the padding pyarrow's typed parse accepts around numbers: spaces and tabs only
INT_PATTERN = r"^[ \t]*-?[0-9]+[ \t]*$"
FLOAT_PATTERN = r"^[ \t]*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?[ \t]*$"   # finite decimals only
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

# Validates one string column: returns a boolean mask of valid rows and the parsed column.
Validator = Callable[[pa.Array], "tuple[np.ndarray, pa.Array]"]


def int_validator(array: pa.Array) -> "tuple[np.ndarray, pa.Array]":
    """int64 values; a value that is not an integer or is outside int64 is invalid."""
    ok = pc.fill_null(pc.match_substring_regex(array, INT_PATTERN), False).to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(pa.array(ok), pc.utf8_trim(array, " \t"), pa.scalar("0"))
    try:
        return ok, pc.cast(cleaned, pa.int64())
    except pa.ArrowInvalid:   # an id beyond int64: find which (rare, so per value)
        values = cleaned.to_pylist()
        for i in np.flatnonzero(ok):
            if not INT64_MIN <= int(values[i]) <= INT64_MAX:
                ok[i] = False
        cleaned = pc.if_else(pa.array(ok), cleaned, pa.scalar("0"))
        return ok, pc.cast(cleaned, pa.int64())


def float_validator(array: pa.Array) -> "tuple[np.ndarray, pa.Array]":
    ok = pc.fill_null(pc.match_substring_regex(array, FLOAT_PATTERN), False).to_numpy(zero_copy_only=False)
    cleaned = pc.if_else(pa.array(ok), pc.utf8_trim(array, " \t"), pa.scalar("0"))
    return ok, pc.cast(cleaned, pa.float64())


def string_validator(array: pa.Array) -> "tuple[np.ndarray, pa.Array]":
    ok = pc.fill_null(pc.greater(pc.utf8_length(array), 0), False).to_numpy(zero_copy_only=False)
    return ok, array


def is_gzip(path: Path) -> bool:
    return str(path).endswith((".gz", ".gzip"))


# ---------------------------------------------------------------- bytes → line blocks
class ByteStream:
    """Decompressed bytes of a file in chunks; after exhaustion, ``problem`` is None or
    ``(reason, detail)`` when a gzip stream ended early or was corrupt (the bytes before
    the damage have been yielded)."""

    CHUNK = 1 << 20            # compressed bytes per decompression call
    PLAIN_CHUNK = 16 << 20     # plain files: bytes per read

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.problem: Optional[Tuple[str, str]] = None

    def __iter__(self) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            if not is_gzip(self.path):
                while True:
                    chunk = f.read(self.PLAIN_CHUNK)
                    if not chunk:
                        return
                    yield chunk
            decoder = zlib.decompressobj(wbits=31)
            member_started = False
            while True:
                data = f.read(self.CHUNK)
                if not data:
                    break
                while data:
                    member_started = True
                    try:
                        out = decoder.decompress(data)
                    except zlib.error as exc:
                        self.problem = ("truncated_file", f"corrupt gzip data: {exc}")
                        return
                    if out:
                        yield out
                    if decoder.eof:    # a member ended: another may follow (concatenated gzip)
                        data = decoder.unused_data
                        decoder = zlib.decompressobj(wbits=31)
                        member_started = False
                    else:
                        data = b""
            try:
                tail = decoder.flush()
            except zlib.error as exc:
                self.problem = ("truncated_file", f"corrupt gzip data: {exc}")
                return
            if tail:
                yield tail
            if member_started and not decoder.eof:
                self.problem = ("truncated_file", "the gzip stream ends before its end marker")


def line_blocks(stream: ByteStream, block_size: int) -> Iterator[bytearray]:
    """Blocks of whole lines (each ends with ``\\n`` except possibly the file's last), about
    ``block_size`` bytes each; boundaries depend on the bytes only. Each block is a fresh
    ``bytearray`` (the bytes are copied once, from the read into the block)."""
    buf = bytearray()
    for chunk in stream:
        buf += chunk
        while len(buf) >= block_size:
            cut = buf.rfind(b"\n", 0, block_size) + 1
            if cut == 0:                      # one line longer than a block: up to its end
                cut = buf.find(b"\n", block_size) + 1
                if cut == 0:
                    break                     # its end is not read yet
            rest = buf[cut:]                  # what follows the cut: less than one chunk
            del buf[cut:]
            yield buf
            buf = rest
    if buf:
        yield buf


def prefetched(blocks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """``blocks`` produced by one background thread (decompression and file reads release
    the GIL, so they overlap the parse of the previous block); order is unchanged."""
    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for block in blocks:
                while not stop.is_set():
                    try:
                        q.put(block, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:   # handed to the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, name="recsys-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def count_lines(block: bytes) -> int:
    return block.count(b"\n") + (0 if block.endswith(b"\n") or not block else 1)


# ---------------------------------------------------------------- the reader
def read_delimited(path: Path, columns: Sequence[str], validators: Dict[str, Validator],
                   fast_types: Dict[str, pa.DataType], report: RejectionReport,
                   delimiter: str = ",", header: bool = False, block_size: int = 64 << 20,
                   row_check: Optional[Callable[[Dict[str, pa.Array]], Dict[str, np.ndarray]]] = None,
                   ) -> Iterator[pa.Table]:
    """Yield tables with ``columns`` parsed by ``validators``; bad lines go to ``report``.

    A missing file is an error (``DataError``); an empty one is the file's ``empty_file``
    problem. ``row_check``, if given, receives the parsed columns of a block and returns
    extra ``{reason: bad_mask}`` checks (for example an unknown behaviour type).
    """
    path = Path(path)
    if not readable_file(path, report):
        return
    stream = ByteStream(path)
    damaged_line = yield from read_delimited_blocks(
        prefetched(line_blocks(stream, block_size)), str(path), columns, validators, fast_types, report, delimiter,
        header, row_check, truncated=lambda: stream.problem is not None)
    if stream.problem is not None:
        reason, detail = stream.problem
        report.file_problem(reason, str(path), line=damaged_line,
                            detail=f"{detail}; the lines before it were read, the rest of the file is lost")


def read_delimited_blocks(blocks: Iterator[bytes], name: str, columns: Sequence[str],
                          validators: Dict[str, Validator], fast_types: Dict[str, pa.DataType],
                          report: RejectionReport, delimiter: str = ",", header: bool = False,
                          row_check=None, truncated: Optional[Callable[[], bool]] = None):
    """The block loop of :func:`read_delimited` over any blocks of whole lines (``name`` is
    the file named in the report). The file's last block may end without a newline; when
    the file was cut short (``truncated()`` after the blocks are exhausted) that last
    partial line is rejected as ``truncated_file``. Yields tables; returns the line number
    of the first line not read in full (the partial one, or the one after the last)."""
    first_line = 1                       # file line number of the block's first line
    delim = delimiter.encode()
    held: Optional[bytes] = None         # blocks are processed one behind, to know the last
    for block in blocks:
        if held is not None:
            yield from _block(held, first_line, name, columns, validators, fast_types, report, delim, row_check)
            first_line += count_lines(held)
        if header and first_line == 1:
            end = block.find(b"\n") + 1 or len(block)
            report.lines_read(name, 1)
            block, first_line = block[end:], 2
        held = block
    if held is None:
        return first_line
    if truncated is not None and truncated() and not held.endswith(b"\n"):
        # the partial last line: whatever it parses as, it is not the line that was written
        cut = held.rfind(b"\n") + 1
        partial, held = held[cut:], held[:cut]
        yield from _block(held, first_line, name, columns, validators, fast_types, report, delim, row_check)
        line = first_line + count_lines(held)
        report.lines_read(name, 1)
        report.reject("truncated_file", name, line=line,
                      value=f"partial last line: {partial[:80].decode('utf-8', 'replace')}")
        return line
    yield from _block(held, first_line, name, columns, validators, fast_types, report, delim, row_check)
    return first_line + count_lines(held)


def _block(block, first_line, name, columns, validators, fast_types, report, delim, row_check):
    if not block:
        return
    n_lines = count_lines(block)
    report.lines_read(name, n_lines)
    report.defer()
    table = _fast(block, columns, fast_types, delim, n_lines)
    if table is not None:
        # one segment per parsed batch (a dictionary column's dictionary is per batch)
        segments, start = [], first_line
        for batch in table.to_batches():
            segments.append(({c: batch.column(c) for c in columns}, start + np.arange(batch.num_rows)))
            start += batch.num_rows
    else:
        segments = [_slow(block, first_line, name, columns, validators, report, delim)]
    out = []
    for parsed, lines in segments:
        good = np.ones(len(lines), dtype=bool)
        if row_check is not None and len(good):
            original = dict(parsed)   # row_check may replace columns; examples show raw values
            for reason, bad in row_check(parsed).items():
                bad = bad & good
                _reject_rows(report, name, lines, bad, reason, None, None, original)
                good &= ~bad
        if not good.all():
            mask = pa.array(good)
            parsed = {c: pc.filter(v, mask) for c, v in parsed.items()}
        report.accepted += int(good.sum())
        if good.any():
            out.append(pa.table(parsed))
    report.flush()     # raise mode: the earliest bad line of the block
    yield from out


def _fast(block: bytes, columns, fast_types, delim: bytes, n_lines: int) -> Optional[pa.Table]:
    """Typed, threaded parse; None unless every line became exactly one valid row (a bad
    field count raises here: no invalid-row handler, whose row text must be valid UTF-8)."""
    if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
        return None   # pyarrow ends a line at a lone \r too: the line count would not tell
    try:
        table = pacsv.read_csv(
            pa.py_buffer(block),
            read_options=pacsv.ReadOptions(column_names=list(columns), use_threads=True, block_size=1 << 20),
            parse_options=pacsv.ParseOptions(delimiter=delim.decode(), quote_char=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types=dict(fast_types), null_values=[],
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != n_lines or any(table.column(c).null_count for c in columns):
        return None   # blank lines, stray \r, bad field counts: the slow path names each line
    # pyarrow also parses 0x1f as an integer and nan / inf as floats; the validators (and
    # the documented formats) do not, so such a block takes the slow path. (A one-byte
    # search first: "x" is rare in numeric logs, and a two-byte search costs 10x more.)
    if any(pa.types.is_integer(t) for t in fast_types.values()) and \
            ((b"x" in block and b"0x" in block) or (b"X" in block and b"0X" in block)):
        return None
    for c, t in fast_types.items():
        if pa.types.is_floating(t) and not pc.all(pc.is_finite(table.column(c))).as_py():
            return None
    return table


def _slow(block: bytes, first_line: int, name: str, columns, validators, report: RejectionReport, delim: bytes):
    """Line-by-line classification, then a string parse and per-column validation of the
    well-formed lines. Returns (parsed columns, file line number of each row [n])."""
    raw_lines = block.split(b"\n")
    if block.endswith(b"\n"):
        raw_lines.pop()
    try:
        block.decode("utf-8")
        check_encoding = False
    except UnicodeDecodeError:
        check_encoding = True
    want = len(columns) - 1
    kept: List[bytes] = []
    kept_at: List[int] = []
    for i, line in enumerate(raw_lines):
        number = first_line + i
        if line.endswith(b"\r"):
            line = line[:-1]
        if check_encoding:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.reject("bad_encoding", name, line=number, value=f"byte {exc.start}: {bytes(line[:80])!r}")
                continue
        if not line.strip():
            report.reject("empty_line", name, line=number)
        elif b"\r" in line:
            report.reject("bad_line_break", name, line=number, value=line[:80].decode("utf-8", "replace"))
        elif line.count(delim) != want:
            report.reject("wrong_field_count", name, line=number,
                          value=f"{line.count(delim) + 1} fields: {line[:80].decode('utf-8', 'replace')}")
        else:
            kept.append(line)
            kept_at.append(number)
    lines = np.asarray(kept_at, dtype=np.int64)
    if not kept:
        return {c: pa.array([], pa.string()) for c in columns}, lines
    table = pacsv.read_csv(
        pa.py_buffer(b"\n".join(kept) + b"\n"),
        read_options=pacsv.ReadOptions(column_names=list(columns), use_threads=False, block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=delim.decode(), quote_char=False, escape_char=False,
                                          newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}, null_values=[],
                                             strings_can_be_null=False, quoted_strings_can_be_null=False))
    assert table.num_rows == len(kept), (table.num_rows, len(kept))   # one row per well-formed line
    good = np.ones(len(kept), dtype=bool)
    parsed = {}
    for c in columns:
        column = table.column(c).combine_chunks()
        ok, values = validators[c](column)
        reason = f"empty_{c}" if validators[c] is string_validator else f"bad_{c}"
        _reject_rows(report, name, lines, ~ok & good, reason, c, column)
        good &= ok
        parsed[c] = values
    if not good.all():
        mask = pa.array(good)
        parsed = {c: pc.filter(v, mask) for c, v in parsed.items()}
        lines = lines[good]
    return parsed, lines


def _reject_rows(report, name, lines: np.ndarray, bad: np.ndarray, reason: str, field: Optional[str], column,
                 parsed=None):
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
        report.reject(reason, name, line=int(lines[int(r)]), field=field, value=value)
    report.count_rejected(reason, name, n_bad - len(shown))
