"""The `recsys` command as a user meets it: help texts, the data commands on generated logs,
fit/evaluate/report through the CLI, and one-line errors (exit 2) for user mistakes."""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from recsys.cli import build_parser
from recsys.cli import main as cli_main

COMMANDS = [[], ["quickstart"], ["fit"], ["evaluate"], ["report"], ["data"], ["data", "generate"],
            ["data", "build"], ["data", "inspect"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "recsys")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(command + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: recsys")
    assert len(text.splitlines()) >= 5


def test_every_argument_is_explained():
    """No option or positional argument is left without a help string."""
    def walk(parser, path):
        for action in parser._actions:
            if action.dest == "help":
                continue
            if hasattr(action, "choices") and isinstance(action.choices, dict):      # subparsers
                for name, sub in action.choices.items():
                    yield from walk(sub, path + [name])
                continue
            yield " ".join(path), action
    missing = [f"{where}: {action.dest}" for where, action in walk(build_parser(), ["recsys"]) if not action.help]
    assert not missing, missing


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Logs written by `recsys data generate`, built by `recsys data build`."""
    root = tmp_path_factory.mktemp("cli")
    logs = root / "logs.csv.gz"
    assert cli_main(["data", "generate", str(logs), "--rows", "8000", "--items", "300", "--categories", "12",
                     "--seed", "5"]) == 0
    config = {"output": str(root / "ds"), "source": {"format": "taobao", "paths": [str(logs)]},
              "protocol": {"name": "din", "max_length": 12}, "partitions": 2}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    assert cli_main(["data", "build", str(root / "data.yaml"), "--quiet"]) == 0
    return root


def test_data_generate_build_inspect(built, capsys):
    with gzip.open(built / "logs.csv.gz", "rt") as f:
        rows = f.read().splitlines()
    assert len(rows) == 8000 and len(rows[0].split(",")) == 5
    capsys.readouterr()
    assert cli_main(["data", "inspect", str(built / "ds")]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["events"] == manifest["rejections"]["accepted"] == 8000
    assert manifest["rejections"]["rejected"] == 0
    # din protocol: one valid and one test pair (positive + negative) per user
    assert manifest["split_samples"]["test"] == manifest["split_samples"]["valid"] == 2 * manifest["users"]


def _run_config(built, out, **trainer):
    raw = {"name": Path(out).name, "output_dir": str(out), "seed": 0,
           "data": {"path": str(built / "ds"), "batch_size": 128, "eval_batch_size": 1024},
           "model": {"class_path": "recsys.models.din.DIN",
                     "init_args": {"item_dim": 4, "category_dim": 4, "attention_units": [8], "mlp_units": [8]}},
           "trainer": {"max_epochs": 1, "enable_progress_bar": False, **trainer}}
    path = Path(out).with_suffix(".yaml")
    path.write_text(yaml.safe_dump(raw))
    return path


def test_fit_evaluate_report_through_the_cli(built, tmp_path, capsys):
    config = _run_config(built, tmp_path / "din")
    assert cli_main(["fit", str(config), "--quiet", "--seed", "3", "--set", "trainer.limit_train_batches=5"]) == 0
    out = capsys.readouterr().out
    assert "test AUC" in out and "GAUC" in out
    resolved = yaml.safe_load((tmp_path / "din" / "config.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["trainer"]["limit_train_batches"] == 5
    metrics = json.loads((tmp_path / "din" / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["protocol"] == "din"
    for split in ("valid", "test"):
        for key in ("auc", "gauc", "logloss", "samples", "users", "gauc_users_excluded"):
            assert key in metrics["splits"][split], (split, key)
    for key in ("wall_seconds", "train_samples_per_second", "best_epoch"):
        assert key in metrics

    assert cli_main(["evaluate", str(tmp_path / "din"), "--split", "valid", "test"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["test"]["auc"] == pytest.approx(metrics["splits"]["test"]["auc"], abs=1e-9)

    assert cli_main(["report", str(tmp_path / "din"), "--out", str(tmp_path / "rep"), "--title", "CLI check"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert "<title>CLI check</title>" in (tmp_path / "rep" / "report.html").read_text()


@pytest.mark.parametrize("mistake, message", [
    ({"set": "trainer.max_epoch=3"}, "max_epoch"),
    ({"set": "model.init_args.attention_units=wide"}, "attention_units"),
    ({"set": "model.init_args.use_softmax=maybe"}, 'init_args: Parser key "use_softmax": Expected a <class \'bool\'>'),
    ({"set": "data.path=/nonexistent/ds"}, "does not exist"),
    ({"yaml": "model: [unclosed"}, "not valid YAML"),
    ({"set": "model.class_path=DINN"}, "'DINN' is not a registered model; did you mean 'DIN'?"),
])
def test_user_mistakes_exit_2_with_one_line(built, tmp_path, capsys, mistake, message):
    config = _run_config(built, tmp_path / "bad")
    if "yaml" in mistake:
        config.write_text(mistake["yaml"])
    args = ["fit", str(config), "--quiet"] + (["--set", mistake["set"]] if "set" in mistake else [])
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and "Union" not in err and len(err.splitlines()) == 1


def test_evaluate_and_report_refuse_what_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no metrics.json" in capsys.readouterr().err


HEAVY = ("torch", "lightning")


def _modules_after(argv: list) -> "tuple[int, list]":
    """Run ``recsys argv`` in a fresh interpreter; (exit code, heavy top-level modules it imported)."""
    import subprocess
    import sys
    code = ("import sys; from recsys.cli import main; rc = main(sys.argv[1:]); "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr


def test_data_commands_import_neither_torch_nor_lightning(built, tmp_path):
    rc, heavy = _modules_after(["data", "inspect", str(built / "ds")])
    assert rc == 0 and heavy == "[]", heavy
    config = yaml.safe_load((built / "data.yaml").read_text())
    config["output"] = str(tmp_path / "ds2")
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(config))
    rc, heavy = _modules_after(["data", "build", str(tmp_path / "data.yaml"), "--quiet"])
    assert rc == 0 and heavy == "[]", heavy
    rc, heavy = _modules_after(["data", "generate", str(tmp_path / "g.csv"), "--rows", "500", "--items", "50",
                                 "--categories", "5"])
    assert rc == 0 and heavy == "[]", heavy


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["protocol"].update(nmae="din"), "protocol: unknown key(s) ['nmae']"),
    (lambda c: c["protocol"].update(max_length="long"), "protocol.max_length: expected int"),
    (lambda c: c["protocol"].update(name="dinn"), "protocol.name must be one of"),
])
def test_data_config_mistakes_exit_2_with_one_line(built, tmp_path, capsys, edit, message):
    config = yaml.safe_load((built / "data.yaml").read_text())
    config["output"] = str(tmp_path / "ds")
    edit(config)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert cli_main(["data", "build", str(tmp_path / "bad.yaml"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'bad.yaml'}: ") and message in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "ds").exists()
    (tmp_path / "broken.yaml").write_text("protocol: [unclosed")
    assert cli_main(["data", "build", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_a_programming_error_keeps_its_traceback(built, monkeypatch):
    """A KeyError (or any non-RecsysError) is a bug: it propagates instead of becoming one line."""
    import recsys.data_pipelines.build as build

    def broken(path):
        return {}["users"]
    monkeypatch.setattr(build, "load_manifest", broken)
    with pytest.raises(KeyError, match="users"):
        cli_main(["data", "inspect", str(built / "ds")])


def test_impossible_generator_settings_exit_2(tmp_path, capsys):
    assert cli_main(["data", "generate", str(tmp_path / "g.csv"), "--rows", "100", "--items", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "n_items >= n_categories" in err and len(err.splitlines()) == 1
