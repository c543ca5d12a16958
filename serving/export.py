"""``recsys export RUN --out DIR [--fine RUN] [--coarse RUN]``: a run (or a retrieval run and
its rankers) → a self-contained serving artifact (layout: :mod:`recsys.serving.artifact`).

* ``RUN`` alone: a ranking run becomes the ``ranker`` component; a retrieval run becomes
  ``retrieval``, with its FAISS index (the run's ``index/NAME.faiss`` when it exists and
  matches the weights, else built here from the weights).
* ``--fine`` / ``--coarse``: ranking runs added to a retrieval run for the Recommender.
  Every run must have been trained on the same vocabularies (their ``data_fingerprint.json``
  compared for the item, category and user tables) and the built dataset must still be the
  one they were trained on; both are checked before anything is written.

The artifact is written into a temporary directory beside ``DIR`` and renamed into place
when complete (an existing ``DIR`` is refused unless ``overwrite``), so it is complete or
absent. This module reads the built dataset (pyarrow, the data pipelines): it is the
exporting side and is not imported by ``import recsys.serving``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from recsys.artifacts import MODEL_JSON, WEIGHTS, load_model, read_model_json
from recsys.errors import CheckpointError, ConfigError
from recsys.run_fingerprint import read_data_fingerprint
from recsys.retrieval.index import (IndexConfig, build_index, file_sha256, index_path, item_vectors, load_run_index,
                                    run_identity, save_index)

from .artifact import FEATURES, FORMAT, FORMAT_VERSION, MANIFEST, safe_model_class

def _fingerprint(run: Path) -> dict:
    saved = read_data_fingerprint(run)
    if saved is None or "dataset" not in saved:
        raise CheckpointError(f"{run}: no data_fingerprint.json with its dataset (a run from before vocabulary "
                              "stamps); its data cannot be identified for export: retrain it")
    return {"dataset": saved["dataset"], "vocab_fingerprint": dict(saved["vocab_fingerprint"])}


def _check_runs(runs: Dict[str, Path]) -> Tuple[Dict[str, dict], dict]:
    """Descriptions of every run, and the fingerprint they share (ConfigError otherwise)."""
    described, prints = {}, {}
    for role, run in runs.items():
        if not (run / WEIGHTS).exists():
            raise CheckpointError(f"{run} is not a finished run: {WEIGHTS} is missing")
        described[role] = read_model_json(run)
        safe_model_class(described[role]["class_path"], run / MODEL_JSON)
        prints[role] = _fingerprint(run)
    family = {role: d.get("family", "ranking") for role, d in described.items()}
    if "retrieval" in runs and family["retrieval"] != "retrieval":
        raise ConfigError(f"{runs['retrieval']}: --fine/--coarse need a retrieval run first, this is a "
                          f"{family['retrieval']} run")
    for role in ("coarse", "fine"):
        if role in runs and family[role] != "ranking":
            raise ConfigError(f"--{role} {runs[role]}: a {family[role]} run, not a ranking run")
    if len(runs) > 1:      # one id space: the cascade's own check (item, category, user fingerprints)
        from recsys.cascade import check_same_vocabulary
        check_same_vocabulary(runs)
    first = next(iter(runs))
    return described, prints[first]


def _open_dataset(fingerprint: dict, runs: Dict[str, Path]):
    from recsys.data_pipelines.dataset import BuiltDataset
    from recsys.run_state import check_same_vocabulary
    path = Path(fingerprint["dataset"])
    if not (path / "manifest.json").exists():
        raise ConfigError(f"the dataset the runs were trained on ({path}) is not there; rebuild it with "
                          "`recsys data build CONFIG` (the same config gives the same vocabularies)")
    dataset = BuiltDataset.open(path)
    for run in runs.values():
        check_same_vocabulary(run, dataset)
    return dataset


def _tables_of(features_list) -> Tuple[List[str], List, Dict[str, str]]:
    """(vocabulary tables, user side fields, context fields → table) the components read."""
    tables = ["user", "item", "category"]
    user_fields, context = {}, {}
    for features in features_list:
        for f in features.of("user", side_only=True):
            user_fields[f.name] = f
            if f.embedded:
                tables.append(f.table)
        for f in features.of("context"):
            context[f.name] = f.table
            if f.table != "behavior":            # behaviour ids are the fixed codes: no vocabulary file
                tables.append(f.table)
    return list(dict.fromkeys(tables)), list(user_fields.values()), context


def _write_index(run: Path, folder: Path, name: str) -> None:
    """The retrieval run's index NAME (verified against its weights) or a fresh exact one."""
    target = folder / "index" / f"{name}.faiss"
    if index_path(run, name).exists():
        index = load_run_index(run, name)          # refuses a stale or tampered index
        target.parent.mkdir(parents=True)
        shutil.copyfile(index_path(run, name), target)
        shutil.copyfile(index_path(run, name).with_suffix(".json"), target.with_suffix(".json"))
        del index
        return
    if name not in ("flat",):
        raise ConfigError(f"{run}: no index named {name!r} in {run / 'index'}; build it with `recsys index {run} "
                          f"--name {name}` or export with the default exact index")
    identity = run_identity(run)
    model = load_model(run)
    built = build_index(item_vectors(model), IndexConfig("flat"), identity["model_sha256"],
                        identity["item_vocabulary"], type(model).__name__)
    save_index(built, target)


def _manifest(tmp: Path, components: dict, fingerprint: dict) -> dict:
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        name = path.relative_to(tmp).as_posix()
        files[name] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    try:
        version = metadata.version("recsys")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "recsys_version": version,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "components": components,
            "vocab_fingerprint": fingerprint["vocab_fingerprint"], "files": files}


def export_artifact(run: Union[str, Path], out: Union[str, Path], fine: Optional[Union[str, Path]] = None,
                    coarse: Optional[Union[str, Path]] = None, index: str = "flat",
                    overwrite: bool = False) -> Path:
    """Write the serving artifact of ``run`` (+ ``fine`` / ``coarse`` rankers) to ``out``."""
    run, out = Path(run), Path(out)
    first = read_model_json(run) if (run / MODEL_JSON).exists() else None
    if first is None:
        raise CheckpointError(f"{run} is not a finished run: {MODEL_JSON} is missing")
    role = "retrieval" if first.get("family") == "retrieval" else "ranker"
    if role == "ranker" and (fine or coarse):
        raise ConfigError(f"{run} is a ranking run; --fine/--coarse bundle rankers with a retrieval run: "
                          f"`recsys export RETRIEVAL_RUN --fine {fine or coarse} --out DIR`")
    runs = {role: run}
    if coarse:
        runs["coarse"] = Path(coarse)
    if fine:
        runs["fine"] = Path(fine)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    described, fingerprint = _check_runs(runs)      # everything is checked before any work
    dataset = _open_dataset(fingerprint, runs)
    tables, user_fields, context = _tables_of([d["features"] for d in described.values()])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.export-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        components = {}
        for role_name, source in runs.items():
            folder = tmp / role_name
            folder.mkdir()
            for name in (MODEL_JSON, WEIGHTS):
                shutil.copyfile(source / name, folder / name)
            identity = run_identity(source)
            components[role_name] = {"source_run": str(source), "class_path": described[role_name]["class_path"],
                                     "family": described[role_name].get("family", "ranking"), **identity}
            if role_name == "retrieval":
                _write_index(source, folder, index)
                components[role_name]["index"] = index
        (tmp / "vocab").mkdir()
        for table in tables:
            source = dataset.path / "vocab" / f"{table}.parquet"
            if not source.exists():
                raise CheckpointError(f"{dataset.path}: vocabulary {source.name} of table {table!r} is missing")
            shutil.copyfile(source, tmp / "vocab" / source.name)
        np.save(tmp / "item_category.npy", np.ascontiguousarray(dataset.item_category, dtype=np.int64))
        if user_fields:
            (tmp / "side" / "user").mkdir(parents=True)
        for f in user_fields:
            if f.kind == "ids":
                values, offsets = dataset.side_jagged(f.name)
                np.save(tmp / "side" / "user" / f"{f.name}.values.npy", np.asarray(values))
                np.save(tmp / "side" / "user" / f"{f.name}.offsets.npy", np.asarray(offsets))
            else:
                np.save(tmp / "side" / "user" / f"{f.name}.npy", np.asarray(dataset.side_table(f.name)))
        from recsys.data_pipelines.schema import BEHAVIORS
        columns = dataset.manifest.get("context_columns", {})
        (tmp / FEATURES).write_text(json.dumps({"context_columns": {n: columns[n] for n in context if n in columns},
                                                "behaviors": dict(BEHAVIORS)}, indent=2))
        manifest = _manifest(tmp, components, fingerprint)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
