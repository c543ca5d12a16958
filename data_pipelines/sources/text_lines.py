"""Line-by-line reading of small text sources (S3-Rec, JSON lines), plain or gzip.

Every line of the file is either yielded or rejected with its file line number: a blank
line is ``empty_line``, an undecodable one ``bad_encoding`` (only that line: the lines
after it are still read), the partial last line of a cut gzip stream ``truncated_file``
(with the file's problem listed in the report). A missing file is an error.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator, Tuple

from ..rejections import RejectionReport, readable_file
from .csv_blocks import ByteStream, line_blocks


def iter_lines(path: Path, report: RejectionReport, block_size: int = 1 << 22) -> Iterator[Tuple[int, str]]:
    """(1-based file line number, text without its line end) of every well-formed line."""
    path = Path(path)
    if not readable_file(path, report):
        return
    name = str(path)
    stream = ByteStream(path)
    number = 0           # lines before the held block
    held = None          # blocks are handled one behind, to know which is the last
    ends_with_newline = True
    for block in line_blocks(stream, block_size):
        if held is not None:
            yield from _lines(held, number, name, report)
            number += len(held)
        held = block.split(b"\n")
        ends_with_newline = block.endswith(b"\n")
        if ends_with_newline:
            held.pop()
    held = held or []
    partial = held.pop() if stream.problem is not None and not ends_with_newline and held else None
    yield from _lines(held, number, name, report)
    number += len(held)
    if partial is not None:
        # whatever it parses as, the cut last line is not the line that was written
        number += 1
        report.lines_read(name, 1)
        report.reject("truncated_file", name, line=number,
                      value=f"partial last line: {partial[:80].decode('utf-8', 'replace')}")
    if stream.problem is not None:
        reason, detail = stream.problem
        report.file_problem(reason, name, line=number if partial is not None else number + 1,
                            detail=f"{detail}; the lines before it were read, the rest of the file is lost")


def _lines(raw_lines, before: int, name: str, report: RejectionReport) -> Iterator[Tuple[int, str]]:
    report.lines_read(name, len(raw_lines))
    for i, raw in enumerate(raw_lines):
        number = before + i + 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.reject("bad_encoding", name, line=number, value=f"byte {exc.start}: {bytes(raw[:80])!r}")
            continue
        text = text.rstrip("\r")
        if not text.strip():
            report.reject("empty_line", name, line=number)
            continue
        yield number, text


def read_json_object(path: Path) -> dict:
    import json
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)
