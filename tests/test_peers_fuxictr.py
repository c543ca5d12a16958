"""FuxiCTR peer: the exporter writes our exact rows in FuxiCTR's format, configs translate
size for size, the docs sections are replaced in place, and (when a peer venv and a
FuxiCTR checkout are given) FuxiCTR really trains on the export."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.config import parse_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "peers"))

import compare  # noqa: E402
import export_fuxictr  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peer")
    source = SourceConfig(format="synthetic", synthetic=SyntheticSource(n_rows=6_000, n_items=500, n_categories=20,
                                                                        mean_events=20.0))
    config = DataConfig(output=str(tmp / "ds"), source=source, protocol=ProtocolConfig(max_length=12), partitions=2)
    return Path(build_dataset(config, progress=False))


@pytest.fixture(scope="module")
def exported(built, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    summary = export_fuxictr.export(built, out, csv=True)
    return out, summary


def test_export_holds_exactly_our_loader_rows(built, exported):
    out, summary = exported
    dataset = BuiltDataset(built)
    assert summary["rows"] == dataset.split_counts
    for split in ("train", "valid", "test"):
        arrays = np.load(out / f"{split}.npz")
        loader = SampleLoader(dataset, split, batch_size=10**9, form="padded")
        batch = next(iter(loader))
        np.testing.assert_array_equal(arrays["user_id"], batch.user.numpy())
        np.testing.assert_array_equal(arrays["item_id"], batch.target_item.numpy())
        np.testing.assert_array_equal(arrays["cate_id"], batch.target_category.numpy())
        np.testing.assert_array_equal(arrays["item_history"], batch.hist_item.numpy())
        np.testing.assert_array_equal(arrays["cate_history"], batch.hist_category.numpy())
        np.testing.assert_array_equal(arrays["label"], batch.label.numpy())
        assert arrays["item_history"].shape[1] == 12


def test_feature_map_is_fuxictr_shaped_with_our_vocab_sizes(built, exported):
    out, _ = exported
    dataset = BuiltDataset(built)
    fmap = json.loads((out / "feature_map.json").read_text())
    features = {k: v for entry in fmap["features"] for k, v in entry.items()}
    assert list(features) == ["user_id", "item_id", "cate_id", "item_history", "cate_history"]
    assert features["user_id"]["vocab_size"] == dataset.num_users
    assert features["item_id"]["vocab_size"] == features["item_history"]["vocab_size"] == dataset.num_items
    assert features["cate_history"]["share_embedding"] == "cate_id"
    assert features["item_history"]["max_len"] == 12 and features["item_history"]["type"] == "sequence"
    assert all(spec["padding_idx"] == 0 for spec in features.values())
    assert fmap["labels"] == ["label"] and fmap["input_length"] == 3 + 2 * 12
    assert "max_len: 12" in (out / "dataset_config.yaml").read_text()


def test_csv_histories_are_caret_joined_valid_ids_oldest_first(exported):
    out, _ = exported
    arrays = np.load(out / "test.npz")
    table = pacsv.read_csv(str(out / "test.csv"), convert_options=pacsv.ConvertOptions(
        column_types={"item_history": "string", "cate_history": "string"}))
    assert table.num_rows == len(arrays["label"])
    for i, text in enumerate(table.column("item_history").to_pylist()[:200]):
        row = arrays["item_history"][i]
        expected = row[row != 0].tolist()
        assert ([int(x) for x in text.split("^")] if text else []) == expected


def _config(model: dict, **trainer):
    return parse_config({"model": model, "data": {"path": "x", "batch_size": 512},
                         "optimizer": {"name": "adam", "lr": 0.002},
                         "trainer": {"max_epochs": 3, "gradient_clip_val": 5.0, **trainer}})


def test_din_config_translates_size_for_size():
    config = _config({"class_path": "DIN", "init_args": {"item_dim": 32, "category_dim": 32,
                                                         "attention_units": [36], "mlp_units": [200, 80],
                                                         "attention_activation": "dice"}})
    name, params = compare.fuxictr_params(config, epochs=2, threads=1, seed=3)
    assert name == "DIN"
    assert params["embedding_dim"] == 32 and params["attention_hidden_units"] == [36]
    assert params["attention_hidden_activations"] == "Dice" and params["dnn_activations"] == "PReLU"
    assert params["dnn_hidden_units"] == [200, 80] and params["din_use_softmax"] is False
    assert (params["batch_size"], params["epochs"], params["learning_rate"], params["seed"]) == (512, 2, 0.002, 3)
    assert params["max_gradient_norm"] == 5.0 and params["reduce_lr_on_plateau"] is False
    assert params["embedding_regularizer"] is None


def test_finalmlp_config_translates_and_unmatched_switches_are_refused():
    config = _config({"class_path": "FinalMLP", "init_args": {"embedding_dim": 10, "fs1_context": ["user"]}})
    name, params = compare.fuxictr_params(config, epochs=1, threads=2, seed=0)
    assert name == "FinalMLP"
    assert params["fs1_context"] == ["user_id"] and params["fs2_context"] == []
    assert params["mlp1_hidden_units"] == [400] and params["num_heads"] == 10
    assert params["embedding_regularizer"] == 0.01 and params["num_threads"] == 2
    with pytest.raises(compare.MappingError, match="one embedding size"):
        compare.fuxictr_params(_config({"class_path": "DIN", "init_args": {"item_dim": 64, "category_dim": 32}}),
                               1, 1, 0)
    with pytest.raises(compare.MappingError, match="mean only"):
        compare.fuxictr_params(_config({"class_path": "FinalMLP", "init_args": {"sequence": "attention"}}), 1, 1, 0)


def test_docs_sections_are_replaced_in_place(tmp_path):
    """update_docs rewrites the marked fuxictr-peer sections of both documents, nothing else."""
    results = tmp_path / "results"
    results.mkdir()
    for path in sorted((REPO / "bench" / "results").glob("peer_*.json")):
        shutil.copy(path, results / path.name)
    if not any(results.iterdir()):
        pytest.skip("no bench/results/peer_*.json to render")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results.md").write_text("# Results\n\n## Data\nkeep me\n\n<!-- BEGIN fuxictr-peer -->\n## FuxiCTR peer\n"
                                     "old numbers\n<!-- END fuxictr-peer -->\n\n## Kernels\nkeep me too\n")
    compare.update_docs(results, docs)
    text = (docs / "results.md").read_text()
    assert "old numbers" not in text and "test AUC" in text
    assert text.index("## Data") < text.index("## FuxiCTR peer") < text.index("## Kernels")
    assert text.count("keep me") == 2
    assert (docs / "benchmarks.md").read_text().startswith("# Benchmarks\n\n<!-- BEGIN fuxictr-peer")


PEER_VENV = os.environ.get("RECSYS_PEER_VENV", str(REPO / ".peer-venv"))
FUXICTR_SRC = os.environ.get("FUXICTR_SRC")


@pytest.mark.slow
@pytest.mark.parametrize("model", ["DIN", "FinalMLP"])
def test_fuxictr_trains_on_the_export(exported, tmp_path, model):
    python = Path(PEER_VENV) / "bin" / "python"
    if not python.exists() or not FUXICTR_SRC:
        pytest.skip("needs a FuxiCTR peer venv (bench/peers/setup_fuxictr.sh; RECSYS_PEER_VENV) and a FuxiCTR "
                    "checkout in FUXICTR_SRC")
    out, summary = exported
    result_path = tmp_path / "run.json"
    sizes = ["--set", "embedding_dim=8"] + (["--set", "dnn_hidden_units=[16]", "--set", "attention_hidden_units=[8]"]
                                            if model == "DIN" else
                                            ["--set", "mlp1_hidden_units=[20]", "--set", "mlp2_hidden_units=[20]",
                                             "--set", "fs_hidden_units=[16]", "--set", "num_heads=2"])
    subprocess.run([str(python), str(REPO / "bench" / "peers" / "run_fuxictr.py"), "--data", str(out),
                    "--fuxictr-src", FUXICTR_SRC, "--model", model, "--out", str(result_path),
                    "--workdir", str(tmp_path / "ckpt"), "--set", "epochs=1", *sizes], check=True, timeout=600)
    result = json.loads(result_path.read_text())
    assert result["epochs"] == 1 and result["train_samples"] == summary["rows"]["train"]
    assert result["train_samples_per_second"] > 0 and result["torch_threads"] == 1
    assert result["splits"]["test"]["samples"] == summary["rows"]["test"]
    assert 0.0 <= result["splits"]["test"]["auc"] <= 1.0
    assert len(np.load(f"{result_path}.test_pred.npy")) == summary["rows"]["test"]


def test_run_ours_times_training_apart_from_validation(built, tmp_path):
    import yaml

    import run_ours

    config = {"model": {"class_path": "DIN", "init_args": {"item_dim": 8, "category_dim": 8, "attention_units": [8],
                                                           "mlp_units": [16]}},
              "data": {"path": str(built), "batch_size": 256, "eval_batch_size": 4096},
              "trainer": {"max_epochs": 2, "enable_progress_bar": False}}
    path = tmp_path / "din.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run_ours.fit_timed(str(path), {"output_dir": str(tmp_path / "run"), "trainer.num_threads": 1})
    timing = json.loads((out / "timing.json").read_text())
    train_rows = BuiltDataset(built).split_counts["train"]
    # the training loader drops the last partial batch (BatchNorm/Dice need > 1 row)
    assert timing["train_samples"] == timing["epochs"] * (train_rows // 256) * 256
    assert timing["validation_seconds"] > 0 and timing["train_seconds"] > 0
    assert timing["train_samples_per_second"] == pytest.approx(timing["train_samples"] / timing["train_seconds"],
                                                               rel=0.01)
    assert timing["torch_threads"] == 1
