"""Counting and reporting rejected input lines.

Every reader hands its bad lines to a :class:`RejectionReport` instead of dropping them
silently: the report counts lines by reason, keeps the first few examples of each reason
(file, line, field, offending value), and either raises at once (``on_error="raise"``) or
lets the build go on and stops it only when the rejection rate passes a threshold.

The readers also tell the report how many lines each file had (``lines_read``), so the
rate compares rejected lines with readable lines, and problems of a whole file (empty,
truncated, corrupt) are listed per file (``file_problem``), never counted as one "row".
The promise (docs/reliability.md): every readable line is either accepted or rejected
with its file line number and reason.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional


from recsys.errors import DataError  # noqa: E402,F401  (re-exported: readers raise it from here)


@dataclass
class Rejection:
    reason: str
    file: str
    line: Optional[int]
    field: Optional[str]
    value: Optional[str]

    def describe(self) -> str:
        where = f"{self.file}" + (f", line {self.line}" if self.line is not None else "")
        what = f" field {self.field!r}" if self.field else ""
        value = f" value {self.value!r}" if self.value is not None else ""
        return f"{where}:{what}{value} ({self.reason})"


@dataclass
class RejectionReport:
    """Counts of rejected rows by reason with the first ``max_examples`` of each.

    on_error: "skip" (count and continue) or "raise" (stop at the first bad row).
    max_reject_rate: the build stops when rejected / (accepted + rejected) exceeds it.
    """

    on_error: str = "skip"
    max_reject_rate: float = 0.01
    max_examples: int = 5
    counts: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)   # rows kept but changed (e.g. unknown category → 1)
    examples: Dict[str, List[Rejection]] = field(default_factory=dict)
    accepted: int = 0
    # per input file: readable lines, rejected lines, whole-file problems
    files: Dict[str, dict] = field(default_factory=dict)
    _deferred: Optional[List[Rejection]] = None

    def _file(self, file: str) -> dict:
        return self.files.setdefault(str(file), {"lines": 0, "rejected": 0, "problems": []})

    def lines_read(self, file: str, n: int) -> None:
        """``n`` more readable lines of ``file`` (accepted or rejected, blank ones included)."""
        self._file(file)["lines"] += int(n)

    def file_problem(self, reason: str, file: str, line: Optional[int] = None, detail: str = "") -> None:
        """A problem of the whole file (``empty_file``, ``truncated_file``, ``bad_compression``):
        listed by file in the report and the summary; never counted as a rejected line (the
        lines lost to it cannot be read, hence counted). Raises in ``on_error="raise"`` mode."""
        where = f"{file}" + (f", line {line}" if line is not None else "")
        if self.on_error == "raise":
            raise DataError(f"{where}: {reason}: {detail}")
        self._file(file)["problems"].append({"reason": reason, "line": line, "detail": str(detail)[:300]})

    @property
    def lines(self) -> int:
        """Readable lines of every file read so far."""
        return sum(f["lines"] for f in self.files.values())

    def defer(self) -> None:
        """In raise mode, collect rejections until ``flush`` (readers that see a block of
        rows at once use it so the error names the first bad line, not the first found)."""
        if self.on_error == "raise":
            self._deferred = []

    def flush(self) -> None:
        """Raise for the earliest deferred rejection, if any."""
        pending, self._deferred = self._deferred, ([] if self._deferred is not None else None)
        if pending:
            first = min(pending, key=lambda e: (e.line is None, e.line or 0))
            raise DataError(f"bad input row: {first.describe()}")

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")

    @property
    def rejected(self) -> int:
        return sum(self.counts.values())

    def reject(self, reason: str, file: str, line: Optional[int] = None, field: Optional[str] = None,
               value: Optional[str] = None, count: int = 1) -> None:
        """Record ``count`` rejected rows of one reason (the example is the first of them)."""
        example = Rejection(reason, str(file), line, field, None if value is None else str(value)[:200])
        if self.on_error == "raise":
            if self._deferred is not None:
                self._deferred.append(example)
                return
            raise DataError(f"bad input row: {example.describe()}")
        self.counts[reason] += count
        self._file(file)["rejected"] += count
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(example)

    def note(self, reason: str, count: int = 1) -> None:
        """Count rows that were kept but handled in a documented way (e.g. an item without
        attributes gets the unknown category)."""
        if count:
            self.notes[reason] += count

    def count_rejected(self, reason: str, file: str, count: int) -> None:
        """``count`` more rejected lines of ``reason`` beyond the examples already recorded."""
        if count:
            self.counts[reason] += count
            self._file(file)["rejected"] += count

    def check_rate(self) -> None:
        """Stop the build when rejected lines / readable lines exceeds ``max_reject_rate``,
        or when a file had lines but none of them was accepted (a whole file must never
        vanish under the rate of the others)."""
        total = self.lines or (self.accepted + self.rejected)   # sources without lines (synthetic)
        if total and self.rejected / total > self.max_reject_rate:
            raise DataError(
                f"{self.rejected} of {total} lines rejected ({self.rejected / total:.2%}), more than "
                f"max_reject_rate={self.max_reject_rate:.2%}:\n{self.summary()}")
        for name, stats in self.files.items():
            if stats["lines"] and stats["rejected"] >= stats["lines"]:
                raise DataError(f"{name}: none of its {stats['lines']} lines was accepted:\n{self.summary()}")

    def has_findings(self) -> bool:
        """Anything rejected or any file problem (the CLI prints the summary then, even quiet)."""
        return bool(self.counts) or any(f["problems"] for f in self.files.values())

    def summary(self) -> str:
        notes = "".join(f"\n  kept with handling: {r}: {n}" for r, n in self.notes.most_common())
        problems = "".join(
            f"\n  file {name}: {p['reason']}" + (f" at line {p['line']}" if p["line"] is not None else "")
            + (f" ({p['detail']})" if p["detail"] else "")
            for name, stats in self.files.items() for p in stats["problems"])
        read = f" of {self.lines} lines read" if self.lines else ""
        if not self.counts:
            return f"no lines rejected ({self.accepted} rows accepted{read})" + problems + notes
        lines = [f"{self.rejected} lines rejected{read}, {self.accepted} rows accepted:"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {reason}: {n}")
            lines.extend(f"    e.g. {ex.describe()}" for ex in self.examples.get(reason, []))
        return "\n".join(lines) + problems + notes

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "lines": self.lines,
            "files": self.files,
            "counts": dict(self.counts),
            "notes": dict(self.notes),
            "examples": {r: [vars(e) for e in exs] for r, exs in self.examples.items()},
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def readable_file(path, report: RejectionReport) -> bool:
    """False when ``path`` is empty (listed as the file's ``empty_file`` problem). A missing
    file, or a directory given as one, is an error in both modes: a whole input must never
    vanish as "one rejected row"."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: input file does not exist (missing_file)")
    if not path.is_file():
        raise DataError(f"{path}: input is not a file (missing_file)")
    report._file(str(path))
    if path.stat().st_size == 0:
        report.file_problem("empty_file", str(path), detail="file is empty (0 lines)")
        return False
    return True
