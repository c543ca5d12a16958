"""Trained runs for the serving tests: a generated dataset whose item and user side tables
and context fields cover every kind the request encoder maps (number, id, ids; hour and
behaviour context), and DIN trained on it by the real runner (tiny, one thread).

The synthetic source's raw user and item ids are integers; the brand and segment fields
have string raw values, so both id types pass through the vocabularies.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.config import parse_config
from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, FieldConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.synthetic import SyntheticConfig, _Catalogue
from recsys.runner import fit

FIELDS = [FieldConfig("price", "number", "item"), FieldConfig("brand", "id", "item"),
          FieldConfig("age", "number", "user"), FieldConfig("segment", "id", "user"),
          FieldConfig("interests", "ids", "user"), FieldConfig("hour", "id", "context"),
          FieldConfig("behavior_type", "id", "context", column="behavior")]
FIELD_NAMES = [f.name for f in FIELDS]
SMALL_DIN = {"item_dim": 8, "category_dim": 8, "attention_units": [16], "mlp_units": [16], "field_dim": 4}


def build_side_dataset(root: Path, max_length: int = 12) -> Path:
    source = SyntheticSource(n_rows=12_000, n_items=400, n_categories=20, mean_events=20.0)
    raw_items = _Catalogue(SyntheticConfig(**vars(source))).raw_item_id
    rng = np.random.default_rng(3)
    n = len(raw_items)
    items = pa.table({"item": pa.array(raw_items), "price": pa.array(rng.lognormal(2, 1, n), mask=rng.random(n) < 0.1),
                      "brand": pa.array([f"b{v}" for v in rng.integers(0, 12, n)])})
    users = 1500
    profiles = pa.table({"user": pa.array(np.arange(1, users + 1)), "age": pa.array(rng.integers(18, 70, users)),
                         "segment": pa.array([f"s{v}" for v in rng.integers(0, 5, users)]),
                         "interests": pa.array([list(rng.integers(0, 9, rng.integers(0, 3))) for _ in range(users)],
                                               pa.list_(pa.int64()))})
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(items, root / "items.parquet")
    pq.write_table(profiles, root / "users.parquet")
    config = DataConfig(output=str(root / "ds"), source=SourceConfig(
        format="synthetic", synthetic=source, item_file=str(root / "items.parquet"),
        user_file=str(root / "users.parquet")), protocol=ProtocolConfig(max_length=max_length), fields=list(FIELDS))
    config.__post_init__()
    return build_dataset(config, progress=False)


def train(dataset: Path, out: Path, model: str = "DIN", init_args=None, fields=FIELD_NAMES, **trainer) -> Path:
    raw = {"name": out.name, "output_dir": str(out), "seed": 0,
           "data": {"path": str(dataset), "batch_size": 256, "eval_batch_size": 1024, "fields": fields},
           "model": {"class_path": model, "init_args": dict(init_args or SMALL_DIN)},
           "trainer": {"max_epochs": 1, "enable_progress_bar": False, "num_threads": 1, **trainer}}
    return fit(parse_config(raw), progress=False)
