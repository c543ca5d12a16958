"""Tiny trained runs for the retrieve / cascade / Recommender tests: one generated log built twice
(the ``loo`` build for retrieval, the ``din`` build for the rankers: the same vocabularies),
models fitted through the real runner for a few batches, and the users file the batch jobs read."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys.config import parse_config
from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.runner import fit

SOURCE = dict(n_rows=4000, n_items=200, n_categories=8, mean_events=20.0, interests_per_user=2)


def build(root: Path, name: str, protocol: str, **source) -> Path:
    """The generated log (``SOURCE``, overridable) built with ``protocol`` at L = 20."""
    return build_dataset(DataConfig(output=str(root / name), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(**{**SOURCE, **source})),
        protocol=ProtocolConfig(name=protocol, max_length=20)), progress=False)


def fit_run(data: Path, out: Path, model: str, init_args: dict, retrieval: bool) -> Path:
    """A finished run of ``model`` on ``data``: one epoch of at most 6 batches, 1 thread."""
    raw = {"name": out.name, "output_dir": str(out), "seed": 0,
           "data": {"path": str(data), "batch_size": 256, "eval_batch_size": 512},
           "model": {"class_path": model, "init_args": init_args}, "optimizer": {"lr": 0.01},
           "trainer": {"max_epochs": 1, "limit_train_batches": 6, "enable_progress_bar": False, "num_threads": 1}}
    if retrieval:
        raw["retrieval"] = {"num_negatives": 50}
    return fit(parse_config(raw), progress=False)


def users_file(path: Path, users, histories=None) -> Path:
    """A ``recsys retrieve`` / ``recsys recommend`` users file: raw ``user`` ids and, when given,
    a ``history`` list of raw item ids per row (None = the user's timeline)."""
    columns = {"user": pa.array(users)}
    if histories is not None:
        columns["history"] = pa.array(histories, type=pa.list_(pa.int64()))
    pq.write_table(pa.table(columns), str(path))
    return path
