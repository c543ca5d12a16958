"""Training spine end to end: configs, fit/evaluate/report, bad checkpoints, NaN loss, CLI, DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.cli import main as cli_main
from recsys.config import ConfigError, load_config, parse_config
from recsys.errors import DataError
from recsys.runner import CheckpointError, evaluate, fit, load_run
from recsys.task import NonFiniteLossError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    config = DataConfig(output=str(root / "ds"), source=SourceConfig(format="synthetic", synthetic=SyntheticSource(
        n_rows=30_000, n_items=1_000, n_categories=30, mean_events=25.0)), protocol=ProtocolConfig(max_length=20))
    return build_dataset(config, progress=False)


def run_config(dataset, out, model="DIN", init_args=None, **extra):
    raw = {"name": Path(out).name, "output_dir": str(out), "seed": 0,
           "data": {"path": str(dataset), "batch_size": 256, "eval_batch_size": 2048},
           "model": {"class_path": model, "init_args": init_args or {"item_dim": 8, "category_dim": 8,
                                                                     "attention_units": [16], "mlp_units": [32]}},
           "trainer": {"max_epochs": 1, "enable_progress_bar": False}}
    raw.update(extra)
    return raw


def test_config_errors_name_the_key(dataset, tmp_path):
    raw = run_config(dataset, tmp_path / "r")
    raw["model"]["init_args"]["item_dimm"] = 4
    with pytest.raises(ConfigError, match="item_dimm"):
        parse_config(raw)
    raw = run_config(dataset, tmp_path / "r")
    raw["optimiser"] = {"lr": 0.1}
    with pytest.raises(ConfigError, match="optimiser"):
        parse_config(raw)
    raw = run_config(dataset, tmp_path / "r")
    raw["trainer"]["max_epochs"] = "many"
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        parse_config(raw)
    raw = run_config(dataset, tmp_path / "r", model="NoSuchModel")
    with pytest.raises(ConfigError, match="NoSuchModel"):
        parse_config(raw)
    raw = run_config(dataset, tmp_path / "r")
    raw["data"]["shuffle_block"] = 0
    with pytest.raises(ConfigError, match="shuffle_block"):
        parse_config(raw)
    raw = run_config(dataset, tmp_path / "r")
    raw["data"]["path"] = str(tmp_path / "missing")
    with pytest.raises(ConfigError, match="does not exist"):
        fit(parse_config(raw), progress=False)


def test_shuffle_block_reaches_the_training_loader(dataset, tmp_path):
    from recsys.datamodule import SampleDataModule
    raw = run_config(dataset, tmp_path / "r")
    raw["data"]["shuffle_block"] = 1 << 30      # covers the split: a full permutation
    config = parse_config(raw)
    module = SampleDataModule(dataset, config.data, seed=0)
    module.train_dataloader()
    loader = module.train_loader
    assert loader.shuffle_block == 1 << 30
    loader.set_epoch(0)
    order = loader._order()
    assert sorted(order.tolist()) == list(range(loader.num_samples))   # one block: every sample once


def test_every_shipped_config_parses():
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)


def test_fit_evaluate_report_end_to_end(dataset, tmp_path):
    din = fit(parse_config(run_config(dataset, tmp_path / "din")), progress=False)
    base = fit(parse_config(run_config(dataset, tmp_path / "base", model="EmbeddingMLP",
                                       init_args={"item_dim": 8, "category_dim": 8, "mlp_units": [32]})), progress=False)
    metrics = json.loads((din / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert 0.6 < test["auc"] <= 1 and 0.6 < test["gauc"] <= 1 and test["logloss"] < 0.69
    assert test["samples"] == 2 * test["users"] and metrics["train_samples_per_second"] > 0
    assert (din / "model.safetensors").exists() and (din / "config.yaml").exists()
    again = evaluate(din)["splits"]["test"]
    assert again["auc"] == pytest.approx(test["auc"], abs=1e-9)
    assert cli_main(["report", str(din), str(base), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "DIN" in page
    assert "| din |" in (tmp_path / "report" / "report.md").read_text()


def test_report_renders_in_headless_chromium(dataset, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium) to render the report")
    run = fit(parse_config(run_config(dataset, tmp_path / "din", trainer={"max_epochs": 1, "limit_train_batches": 5,
                                                                          "enable_progress_bar": False})), progress=False)
    assert cli_main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,1800", f"--screenshot={shot}",
                    (tmp_path / "report" / "report.html").as_uri()], capture_output=True, timeout=120)
    from matplotlib.image import imread
    pixels = imread(str(shot))
    assert pixels.shape[0] == 1800 and pixels.shape[1] == 1280
    # the page is not blank: the header band is dark blue and plots add many distinct colours
    assert pixels[20, 20, 2] > pixels[20, 20, 0] + 0.2
    assert len({tuple((p * 255).astype(int)) for p in pixels[::13, ::13, :3].reshape(-1, 3)}) > 50


def test_corrupted_foreign_and_mismatched_checkpoints_fail_clearly(dataset, tmp_path):
    run = fit(parse_config(run_config(dataset, tmp_path / "din", trainer={"max_epochs": 1, "limit_train_batches": 3,
                                                                          "enable_progress_bar": False})), progress=False)
    weights = run / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_run(run)
    weights.write_bytes(b"\x80\x04\x95pickle-like garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_run(run)
    weights.write_bytes(good)
    saved = json.loads((run / "model.json").read_text())
    saved["init_args"]["item_dim"] = 4                     # a foreign model shape
    (run / "model.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="has shape"):
        load_run(run)
    saved["init_args"]["item_dim"] = 8
    item = next(f for f in saved["features"]["fields"] if f["name"] == "item")
    item["size"] += 5                                      # trained on other vocabularies
    (run / "model.json").write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="has shape"):   # the weights do not fit the saved spec
        load_run(run)
    item["size"] -= 5
    (run / "model.json").write_text(json.dumps(saved))
    load_run(run)


def test_loading_a_run_needs_no_dataset_and_evaluate_never_builds(dataset, tmp_path):
    """load_run rebuilds from model.json + weights; evaluate opens the dataset or says it is missing."""
    copy = tmp_path / "ds_copy"
    shutil.copytree(dataset, copy)
    run = fit(parse_config(run_config(copy, tmp_path / "din", trainer={"max_epochs": 1, "limit_train_batches": 3,
                                                                       "enable_progress_bar": False})), progress=False)
    shutil.rmtree(copy)
    config, model = load_run(run)
    assert type(model).__name__ == "DIN" and not model.training
    assert model.features.num_items == json.loads((run / "model.json").read_text())["features"]["fields"][1]["size"]
    with pytest.raises(ConfigError, match="does not exist"):
        evaluate(run)
    # a run whose config names a data config that was never built: evaluate refuses, builds nothing
    data_config = tmp_path / "never_built.yaml"
    data_config.write_text(yaml.safe_dump({"output": str(tmp_path / "never_built"), "source": {"format": "synthetic"}}))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"] = {**saved["data"], "path": None, "build": str(data_config)}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(DataError, match="is not built"):
        evaluate(run)
    assert not (tmp_path / "never_built").exists()


def test_evaluate_refuses_a_dataset_with_other_vocabularies(dataset, tmp_path):
    run = fit(parse_config(run_config(dataset, tmp_path / "din", trainer={"max_epochs": 1, "limit_train_batches": 3,
                                                                          "enable_progress_bar": False})), progress=False)
    other = build_dataset(DataConfig(output=str(tmp_path / "other"), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(n_rows=20_000, n_items=700, n_categories=30, mean_events=25.0)),
        protocol=ProtocolConfig(max_length=20)), progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"]["path"] = str(other)
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(CheckpointError, match="different vocabularies"):
        evaluate(run)


def test_fit_restores_the_thread_count_on_success_and_on_error(dataset, tmp_path):
    import torch
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    fit(parse_config(run_config(dataset, tmp_path / "ok", trainer={"max_epochs": 1, "limit_train_batches": 2,
                                                                   "num_threads": target,
                                                                   "enable_progress_bar": False})), progress=False)
    assert torch.get_num_threads() == before
    raw = run_config(dataset, tmp_path / "nan", trainer={"max_epochs": 1, "num_threads": target,
                                                         "enable_progress_bar": False})
    raw["optimizer"] = {"name": "sgd", "lr": 1e30}
    with pytest.raises(NonFiniteLossError):
        fit(parse_config(raw), progress=False)
    assert torch.get_num_threads() == before


def test_nan_loss_stops_with_step_and_batch(dataset, tmp_path):
    raw = run_config(dataset, tmp_path / "nan")
    raw["optimizer"] = {"name": "sgd", "lr": 1e30}
    with pytest.raises(NonFiniteLossError, match=r"at global step \d+ \(epoch 0, batch \d+"):
        fit(parse_config(raw), progress=False)


def test_cli_help_and_errors(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    assert "quickstart" in capsys.readouterr().out
    assert cli_main(["fit", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(dataset, tmp_path):
    raw = run_config(dataset, tmp_path / "ddp", trainer={"max_epochs": 1, "strategy": "ddp", "devices": 2,
                                                         "accelerator": "cpu", "enable_progress_bar": False})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "recsys.cli", "fit", str(path), "--quiet"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["splits"]["test"]["auc"] > 0.6


def test_data_fields_reach_model_loader_side_tables_and_model_json(tmp_path):
    """data.fields = item (ids, id), user and context side fields: the model is built for the
    selected spec, the item side tables are attached from the dataset, model.json stores the
    spec, and a reloaded run carries the same tables without the dataset."""
    import numpy as np
    import torch
    from tests.test_data_fields import side_files
    cfg, _, _ = side_files(tmp_path)
    data = build_dataset(cfg, progress=False)
    names = ["brand", "tags", "segment", "hour"]
    raw = run_config(data, tmp_path / "fields", trainer={"max_epochs": 1, "limit_train_batches": 5,
                                                         "enable_progress_bar": False})
    raw["data"]["fields"] = names
    run = fit(parse_config(raw), progress=False)
    saved = json.loads((run / "model.json").read_text())["features"]
    assert [f["name"] for f in saved["fields"]] == ["user", "item", "category", "behavior"] + names
    from recsys.data_pipelines.dataset import BuiltDataset
    dataset = BuiltDataset.open(data)
    expected = {name: torch.from_numpy(np.asarray(dataset.side_table(name))) for name in ("brand", "tags")}
    bad = dict(raw, output_dir=str(tmp_path / "bad"), data=dict(raw["data"], fields=["colour"]))
    with pytest.raises(ConfigError, match=r"data.fields:.*\['colour'\]"):
        fit(parse_config(bad), progress=False)
    shutil.rmtree(data)                                   # reloading needs no dataset
    config, model = load_run(run)
    assert config.data.fields == names and [f.name for f in model.features.side_fields] == names
    for name, table in expected.items():
        held = getattr(model.item_side, name)
        assert held.shape[0] == model.features.num_items and held.abs().sum() > 0
        assert torch.equal(held[:, :table.shape[1]] if table.ndim == 2 else held, table.to(held.dtype))


def test_the_model_rebuild_imports_no_lightning_pyarrow_or_data_pipelines():
    """recsys.artifacts (what serving will use) stays free of the training stack."""
    code = ("import sys, recsys.artifacts; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pyarrow', 'pandas') "
            "or m.startswith('recsys.data_pipelines')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
