"""Line-by-line reading of small text sources (S3-Rec, JSON lines), plain or gzip."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import Iterator, Tuple

from ..rejections import RejectionReport, readable_file


def iter_lines(path: Path, report: RejectionReport) -> Iterator[Tuple[int, str]]:
    """(1-based line number, text without newline); a missing, empty or truncated file is
    reported (reasons missing_file / empty_file / truncated_file), never raised in skip mode."""
    path = Path(path)
    if not readable_file(path, report):
        return
    opener = gzip.open if str(path).endswith(".gz") else open
    number = 0
    try:
        with opener(path, "rb") as raw:
            for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8", errors="strict"), start=1):
                yield number, line.rstrip("\n\r")
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        report.reject("truncated_file", str(path), line=number + 1, value=str(exc))
    except UnicodeDecodeError as exc:
        report.reject("bad_encoding", str(path), line=number + 1, value=str(exc))


def read_json_object(path: Path) -> dict:
    import json
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)
