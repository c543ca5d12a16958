"""Fault injection over the readers (issue 16): damaged inputs never lose lines silently.

The promise tested here: every readable line is either accepted or rejected with its file
line number and reason (accepted + rejected = readable lines, where "readable" is what a
decompressor yields from the damaged bytes); the rejected lines are exactly the damaged
ones; the same bytes always give the same output, whatever the thread timing and the
block size. The first tests are the cases found by hand (each failed before the fix); the
hypothesis tests generalize them to damage at any byte.
"""

import gzip
import json
import re
import zlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig
from recsys.data_pipelines.rejections import DataError, RejectionReport
from recsys.data_pipelines.sources.amazon import read_amazon
from recsys.data_pipelines.sources.multibehavior import read_multibehavior
from recsys.data_pipelines.sources.taobao import read_userbehavior

INT = re.compile(rb"^[ \t]*-?[0-9]+[ \t]*$")
BEHAVIOR_NAMES = {b"pv", b"cart", b"fav", b"buy"}


def userbehavior_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    names = ["pv", "cart", "fav", "buy"]
    return [f"{rng.integers(1, 500)},{rng.integers(1, 10_000)},{rng.integers(1, 50)},"
            f"{names[rng.integers(0, 4)]},{1_511_000_000 + i}".encode() for i in range(n)]


def read_all(path, report=None, block_size=1 << 12):
    report = report or RejectionReport(max_reject_rate=1.0, max_examples=10**9)
    tables = list(read_userbehavior(path, report, block_size=block_size))
    table = pa.concat_tables(tables) if tables else None
    return table, report


def rejected_lines(report):
    return sorted(e.line for ex in report.examples.values() for e in ex)


def readable(data: bytes, gz: bool) -> bytes:
    """What a decompressor yields from (possibly cut) bytes."""
    return zlib.decompressobj(wbits=31).decompress(data) if gz else data


def physical_lines(data: bytes) -> list:
    lines = data.split(b"\n")
    if data.endswith(b"\n") or not data:
        lines.pop()
    return lines


def valid_userbehavior_line(line: bytes) -> bool:
    """The oracle: what the format documents as a good line."""
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if b"\r" in line:
        return False
    fields = line.split(b",")
    if len(fields) != 5 or fields[3] not in BEHAVIOR_NAMES:
        return False
    return all(INT.match(f) and -(1 << 63) <= int(f) < (1 << 63) for f in (fields[0], fields[1], fields[2], fields[4]))


def check_promise(path, data: bytes, gz: bool, truncated: bool = False, block_size=1 << 12):
    """accepted + rejected = readable lines; rejected lines = the damaged ones; the same
    output at two block sizes and on a second run."""
    table, report = read_all(path, block_size=block_size)
    lines = physical_lines(readable(data, gz))
    accepted = 0 if table is None else table.num_rows
    assert accepted == report.accepted
    assert accepted + report.rejected == len(lines) == report.lines
    expected_bad = [i + 1 for i, line in enumerate(lines) if not valid_userbehavior_line(line)]
    got_bad = rejected_lines(report)
    if truncated and lines and not readable(data, gz).endswith(b"\n"):
        # the cut last line is rejected as truncated_file even when it happens to parse
        expected_bad = sorted(set(expected_bad) | {len(lines)})
    assert got_bad == expected_bad
    again, report2 = read_all(path, block_size=block_size * 3 + 17)
    assert (table is None and again is None) or table.equals(again)
    assert report2.to_dict() == report.to_dict()
    return table, report


# ------------------------------------------------------------------ the cases of issue 16
def test_truncated_gzip_larger_than_one_block_is_deterministic_and_complete(tmp_path):
    lines = userbehavior_lines(100_000)
    data = gzip.compress(b"\n".join(lines) + b"\n")
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    first = None
    for _ in range(4):   # before the fix: a different row count on each run
        table, report = read_all(path, block_size=1 << 16)
        got = (table.num_rows, report.to_dict())
        assert first is None or got == first
        first = got
    expected = physical_lines(readable(path.read_bytes(), True))
    assert table.num_rows + report.rejected == len(expected) and table.num_rows > 60_000
    assert report.counts == {"truncated_file": 1}
    assert report.files[str(path)]["problems"][0]["line"] == len(expected)
    check_promise(path, path.read_bytes(), gz=True, truncated=True, block_size=1 << 16)


def test_one_bad_byte_deep_in_a_file_costs_only_its_line(tmp_path):
    lines = userbehavior_lines(200_000)
    lines[150_000] = lines[150_000][:3] + b"\xff" + lines[150_000][4:]
    data = b"\n".join(lines) + b"\n"
    for name, payload in (("bad.csv", data), ("bad.csv.gz", gzip.compress(data))):
        path = tmp_path / name
        path.write_bytes(payload)
        table, report = read_all(path, block_size=1 << 20)
        assert table.num_rows == 199_999
        assert report.counts == {"bad_encoding": 1} and report.examples["bad_encoding"][0].line == 150_001


def test_one_bad_byte_in_json_lines_costs_only_its_line(tmp_path):
    rows = [json.dumps({"reviewerID": f"U{i % 50}", "asin": f"I{i}", "unixReviewTime": i}).encode()
            for i in range(20_000)]
    rows[12_345] = rows[12_345].replace(b"U", b"\xc3(", 1)
    path = tmp_path / "reviews.json"
    path.write_bytes(b"\n".join(rows) + b"\n")
    report = RejectionReport(max_reject_rate=1.0)
    table = pa.concat_tables(list(read_amazon(SourceConfig(format="amazon", paths=[str(path)]), report)))
    assert table.num_rows == 19_999 and report.counts == {"bad_encoding": 1}
    assert report.examples["bad_encoding"][0].line == 12_346 and report.lines == 20_000


def test_a_stray_quote_swallows_nothing(tmp_path):
    lines = userbehavior_lines(5_000)
    lines[100] = b'1,2,3,"pv,1511000100'
    path = tmp_path / "quote.csv"
    path.write_bytes(b"\n".join(lines) + b"\n")
    table, report = read_all(path)
    assert table.num_rows == 4_999 and report.rejected == 1 and rejected_lines(report) == [101]


def test_line_numbers_count_blank_lines_and_crlf(tmp_path):
    lines = userbehavior_lines(3_000)
    lines[10] = b""
    lines[11] = b"   "
    lines[2_000] = b"1,x,3,pv,5"
    data = b"\r\n".join(lines) + b"\r\n"
    path = tmp_path / "blank.csv"
    path.write_bytes(data)
    table, report = read_all(path)
    assert report.counts == {"empty_line": 2, "bad_item": 1}
    assert rejected_lines(report) == [11, 12, 2_001] and table.num_rows == 2_997


def test_ids_beyond_int64_are_rejected_lines_not_a_traceback(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"1,2,3,pv,4\n99999999999999999999,2,3,pv,4\n1,9223372036854775808,3,pv,4\n"
                     b"-9223372036854775808,2,3,pv,4\n")
    table, report = read_all(path)
    assert table.column("user").to_pylist() == [1, -(1 << 63)]
    assert report.counts == {"bad_user": 1, "bad_item": 1} and rejected_lines(report) == [2, 3]


def test_hex_and_non_finite_values_are_rejected_on_every_path(tmp_path):
    # pyarrow's typed parse accepts 0x1f; the documented format does not
    path = tmp_path / "hex.csv"
    path.write_bytes(b"1,0x1f,3,pv,4\n1,2,3,pv,5\n")
    table, report = read_all(path)
    assert table.num_rows == 1 and report.counts == {"bad_item": 1}


def test_missing_second_file_is_an_error_and_an_empty_one_is_reported_by_file(tmp_path):
    good = tmp_path / "a.csv"
    good.write_bytes(b"\n".join(userbehavior_lines(2_000)) + b"\n")
    empty = tmp_path / "b.csv"
    empty.write_bytes(b"")

    def config(paths, out):
        return DataConfig(output=str(tmp_path / out), source=SourceConfig(format="taobao", paths=[str(p) for p in paths]),
                          protocol=ProtocolConfig(max_length=5), partitions=2)

    with pytest.raises(DataError, match="missing.csv: input file does not exist"):
        build_dataset(config([good, tmp_path / "missing.csv"], "d1"), progress=False)
    assert not (tmp_path / "d1").exists()
    out = build_dataset(config([good, empty], "d2"), progress=False)
    rejections = json.loads((out / "rejections.json").read_text())
    assert rejections["rejected"] == 0 and rejections["lines"] == 2_000
    assert rejections["files"][str(empty)]["problems"][0]["reason"] == "empty_file"


def test_a_file_of_only_bad_lines_fails_the_build_whatever_the_rate(tmp_path):
    good = tmp_path / "a.csv"
    good.write_bytes(b"\n".join(userbehavior_lines(20_000)) + b"\n")
    bad = tmp_path / "b.csv"
    bad.write_bytes(b"garbage\n" * 10)   # 10 of 20,010 lines: under 1%, but a whole file
    cfg = DataConfig(output=str(tmp_path / "d"), source=SourceConfig(format="taobao", paths=[str(good), str(bad)]),
                     protocol=ProtocolConfig(max_length=5), partitions=2)
    with pytest.raises(DataError, match="b.csv: none of its 10 lines was accepted"):
        build_dataset(cfg, progress=False)


def test_rate_compares_rejected_lines_with_readable_lines(tmp_path):
    path = tmp_path / "a.csv"
    lines = userbehavior_lines(1_000)
    for i in range(0, 1_000, 50):
        lines[i] = b"bad"
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, report = read_all(path, RejectionReport(max_reject_rate=0.019))
    with pytest.raises(DataError, match="20 of 1000 lines rejected"):
        report.check_rate()
    _, report = read_all(path, RejectionReport(max_reject_rate=0.02))
    report.check_rate()


def test_multibehavior_lines_are_counted_with_file_line_numbers(tmp_path):
    folder = tmp_path / "taobao"
    folder.mkdir()
    (folder / "view.txt").write_bytes(b'1 2\n\n1 "3\n2 3 4\n2 5\r\n')
    (folder / "cart.txt").write_bytes(b"")
    report = RejectionReport(max_reject_rate=1.0)
    table = pa.concat_tables(list(read_multibehavior(SourceConfig(format="multibehavior", paths=[str(folder)]),
                                                     report)))
    assert table.column("item").to_pylist() == [2, 5]
    assert dict(report.counts) == {"empty_line": 1, "bad_item": 1, "wrong_field_count": 1}
    assert rejected_lines(report) == [2, 3, 4] and report.lines == 5
    assert report.files[f"{folder}:cart.txt"]["problems"][0]["reason"] == "empty_file"


# ------------------------------------------------------------------ hypothesis: damage anywhere
CLEAN = b"\n".join(userbehavior_lines(400, seed=1)) + b"\n"
CLEAN_GZ = gzip.compress(CLEAN)
FAULT_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAULT_SETTINGS
@given(cut=st.integers(0, len(CLEAN_GZ)), gz=st.booleans(), block=st.sampled_from([64, 1000, 1 << 20]))
def test_truncation_at_any_byte(tmp_path, cut, gz, block):
    data = (CLEAN_GZ if gz else CLEAN)[:cut if gz else cut * len(CLEAN) // len(CLEAN_GZ)]
    path = tmp_path / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(data)
    if not data:
        _, report = read_all(path)
        assert report.files[str(path)]["problems"][0]["reason"] == "empty_file"
        return
    check_promise(path, data, gz=gz, truncated=gz, block_size=block)


@FAULT_SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, len(CLEAN) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       block=st.sampled_from([64, 1000, 1 << 20]))
def test_random_byte_flips(tmp_path, flips, block):
    data = bytearray(CLEAN)
    for at, value in flips:
        data[at] = value
    data = bytes(data)
    path = tmp_path / "flip.csv"
    path.write_bytes(data)
    check_promise(path, data, gz=False, block_size=block)


INSERTS = [b'"', b",", b"\n", b"\r", b"\r\n", b"\n\n", b" ", b"\t", b"\xff", b"\xe2\x82", b",,", b"pv"]


@FAULT_SETTINGS
@given(inserts=st.lists(st.tuples(st.integers(0, len(CLEAN)), st.sampled_from(INSERTS)), min_size=1, max_size=6),
       crlf=st.booleans(), gz=st.booleans(), block=st.sampled_from([64, 1000, 1 << 20]))
def test_stray_quotes_delimiters_blank_lines_and_crlf(tmp_path, inserts, crlf, gz, block):
    data = CLEAN.replace(b"\n", b"\r\n") if crlf else CLEAN
    for at, piece in sorted(inserts, reverse=True):
        at = min(at, len(data))
        data = data[:at] + piece + data[at:]
    path = tmp_path / ("s.csv.gz" if gz else "s.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    check_promise(path, gzip.compress(data) if gz else data, gz=gz, block_size=block)


@FAULT_SETTINGS
@given(kinds=st.lists(st.sampled_from(["good", "empty", "missing", "blank"]), min_size=1, max_size=4))
def test_missing_or_empty_file_among_several(tmp_path, kinds):
    paths = []
    for i, kind in enumerate(kinds):
        path = tmp_path / f"f{i}.csv"
        path.unlink(missing_ok=True)
        if kind == "good":
            path.write_bytes(b"\n".join(userbehavior_lines(50, seed=i)) + b"\n")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "blank":
            path.write_bytes(b"\n\n")
        paths.append(path)
    report = RejectionReport(max_reject_rate=1.0)
    if "missing" in kinds:
        with pytest.raises(DataError, match=f"f{kinds.index('missing')}.csv: input file does not exist"):
            for p in paths:
                list(read_userbehavior(p, report))
        return
    rows = sum(t.num_rows for p in paths for t in read_userbehavior(p, report))
    assert rows == 50 * kinds.count("good") == report.accepted
    assert report.rejected == 2 * kinds.count("blank") and report.lines == rows + report.rejected
    for p, kind in zip(paths, kinds):
        problems = [x["reason"] for x in report.files[str(p)]["problems"]]
        assert problems == (["empty_file"] if kind == "empty" else [])


@FAULT_SETTINGS
@given(flips=st.lists(st.tuples(st.integers(0, len(CLEAN_GZ) - 1), st.integers(0, 255)), min_size=1, max_size=3))
def test_byte_flips_in_a_gzip_stream(tmp_path, flips):
    """A corrupt gzip stream: every line decompressed before the damage is accepted or
    rejected, the damage is the file's problem, and the outcome is deterministic."""
    data = bytearray(CLEAN_GZ)
    for at, value in flips:
        data[at] = value
    path = tmp_path / "flip.csv.gz"
    path.write_bytes(bytes(data))
    table, report = read_all(path)
    accepted = 0 if table is None else table.num_rows
    assert accepted + report.rejected == report.lines
    again, report2 = read_all(path, block_size=1 << 20)
    assert (table is None and again is None) or table.equals(again)
    assert report2.to_dict() == report.to_dict()
    problems = report.files[str(path)]["problems"]
    try:
        whole = gzip.decompress(bytes(data))
    except (OSError, EOFError, zlib.error):
        whole = None
    if whole is not None and not problems:      # the flip left a valid stream: the plain oracle holds
        lines = physical_lines(whole)
        assert accepted + report.rejected == len(lines)
        assert rejected_lines(report) == [i + 1 for i, x in enumerate(lines) if not valid_userbehavior_line(x)]
    elif whole is None:
        assert problems and problems[0]["reason"] == "truncated_file"


REVIEWS = b"".join(json.dumps({"reviewerID": f"U{i % 7}", "asin": f"I{i}", "unixReviewTime": i}).encode() + b"\n"
                   for i in range(300))
REVIEWS_GZ = gzip.compress(REVIEWS)


@FAULT_SETTINGS
@given(cut=st.integers(1, len(REVIEWS_GZ)), inserts=st.lists(
    st.tuples(st.integers(0, len(REVIEWS)), st.sampled_from([b"\n", b"\r\n", b"\xff", b"{", b"  \n"])), max_size=4))
def test_json_lines_damage_anywhere(tmp_path, cut, inserts):
    data = REVIEWS
    for at, piece in sorted(inserts, reverse=True):
        data = data[:at] + piece + data[at:]
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress(data)[:cut])
    report = RejectionReport(max_reject_rate=1.0, max_examples=10**9)
    tables = list(read_amazon(SourceConfig(format="amazon", paths=[str(path)]), report))
    accepted = sum(t.num_rows for t in tables)
    lines = physical_lines(readable(path.read_bytes(), True))
    assert accepted + report.rejected == len(lines) == report.lines
    assert all(1 <= line <= len(lines) for line in rejected_lines(report))


def test_two_builds_of_a_damaged_input_are_byte_identical(tmp_path):
    lines = userbehavior_lines(30_000)
    for i in range(0, 30_000, 997):
        lines[i] = lines[i].replace(b",", b";", 1)
    lines[12_000] = b"\xff" + lines[12_000]
    raw = tmp_path / "bad.csv.gz"
    raw.write_bytes(gzip.compress(b"\n".join(lines) + b"\n")[:-300])   # damaged and cut
    outs = []
    for name in ("a", "b"):
        cfg = DataConfig(output=str(tmp_path / name), source=SourceConfig(format="taobao", paths=[str(raw)]),
                         protocol=ProtocolConfig(max_length=5), partitions=3, block_size_mb=1)
        outs.append(build_dataset(cfg, progress=False))
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for rel in files:
        if rel.name != "manifest.json":
            assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel
    ma, mb = (json.loads((o / "manifest.json").read_text()) for o in outs)
    for m in (ma, mb):
        m.pop("build_seconds"), m["config"].pop("output", None)
    assert ma == mb and ma["rejections"]["rejected"] > 30
