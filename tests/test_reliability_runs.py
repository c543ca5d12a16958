"""Run directories are complete, current and from one run (issue 16).

fit refuses a directory holding a run unless --overwrite or --resume; an interrupted fit
resumes from its last checkpoint with the same config only; evaluate refuses a dataset
rebuilt with other vocabularies; user mistakes are one line and exit 2.
"""

import json
from pathlib import Path

import pytest
import yaml

from recsys import run_state
from recsys.cli import main as cli_main


def write_logs(path, users=80, events=12, item_offset=0):
    lines = [f"{u},{(u * 7 + e * 3) % 50 + 1 + item_offset},{(u + e) % 6 + 1},pv,{1000 + e}"
             for u in range(1, users + 1) for e in range(events)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture()
def project(tmp_path):
    logs = write_logs(tmp_path / "logs.csv")
    data = {"output": str(tmp_path / "ds"), "source": {"format": "taobao", "paths": [str(logs)]},
            "protocol": {"name": "din", "max_length": 6}, "partitions": 2}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(data))
    assert cli_main(["data", "build", str(tmp_path / "data.yaml"), "--quiet"]) == 0
    return tmp_path


def run_config(root, name="run", **trainer):
    raw = {"name": name, "output_dir": str(root / name), "seed": 0,
           "data": {"path": str(root / "ds"), "batch_size": 64, "eval_batch_size": 512},
           "model": {"class_path": "DIN",
                     "init_args": {"item_dim": 4, "category_dim": 4, "attention_units": [8], "mlp_units": [8]}},
           "trainer": {"max_epochs": 1, "enable_progress_bar": False, **trainer}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_fit_refuses_a_finished_run_without_overwrite(project, capsys):
    config = run_config(project)
    assert cli_main(["fit", str(config), "--quiet"]) == 0
    first = (project / "run" / "metrics.json").read_text()
    capsys.readouterr()
    assert cli_main(["fit", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (project / "run" / "metrics.json").read_text() == first
    assert cli_main(["fit", str(config), "--quiet", "--overwrite", "--seed", "3"]) == 0
    assert json.loads((project / "run" / "metrics.json").read_text())["seed"] == 3
    assert (project / "run" / run_state.DATA_FINGERPRINT).exists()
    assert cli_main(["fit", "--resume", str(project / "run"), "--quiet"]) == 2
    assert "finished run: nothing to resume" in capsys.readouterr().err


def test_overwrite_removes_the_old_metrics_before_training(project, monkeypatch):
    config = run_config(project)
    assert cli_main(["fit", str(config), "--quiet"]) == 0
    seen = {}

    def fail_in_training(*args, **kwargs):   # what a kill during training leaves behind
        seen["files"] = sorted(p.name for p in (project / "run").iterdir())
        raise RuntimeError("killed")

    monkeypatch.setattr("lightning.Trainer.fit", fail_in_training)
    with pytest.raises(RuntimeError, match="killed"):
        cli_main(["fit", str(config), "--quiet", "--overwrite"])
    assert "metrics.json" not in seen["files"] and "predictions" not in seen["files"]
    assert "logs" not in seen["files"] and "model.safetensors" not in seen["files"]


def test_interrupted_fit_resumes_from_its_last_checkpoint_with_the_same_config(project, capsys):
    config = run_config(project, max_epochs=3, early_stopping_patience=5)
    run = project / "run"
    # simulate a run interrupted after its first epoch: train one epoch, drop the result files
    assert cli_main(["fit", str(config), "--quiet", "--set", "trainer.max_epochs=1"]) == 0
    assert run_state.last_checkpoint(run).exists()
    one_epoch = json.loads((run / "metrics.json").read_text())["train_samples"]
    (run / "metrics.json").unlink()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["trainer"]["max_epochs"] = 3           # the config the interrupted run had started with
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    # a different config is refused, naming the key
    assert cli_main(["fit", str(config), "--resume", str(run), "--quiet", "--set", "optimizer.lr=0.5"]) == 2
    assert "optimizer.lr: 0.001 -> 0.5" in capsys.readouterr().err
    assert cli_main(["fit", "--resume", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # continued from epoch 1 to the configured 3: two more epochs trained, not three
    assert metrics["epochs"] == 3 and metrics["train_samples"] == 2 * one_epoch


def test_resume_of_a_run_without_checkpoint_says_so(project, capsys):
    run = project / "run"
    run.mkdir()
    config = run_config(project)
    assert cli_main(["fit", str(config), "--quiet", "--resume", str(run)]) == 2
    assert "no run to resume" in capsys.readouterr().err


def test_evaluate_refuses_a_dataset_rebuilt_with_other_vocabularies(project, capsys):
    assert cli_main(["fit", str(run_config(project)), "--quiet"]) == 0
    before = json.loads((project / "run" / "metrics.json").read_text())
    write_logs(project / "logs.csv", item_offset=1000)   # same sizes, other raw item ids
    assert cli_main(["data", "build", str(project / "data.yaml"), "--quiet", "--overwrite"]) == 0
    item_sizes = [f["size"] for f in json.loads((project / "run" / "model.json").read_text())["features"]["fields"]
                  if f["name"] == "item"]
    assert json.loads((project / "ds" / "manifest.json").read_text())["vocab_sizes"]["item"] == item_sizes[0]
    capsys.readouterr()
    assert cli_main(["evaluate", str(project / "run")]) == 2
    err = capsys.readouterr().err
    assert "assign other ids (rebuilt since training" in err and "item.parquet" in err and len(err.strip().splitlines()) == 1
    assert json.loads((project / "run" / "metrics.json").read_text()) == before


def test_data_build_says_built_or_reused_and_changed_inputs_are_refused(project, capsys):
    capsys.readouterr()
    assert cli_main(["data", "build", str(project / "data.yaml"), "--quiet"]) == 0
    assert "(reused)" in capsys.readouterr().out
    write_logs(project / "logs.csv", users=81)
    assert cli_main(["data", "build", str(project / "data.yaml"), "--quiet"]) == 2
    assert "logs.csv changed" in capsys.readouterr().err
    assert cli_main(["data", "build", str(project / "data.yaml"), "--quiet", "--overwrite"]) == 0
    assert "(built)" in capsys.readouterr().out


def test_quiet_build_still_prints_the_rejection_summary(project, capsys):
    logs = project / "logs.csv"
    logs.write_text(logs.read_text() + "1,x,3,pv,5\n")
    capsys.readouterr()
    assert cli_main(["data", "build", str(project / "data.yaml"), "--quiet", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "1 lines rejected" in out and "bad_item" in out and f"{logs}, line 961" in out


def test_a_damaged_last_checkpoint_is_a_one_line_error_on_resume(project, capsys):
    config = run_config(project)
    assert cli_main(["fit", str(config), "--quiet"]) == 0
    run = project / "run"
    (run / "metrics.json").unlink()
    ckpt = run_state.last_checkpoint(run)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])          # what a non-atomic write cut short would leave
    capsys.readouterr()
    assert cli_main(["fit", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable Lightning checkpoint" in err[0]
    # checkpoints are written through a temporary name: no partial file is ever left under the real one
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_interrupt_messages_name_the_signal_and_the_way_back(tmp_path):
    from recsys.data_pipelines.output_dir import BuildInterrupted
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    try:
        try:
            raise BuildInterrupted("build interrupted by SIGTERM")
        except KeyboardInterrupt:
            raise SystemExit(1)            # what Lightning turns a KeyboardInterrupt into
    except SystemExit as exc:
        message = str(run_state.describe_interrupt(run, exc, 2, 40))
    assert "interrupted by SIGTERM at epoch 2, step 40" in message and "--overwrite" in message
    run_state.last_checkpoint(run).write_bytes(b"x")
    message = str(run_state.describe_interrupt(run, KeyboardInterrupt()))
    assert "SIGINT outside training" in message and f"recsys fit --resume {run}" in message
