"""Taobao UserBehavior reader: real slices and every bad-input case."""

import gzip
import zlib

import numpy as np
import pyarrow as pa
import pytest

from recsys.data_pipelines.rejections import DataError, RejectionReport
from recsys.data_pipelines.schema import BEHAVIORS
from recsys.data_pipelines.sources.taobao import read_userbehavior
from tests.conftest import shared_dataset


def read_all(path, report=None, **kw):
    report = report or RejectionReport(max_reject_rate=1.0)
    tables = list(read_userbehavior(path, report, **kw))
    return (pa.concat_tables(tables) if tables else None), report


def test_real_2h_window_counts_match_source_md():
    path = shared_dataset("taobao_userbehavior_2h_window") / "UserBehavior_20171126_0100-0310UTC.csv.gz"
    table, report = read_all(path, block_size=1 << 20)
    assert report.rejected == 0
    assert table.num_rows == 110_300
    assert len(np.unique(table.column("user").to_numpy())) == 66_454
    assert len(np.unique(table.column("item").to_numpy())) == 84_793
    assert len(np.unique(table.column("category").to_numpy())) == 3_913
    codes, counts = np.unique(table.column("behavior").to_numpy(), return_counts=True)
    by_name = {name: int(counts[list(codes).index(code)]) for name, code in BEHAVIORS.items() if code in codes}
    assert by_name == {"pv": 98_361, "cart": 6_063, "fav": 3_383, "buy": 2_493}
    ts = table.column("timestamp").to_numpy()
    assert ts.min() == 1511658000 and ts.max() == 1511665811


def test_real_head_43_users():
    path = shared_dataset("taobao_userbehavior_head_43users") / "UserBehavior_head4321.csv.gz"
    table, report = read_all(path)
    assert report.rejected == 0 and table.num_rows == 4_321
    assert len(np.unique(table.column("user").to_numpy())) == 43
    first = table.slice(0, 1).to_pylist()[0]
    assert first == {"user": 1, "item": 2268318, "category": 2520377, "behavior": BEHAVIORS["pv"], "timestamp": 1511544070}


BAD = "\n".join([
    "1,10,100,pv,1000",        # 1 ok
    "1,11,100,buy,1001",       # 2 ok
    "2,x12,100,pv,1002",       # 3 non-numeric item
    "bad line",                # 4 wrong field count
    "3,13,101,click,1003",     # 5 unknown behaviour
    "3,14,101,pv,1004,9",      # 6 wrong field count
    "4,15,102,fav,abc",        # 7 non-numeric timestamp
    "5,16,103,cart,1005",      # 8 ok
]) + "\n"


def test_bad_rows_are_counted_with_file_line_field_and_value(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD)
    table, report = read_all(path)
    assert table.column("item").to_pylist() == [10, 11, 16]
    assert dict(report.counts) == {"wrong_field_count": 2, "bad_item": 1, "unknown_behavior": 1, "bad_timestamp": 1}
    assert report.accepted == 3
    lines = {r: [e.line for e in ex] for r, ex in report.examples.items()}
    assert lines == {"wrong_field_count": [4, 6], "bad_item": [3], "unknown_behavior": [5], "bad_timestamp": [7]}
    assert report.examples["bad_item"][0].value == "x12" and report.examples["bad_item"][0].field == "item"
    assert "click" in report.examples["unknown_behavior"][0].value
    assert "bad.csv, line 3" in report.summary()


def test_raise_mode_stops_at_first_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD)
    with pytest.raises(DataError, match=r"bad.csv, line 3: field 'item' value 'x12'"):
        read_all(path, RejectionReport(on_error="raise"))


def test_rejection_rate_threshold_stops_the_build(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(BAD)
    _, report = read_all(path, RejectionReport(max_reject_rate=0.1))
    with pytest.raises(DataError, match="5 of 8 lines rejected"):
        report.check_rate()


def test_missing_empty_and_truncated_files_are_reported(tmp_path):
    # a missing file is an error; an empty one is its file's problem, never a "rejected row"
    with pytest.raises(DataError, match="nope.csv: input file does not exist"):
        read_all(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _, report = read_all(empty)
    assert report.rejected == 0 and report.files[str(empty)]["problems"][0]["reason"] == "empty_file"
    good = "".join(f"{u},{u + 1},7,pv,{1000 + u}\n" for u in range(20000)).encode()
    trunc = tmp_path / "t.csv.gz"
    trunc.write_bytes(gzip.compress(good)[:-200])
    table, report = read_all(trunc, block_size=1 << 14)
    # what a decompressor yields from the cut file
    readable = zlib.decompressobj(wbits=31).decompress(trunc.read_bytes())
    n_lines = readable.count(b"\n") + (not readable.endswith(b"\n"))
    assert table.num_rows + report.rejected == n_lines == report.lines
    assert report.files[str(trunc)]["problems"][0]["reason"] == "truncated_file"
    assert "t.csv.gz" in report.summary() and "truncated_file" in report.summary()


def test_gzip_and_plain_read_the_same(tmp_path):
    text = "".join(f"{u},{u * 3},{u % 5},buy,{2000 + u}\n" for u in range(500))
    (tmp_path / "a.csv").write_text(text)
    (tmp_path / "a.csv.gz").write_bytes(gzip.compress(text.encode()))
    a, _ = read_all(tmp_path / "a.csv")
    b, _ = read_all(tmp_path / "a.csv.gz")
    assert a.equals(b)


def test_slow_path_after_clean_blocks_does_not_duplicate_rows(tmp_path):
    # a bad value far into the file: the typed pass has emitted blocks before it fails
    rows = [f"{u},{u},1,pv,{u}" for u in range(5000)]
    rows[4500] = "9,bad,1,pv,9"
    (tmp_path / "late.csv").write_text("\n".join(rows) + "\n")
    table, report = read_all(tmp_path / "late.csv", block_size=1 << 12)
    assert table.num_rows == 4999 and report.accepted == 4999
    assert report.counts == {"bad_item": 1} and report.examples["bad_item"][0].line == 4501
    assert len(np.unique(table.column("user").to_numpy())) == 4999
