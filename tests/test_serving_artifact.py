"""The exported artifact: `recsys export` writes it complete (every file hashed), and loading
refuses each damaged form with a CheckpointError naming the file; importing serving pulls
in no Lightning, pandas, matplotlib or scikit-learn."""

import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from recsys.cli import main as cli_main
from recsys.errors import CheckpointError, ConfigError
from recsys.serving import FORMAT_VERSION, Scorer, export_artifact, open_artifact
from recsys.serving.artifact import MANIFEST
from recsys.retrieval.index import file_sha256
from tests.serving_fixtures import build_side_dataset, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serving_artifact")
    return train(build_side_dataset(root / "data"), root / "din", limit_train_batches=3)


@pytest.fixture()
def artifact(run, tmp_path):
    return export_artifact(run, tmp_path / "artifact")


def _rehash(artifact, name):
    """Make the manifest agree with a replaced file (what a careful attacker would do)."""
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": file_sha256(artifact / name), "bytes": (artifact / name).stat().st_size}
    (artifact / MANIFEST).write_text(json.dumps(manifest))


def test_export_writes_every_file_hashed_and_loads(run, artifact):
    manifest = json.loads((artifact / MANIFEST).read_text())
    assert manifest["format"] == "recsys-serving-artifact" and manifest["format_version"] == FORMAT_VERSION
    files = manifest["files"]
    on_disk = sorted(p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file())
    assert sorted(files) == [n for n in on_disk if n != MANIFEST]
    for name in ("ranker/model.safetensors", "ranker/model.json", "features.json", "item_category.npy",
                 "vocab/item.parquet", "vocab/user.parquet", "vocab/category.parquet", "vocab/segment.parquet",
                 "vocab/interests.parquet", "vocab/hour.parquet", "side/user/age.npy", "side/user/segment.npy",
                 "side/user/interests.values.npy", "side/user/interests.offsets.npy"):
        assert name in files, name
        assert files[name]["sha256"] == file_sha256(artifact / name)
    assert (artifact / "ranker" / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    component = manifest["components"]["ranker"]
    assert component["model_sha256"] == file_sha256(run / "model.safetensors") and component["item_vocabulary"]
    assert not list(artifact.parent.glob(f".{artifact.name}*"))          # no temporary left
    Scorer.load(artifact)


def test_export_refuses_an_existing_directory_and_replaces_it_with_overwrite(run, artifact, capsys):
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        export_artifact(run, artifact)
    (artifact / "stale.txt").write_text("old")
    assert cli_main(["export", str(run), "--out", str(artifact), "--overwrite"]) == 0
    assert "artifact:" in capsys.readouterr().out and not (artifact / "stale.txt").exists()
    assert cli_main(["export", str(run), "--out", str(artifact)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["export", str(artifact), "--out", str(artifact.parent / "x")]) == 2   # not a run


def test_a_missing_file_is_named(artifact):
    (artifact / "vocab" / "item.parquet").unlink()
    with pytest.raises(CheckpointError, match=r"vocab/item.parquet is missing"):
        Scorer.load(artifact)


def test_a_truncated_file_is_named(artifact):
    weights = artifact / "ranker" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"ranker/model.safetensors: \d+ bytes, the manifest lists \d+ \(truncated\)"):
        Scorer.load(artifact)


def test_a_tampered_file_is_refused_by_its_hash(artifact):
    path = artifact / "item_category.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1                                         # same size, one bit changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"item_category.npy: sha256 differs from the manifest"):
        Scorer.load(artifact)


def test_a_newer_format_version_is_refused(artifact):
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=rf"format version {FORMAT_VERSION + 1} was written by a newer recsys"):
        Scorer.load(artifact)


def test_a_damaged_manifest_or_foreign_directory_is_named(artifact, tmp_path):
    (artifact / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest.json: not readable JSON"):
        Scorer.load(artifact)
    (artifact / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a recsys serving artifact"):
        Scorer.load(artifact)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        open_artifact(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="no such artifact directory"):
        open_artifact(tmp_path / "nowhere")


class Boom:
    def __reduce__(self):                # would run code if anything unpickled it
        return (shutil.rmtree, ("/nonexistent-serving-test",))


def test_a_pickle_in_place_of_the_weights_is_refused_without_unpickling(artifact):
    weights = artifact / "ranker" / "model.safetensors"
    weights.write_bytes(pickle.dumps({"state_dict": Boom()}))
    _rehash(artifact, "ranker/model.safetensors")             # the manifest agrees: the format check must catch it
    with pytest.raises(CheckpointError, match=r"ranker/model.safetensors: not a readable safetensors file"):
        Scorer.load(artifact)


def test_foreign_safetensors_weights_are_named(artifact):
    save_file({"some.layer": torch.zeros(3)}, str(artifact / "ranker" / "model.safetensors"))
    _rehash(artifact, "ranker/model.safetensors")
    with pytest.raises(CheckpointError, match=r"weights do not belong to DIN"):
        Scorer.load(artifact)


def test_a_class_path_outside_the_model_registry_is_not_imported(artifact):
    path = artifact / "ranker" / "model.json"
    description = json.loads(path.read_text())
    description["class_path"] = "os.system"
    path.write_text(json.dumps(description))
    _rehash(artifact, "ranker/model.json")
    with pytest.raises(CheckpointError, match=r"class_path 'os.system' is not a recsys model"):
        Scorer.load(artifact)


def test_a_pickled_npy_is_refused(artifact):
    np.save(artifact / "item_category.npy", np.array([Boom()], dtype=object), allow_pickle=True)
    _rehash(artifact, "item_category.npy")
    with pytest.raises(CheckpointError, match=r"item_category.npy: not a readable .npy array"):
        Scorer.load(artifact)


def test_a_manifest_entry_outside_the_directory_is_refused(artifact):
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"]["../elsewhere"] = {"sha256": "0" * 64, "bytes": 1}
    (artifact / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="points outside the artifact"):
        Scorer.load(artifact)


def test_importing_serving_pulls_in_no_training_or_dataframe_libraries():
    code = ("import sys, torch; before = set(sys.modules); import recsys.serving; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; print(sorted(new))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    new = set(eval(out.strip().splitlines()[-1]))
    assert not new & {"lightning", "pytorch_lightning", "lightning_fabric", "pandas", "matplotlib", "sklearn",
                      "scipy", "yaml", "jsonargparse"}, new
    third_party = {m for m in new if m not in sys.stdlib_module_names and not m.startswith("_")}
    # what pyarrow (cloudpickle, cython_runtime) and faiss (packaging, its SWIG runtime) import themselves
    allowed = {"recsys", "numpy", "safetensors", "pyarrow", "faiss", "cloudpickle", "cython_runtime", "packaging",
               "swig_runtime_data5"}
    assert third_party <= allowed, third_party
    assert {"safetensors", "pyarrow", "faiss"} <= new
