"""Kill tests (issue 16): a build and a fit killed by SIGINT or SIGTERM, sent to their own
PID at random moments, leave either the previous complete state or a resumable one, never
a mixture and never a temporary directory.

The moments are drawn from a seeded RNG (``RECSYS_KILL_SEED``, default 16) over the
measured duration of an uninterrupted run, so a failure names a reproducible moment.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from recsys.data_pipelines.build import ensure_dataset
from recsys.data_pipelines.config import load_data_config
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.output_dir import input_fingerprint

SEED = int(os.environ.get("RECSYS_KILL_SEED", "16"))
CHILD_TIMEOUT = 180     # a child that hangs after a signal is a failure, not a stuck CI job


def cli(*args) -> list:
    return [sys.executable, "-m", "recsys.cli", *map(str, args)]


def write_logs(path: Path, rows: int, version: int) -> None:
    rng = np.random.default_rng(version)
    users = rng.integers(1, rows // 20, rows)
    items = rng.integers(1, 5_000, rows)
    behaviors = np.array(["pv", "cart", "fav", "buy"])[rng.integers(0, 4, rows)]
    lines = [f"{u},{i},{i % 97 + 1},{b},{1_511_000_000 + t}" for t, (u, i, b) in enumerate(zip(users, items, behaviors))]
    path.write_text("\n".join(lines) + "\n")


def run_child(cmd, kill_at=None, sig=None, ready=None):
    """Start ``cmd``; at ``kill_at`` seconds after start (or after ``ready()`` becomes true,
    when given) send ``sig`` to the child's own PID. Returns (returncode, stderr, seconds)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if sig is not None:
        if ready is not None:
            while not ready() and proc.poll() is None and time.perf_counter() - started < CHILD_TIMEOUT:
                time.sleep(0.02)
            started_ready = time.perf_counter()
        else:
            started_ready = started
        while proc.poll() is None and time.perf_counter() - started_ready < kill_at:
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(sig)
    _, err = proc.communicate(timeout=CHILD_TIMEOUT)
    return proc.returncode, err, time.perf_counter() - started


def assert_complete_dataset(out: Path) -> dict:
    """Everything the manifest promises is there and agrees with it."""
    ds = BuiltDataset(out)
    manifest = ds.manifest
    offsets = ds.flat("offsets")
    assert len(offsets) == manifest["users"] + 1
    assert int(offsets[-1]) == manifest["events"] - manifest["events_filtered_by_behavior"]
    for split, n in manifest["split_samples"].items():
        assert len(ds.sample_columns(split)["row"]) == n
    return manifest


def leftovers(parent: Path, name: str) -> list:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_killed_builds_leave_the_previous_or_the_new_complete_dataset(tmp_path):
    raw = tmp_path / "logs.csv"
    write_logs(raw, 150_000, version=0)
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "ds"), "partitions": 4,
                                   "source": {"format": "taobao", "paths": [str(raw)]},
                                   "protocol": {"name": "din", "max_length": 20}}))
    out = tmp_path / "ds"
    ensure_dataset(load_data_config(cfg), progress=False)
    # an uninterrupted rebuild of new inputs measures how long a build takes
    write_logs(raw, 150_000, version=1)
    code, err, full = run_child(cli("data", "build", cfg, "--quiet", "--overwrite"))
    assert code == 0, err
    rng = random.Random(SEED)
    moments = []
    for k, sig in enumerate([signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM]):
        before = (out / "manifest.json").read_text()
        write_logs(raw, 150_000, version=2 + k)
        at = rng.uniform(0.05, 1.0) * full
        moments.append(at)
        code, err, _ = run_child(cli("data", "build", cfg, "--quiet", "--overwrite"), kill_at=at, sig=sig)
        where = f"{sig.name} at {at:.2f} s of {full:.2f} s (seed {SEED}): exit {code}: {err[-500:]}"
        # -2 / -15: the signal came before the CLI's handlers (interpreter start-up, imports):
        # Python ends an uncaught KeyboardInterrupt by re-raising SIGINT; nothing was written yet
        assert code in (0, 1, 2, 130, -signal.SIGINT, -signal.SIGTERM), where
        manifest = assert_complete_dataset(out)            # never neither, never half
        if (out / "manifest.json").read_text() != before:  # the new build: built from the new inputs
            assert manifest["inputs"] == input_fingerprint([str(raw)]), where
        assert leftovers(tmp_path, "ds") == [], where       # clean-up ran on SIGINT and SIGTERM
    # and the next build after the kills is current again
    code, err, _ = run_child(cli("data", "build", cfg, "--quiet", "--overwrite"))
    assert code == 0 and assert_complete_dataset(out)["inputs"] == input_fingerprint([str(raw)]), err


def test_a_killed_build_of_a_new_output_leaves_nothing_or_everything(tmp_path):
    raw = tmp_path / "logs.csv"
    write_logs(raw, 150_000, version=0)
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"output": str(tmp_path / "ds"), "partitions": 4,
                                   "source": {"format": "taobao", "paths": [str(raw)]}}))
    code, err, full = run_child(cli("data", "build", cfg, "--quiet"))
    assert code == 0, err
    rng = random.Random(SEED + 1)
    for sig in (signal.SIGTERM, signal.SIGINT):
        subprocess.run(["rm", "-rf", str(tmp_path / "ds")], check=True)
        at = rng.uniform(0.3, 0.9) * full
        code, err, _ = run_child(cli("data", "build", cfg, "--quiet"), kill_at=at, sig=sig)
        where = f"{sig.name} at {at:.2f} s of {full:.2f} s: exit {code}: {err[-300:]}"
        if (tmp_path / "ds").exists():
            assert_complete_dataset(tmp_path / "ds")
        assert leftovers(tmp_path, "ds") == [], where


@pytest.mark.slow
def test_killed_fits_are_finished_or_resumable_never_mixed(tmp_path):
    raw = tmp_path / "logs.csv"
    write_logs(raw, 6_000, version=0)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"output": str(tmp_path / "ds"), "partitions": 2,
                                    "source": {"format": "taobao", "paths": [str(raw)]},
                                    "protocol": {"name": "din", "max_length": 10}}))
    ensure_dataset(load_data_config(data), progress=False)
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "name": "run", "output_dir": str(run), "seed": 0,
        "data": {"path": str(tmp_path / "ds"), "batch_size": 64, "eval_batch_size": 1024},
        "model": {"class_path": "DIN", "init_args": {"item_dim": 4, "category_dim": 4, "attention_units": [8],
                                                       "mlp_units": [8]}},
        "trainer": {"max_epochs": 3, "early_stopping_patience": 10, "val_check_interval": 0.5,
                    "enable_progress_bar": False, "num_threads": 1}}))
    code, err, _ = run_child(cli("fit", config, "--quiet"))            # the previous, finished run (seed 0)
    assert code == 0, err
    rng = random.Random(SEED + 2)
    for seed, sig in ((1, signal.SIGINT), (2, signal.SIGTERM)):
        at = rng.uniform(0.0, 2.5)
        # a moment after the new run has started (its config.yaml is rewritten by this fit)
        started_file = run / "config.yaml"
        stamp = started_file.stat().st_mtime_ns

        def ready():
            return started_file.exists() and started_file.stat().st_mtime_ns != stamp

        code, err, _ = run_child(cli("fit", config, "--quiet", "--overwrite", "--seed", seed), kill_at=at,
                                 sig=sig, ready=ready)
        where = f"{sig.name} {at:.2f} s into the fit (seed {SEED}): exit {code}: {err[-800:]}"
        metrics_path = run / "metrics.json"
        if metrics_path.exists():          # finished before the signal: all of it is this run's
            assert json.loads(metrics_path.read_text())["seed"] == seed, where
            continue
        # not finished: nothing of the previous run is left beside this one's files
        assert not (run / "predictions").exists() or not any((run / "predictions").iterdir()), where
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed, where
        if code == 2:   # stopped inside training: the one-line message says how to resume
            assert "interrupted by" in err and ("--resume" in err or "--overwrite" in err), where
        resume = ["--resume", run] if (run / "checkpoints" / "last.ckpt").exists() else [config, "--seed", seed]
        code, err, _ = run_child(cli("fit", *resume, "--quiet"))
        assert code == 0, f"{where}\nresume: {err[-800:]}"
        metrics = json.loads(metrics_path.read_text())
        assert metrics["seed"] == seed and metrics["epochs"] == 3, where
