"""Counting and reporting rejected input rows.

Every reader hands its bad rows to a :class:`RejectionReport` instead of dropping them
silently: the report counts rows by reason, keeps the first few examples of each reason
(file, line, field, offending value), and either raises at once (``on_error="raise"``) or
lets the build go on and stops it only when the rejection rate passes a threshold.
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
    _deferred: Optional[List[Rejection]] = None

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
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.max_examples:
            bucket.append(example)

    def note(self, reason: str, count: int = 1) -> None:
        """Count rows that were kept but handled in a documented way (e.g. an item without
        attributes gets the unknown category)."""
        if count:
            self.notes[reason] += count

    def check_rate(self) -> None:
        total = self.accepted + self.rejected
        if total and self.rejected / total > self.max_reject_rate:
            raise DataError(
                f"{self.rejected} of {total} rows rejected ({self.rejected / total:.2%}), more than "
                f"max_reject_rate={self.max_reject_rate:.2%}:\n{self.summary()}")

    def summary(self) -> str:
        notes = "".join(f"\n  kept with handling: {r}: {n}" for r, n in self.notes.most_common())
        if not self.counts:
            return f"no rows rejected ({self.accepted} accepted)" + notes
        lines = [f"{self.rejected} rows rejected, {self.accepted} accepted:"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {reason}: {n}")
            lines.extend(f"    e.g. {ex.describe()}" for ex in self.examples.get(reason, []))
        return "\n".join(lines) + notes

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "rejected": self.rejected,
            "counts": dict(self.counts),
            "notes": dict(self.notes),
            "examples": {r: [vars(e) for e in exs] for r, exs in self.examples.items()},
        }

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def readable_file(path, report: RejectionReport) -> bool:
    """False (and the reason counted) when ``path`` is missing or empty."""
    from pathlib import Path
    path = Path(path)
    if not path.exists():
        report.reject("missing_file", str(path), value="file does not exist")
        return False
    if path.stat().st_size == 0:
        report.reject("empty_file", str(path), value="file is empty")
        return False
    return True
