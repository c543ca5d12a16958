"""A build's output is complete, current and from one build (issue 16).

Reuse is keyed on the config and the inputs; --overwrite never leaves neither the old nor
the new output; temporaries of interrupted builds never stay behind; a build that cannot
train anything is an error.
"""

import json
import os
import subprocess

import pytest

from recsys.data_pipelines import output_dir
from recsys.data_pipelines.build import ensure_dataset, vocab_fingerprint
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig
from recsys.data_pipelines.rejections import DataError


def write_log(path, users=60, events=8, item_offset=0):
    lines = [f"{u},{(u * 7 + e) % 40 + 1 + item_offset},{(u + e) % 5 + 1},pv,{1000 + e}"
             for u in range(1, users + 1) for e in range(events)]
    path.write_text("\n".join(lines) + "\n")
    return path


def config(tmp_path, raw, out="ds"):
    return DataConfig(output=str(tmp_path / out), source=SourceConfig(format="taobao", paths=[str(raw)]),
                      protocol=ProtocolConfig(max_length=5), partitions=2)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_reuse_is_keyed_on_the_inputs_and_says_built_or_reused(tmp_path):
    raw = write_log(tmp_path / "log.csv")
    cfg = config(tmp_path, raw)
    out, status = ensure_dataset(cfg, progress=False)
    assert status == "built"
    assert ensure_dataset(cfg, progress=False) == (out, "reused")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["path"] == str(raw) and manifest["inputs"][0]["size"] == raw.stat().st_size
    # a moved mtime alone (a copy, a re-provisioned data folder) is the same content: reused
    os.utime(raw, ns=(raw.stat().st_atime_ns, raw.stat().st_mtime_ns + 10**9))
    assert ensure_dataset(cfg, progress=False) == (out, "reused")
    # same config, changed input file (same size even): never reused silently
    text = raw.read_text()
    raw.write_text(text.replace("1,8,2,pv,1000", "1,9,2,pv,1000", 1))
    with pytest.raises(FileExistsError, match=r"other input files .*log.csv changed .*--overwrite"):
        ensure_dataset(cfg, progress=False)
    out, status = ensure_dataset(cfg, overwrite=True, progress=False)
    assert status == "built" and ensure_dataset(cfg, progress=False)[1] == "reused"


def test_overwrite_swaps_atomically_and_an_interrupted_swap_is_restored(tmp_path, monkeypatch):
    raw = write_log(tmp_path / "log.csv")
    cfg = config(tmp_path, raw)
    out, _ = ensure_dataset(cfg, progress=False)
    before = (out / "manifest.json").read_text()
    # a build that fails before its swap leaves the old output untouched (and no temporary)
    write_log(raw, item_offset=3)
    monkeypatch.setattr("recsys.data_pipelines.build._check_trainable",
                        lambda stats, out: (_ for _ in ()).throw(DataError("injected failure")))
    with pytest.raises(DataError, match="injected failure"):
        ensure_dataset(cfg, overwrite=True, progress=False)
    monkeypatch.undo()
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ds.")] == []
    # the fallback swap (two renames) killed between them: the next build restores the old output
    old = tmp_path / f".ds.old-{dead_pid()}"
    out.rename(old)
    assert output_dir.recover_interrupted(out) == [f"restored {out} from {old.name}"]
    assert (out / "manifest.json").read_text() == before and not old.exists()
    # a real overwrite replaces the output with the complete new build
    out, status = ensure_dataset(cfg, overwrite=True, progress=False)
    assert status == "built" and (out / "manifest.json").read_text() != before


def test_fallback_swap_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(output_dir, "_exchange", lambda a, b: False)
    raw = write_log(tmp_path / "log.csv")
    out, _ = ensure_dataset(config(tmp_path, raw), progress=False)
    write_log(raw, item_offset=3)
    ensure_dataset(config(tmp_path, raw), overwrite=True, progress=False)
    assert (out / "manifest.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "log.csv"]


def test_stale_temporaries_of_dead_builds_are_removed(tmp_path):
    raw = write_log(tmp_path / "log.csv")
    stale = tmp_path / f".ds.building-{dead_pid()}"
    (stale / "vocab").mkdir(parents=True)
    alive = tmp_path / f".ds.building-{os.getppid()}"     # a live process: another build, kept
    alive.mkdir()
    ensure_dataset(config(tmp_path, raw), progress=False)
    assert not stale.exists() and alive.exists()


def test_zero_training_samples_is_a_build_error(tmp_path):
    # two events per user: the din protocol's valid and test pairs, nothing to train on
    raw = write_log(tmp_path / "log.csv", events=2)
    with pytest.raises(DataError, match="0 training samples"):
        ensure_dataset(config(tmp_path, raw), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_vocab_fingerprint_tells_equal_sized_vocabularies_apart(tmp_path):
    a = write_log(tmp_path / "a.csv")
    b = write_log(tmp_path / "b.csv", item_offset=100)    # same sizes, other raw item ids
    out_a, _ = ensure_dataset(config(tmp_path, a, "da"), progress=False)
    out_b, _ = ensure_dataset(config(tmp_path, b, "db"), progress=False)
    ma, mb = (json.loads((o / "manifest.json").read_text()) for o in (out_a, out_b))
    assert ma["vocab_sizes"] == mb["vocab_sizes"]
    assert ma["vocab_fingerprint"]["item.parquet"] != mb["vocab_fingerprint"]["item.parquet"]
    assert ma["vocab_fingerprint"]["user.parquet"] == mb["vocab_fingerprint"]["user.parquet"]
    assert vocab_fingerprint(out_a) == ma["vocab_fingerprint"]


def test_corrupt_manifest_is_a_one_line_data_error(tmp_path):
    raw = write_log(tmp_path / "log.csv")
    out, _ = ensure_dataset(config(tmp_path, raw), progress=False)
    (out / "manifest.json").write_text('{"format_version": 1, "con')
    with pytest.raises(DataError, match="manifest.json: not readable JSON"):
        ensure_dataset(config(tmp_path, raw), progress=False)
