"""User mistakes end in one line and exit 2, never a traceback (docs/cli.md; issue 16).
Settings that make no sense are rejected, and the report's RelaImpr never flips sign."""

import json

import pytest
import yaml

from recsys.cli import main as cli_main
from recsys.report import _rela_impr_cell, write_report
from tests.test_reliability_runs import project, run_config  # noqa: F401  (fixture)


def one_line_error(capsys, argv, needle):
    capsys.readouterr()
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    return err[0]


@pytest.mark.parametrize("override,needle", [
    ("optimizer.lr=-1", "optimizer.lr"), ("optimizer.lr=.nan", "optimizer.lr"), ("optimizer.lr=.inf", "optimizer.lr"),
    ("trainer.max_epochs=0", "trainer.max_epochs"), ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ("data.max_length=0", "data.max_length"), ("data.max_length=-3", "data.max_length"),
    ("trainer.early_stopping_patience=-1", "early_stopping_patience"),
    ("optimizer.weight_decay=-0.1", "weight_decay"), ("trainer.val_check_interval=0", "val_check_interval"),
])
def test_settings_that_make_no_sense_are_one_line_errors(project, capsys, override, needle):  # noqa: F811
    one_line_error(capsys, ["fit", str(run_config(project)), "--quiet", "--set", override], needle)
    assert not (project / "run").exists()    # nothing was started


def test_data_and_artifact_mistakes_are_one_line_errors(project, tmp_path, capsys):  # noqa: F811
    one_line_error(capsys, ["fit", str(project), "--quiet"], "is a directory")
    for text, needle in (("protocol: {max_length: 0}", "max_length"), ("protocl: {max_length: 3}", "protocl"),
                         ("protocol: {max_length: long}", "protocol.max_length")):
        (tmp_path / "d.yaml").write_text(f"output: {tmp_path / 'd'}\n{text}\n")
        one_line_error(capsys, ["data", "build", str(tmp_path / "d.yaml"), "--quiet"], needle)
    one_line_error(capsys, ["data", "generate", str(tmp_path / "g.csv"), "--rows", "0"], "n_rows")
    # every user has seen every item: no negative can be drawn
    (tmp_path / "all.csv").write_text("".join(f"{u},{i},1,pv,{i}\n" for u in (1, 2) for i in (1, 2, 3)))
    (tmp_path / "all.yaml").write_text(yaml.safe_dump({"output": str(tmp_path / "all"), "partitions": 1,
                                                       "source": {"format": "taobao", "paths": [str(tmp_path / "all.csv")]},
                                                       "protocol": {"max_length": 3}}))
    one_line_error(capsys, ["data", "build", str(tmp_path / "all.yaml"), "--quiet"], "seen (almost) every item")
    # corrupt artifacts of a finished run and of its dataset
    assert cli_main(["fit", str(run_config(project)), "--quiet"]) == 0
    run = project / "run"
    for name, where in (("metrics.json", run), ("model.json", run), ("manifest.json", project / "ds")):
        good = (where / name).read_text()
        (where / name).write_text('{"trunc')
        one_line_error(capsys, ["evaluate", str(run)], name)
        if name == "metrics.json":
            one_line_error(capsys, ["report", str(run), "--out", str(tmp_path / "rep")], name)
        (where / name).write_text(good)


def test_rela_impr_is_undefined_for_a_base_at_or_below_random():
    assert _rela_impr_cell(0.75, 0.7) == "+25.00%"
    # the case: base 0.49, model 0.94 beat it, the plain formula says -4400%
    assert _rela_impr_cell(0.94, 0.49) == "undefined (base AUC 0.4900 ≤ 0.5)"
    assert _rela_impr_cell(0.6, 0.5).startswith("undefined")
    assert _rela_impr_cell(None, 0.7) == "–"


def test_report_says_which_plots_are_missing_and_why(project, tmp_path):  # noqa: F811
    assert cli_main(["fit", str(run_config(project)), "--quiet"]) == 0
    run = project / "run"
    for p in (run / "predictions").iterdir():
        p.unlink()
    path = write_report([run], tmp_path / "rep")
    page, md = path.read_text(), (tmp_path / "rep" / "report.md").read_text()
    why = "run: no ROC curve or calibration diagram: it has no predictions/test.parquet"
    assert why in page and why in md
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["splits"]["test"]["auc"] > 0   # the table still has the numbers
