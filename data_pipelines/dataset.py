"""A built dataset on disk (see data_pipelines.build for the layout)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .build import load_manifest
from .rejections import DataError
from .columns import SAMPLE_COLUMNS
from .samples import SPLITS
from .side_tables import core_field_dicts, vocabulary_fingerprint
from .vocab import Vocabulary

if TYPE_CHECKING:   # recsys.contract imports torch: only feature_spec() needs it
    from recsys.contract import FeatureSpec

CORE_VOCABULARIES = ("user", "item", "category")


class BuiltDataset:
    """Read access to one build: manifest, vocabularies, flat timelines, samples."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.manifest = load_manifest(self.path)

    @classmethod
    def open(cls, path: Union[str, Path, "BuiltDataset"]) -> "BuiltDataset":
        return path if isinstance(path, BuiltDataset) else cls(path)

    # sizes a model is built for
    @property
    def num_users(self) -> int:
        return int(self.manifest["vocab_sizes"]["user"])

    @property
    def num_items(self) -> int:
        return int(self.manifest["vocab_sizes"]["item"])

    @property
    def num_categories(self) -> int:
        return int(self.manifest["vocab_sizes"]["category"])

    @property
    def num_behaviors(self) -> int:
        return int(self.manifest["vocab_sizes"]["behavior"])

    @property
    def max_length(self) -> int:
        return int(self.manifest["max_length"])

    @property
    def protocol(self) -> str:
        return str(self.manifest["protocol"])

    @property
    def split_counts(self) -> Dict[str, int]:
        return dict(self.manifest["split_samples"])

    # ------------------------------------------------------------------ fields
    @property
    def fields(self) -> List[dict]:
        """Every field of the build as ``FieldSpec.to_dict()`` dicts (core first, then the
        side fields in config order); builds made before side fields have the core ones."""
        if "fields" in self.manifest:
            return [dict(f) for f in self.manifest["fields"]]
        return core_field_dicts({name: int(self.manifest["vocab_sizes"][name])
                                 for name in ("user", "item", "category", "behavior")})

    def field(self, name: str) -> dict:
        for f in self.fields:
            if f["name"] == name:
                return f
        raise DataError(f"{self.path}: no field {name!r}; fields: {[f['name'] for f in self.fields]}")

    def feature_spec(self) -> "FeatureSpec":
        """All fields (sizes from the vocabularies) and the built max_length, as the contract type."""
        from recsys.contract import FeatureSpec, FieldSpec
        return FeatureSpec([FieldSpec.from_dict(f, f"{self.path}/manifest.json fields[{i}]")
                            for i, f in enumerate(self.fields)], self.max_length)

    def vocabulary(self, field: str) -> Vocabulary:
        """The vocabulary of a core field (user, item, category) or of an id / ids side field
        (its table's); raw values → ids with ``encode``, as serving does."""
        if field in CORE_VOCABULARIES:
            return Vocabulary.load(self.path / "vocab" / f"{field}.parquet")
        spec = self.field(field)
        path = self.path / "vocab" / f"{spec['table']}.parquet"
        if spec["kind"] not in ("id", "ids") or not path.exists():
            raise DataError(f"{self.path}: field {field!r} ({spec['kind']}, table {spec['table']!r}) has no "
                            "vocabulary file" + (" (its ids are the behaviour codes)" if spec["table"] == "behavior"
                                                 else ""))
        return Vocabulary.load(path)

    def context_column(self, name: str) -> str:
        """What a context field is derived from: hour | weekday | behavior."""
        columns = self.manifest.get("context_columns", {})
        if name not in columns:
            raise DataError(f"{self.path}: {name!r} is not a context field; context fields: {sorted(columns)}")
        return columns[name]

    def _side_spec(self, name: str) -> dict:
        spec = self.field(name)
        if spec["owner"] not in ("item", "user"):
            raise DataError(f"{self.path}: field {name!r} is owned by {spec['owner']!r}; side tables hold the item "
                            "and user fields")
        return spec

    def side_jagged(self, name: str) -> Tuple[np.ndarray, np.ndarray]:
        """An ids side field as stored: (values [V] int64, offsets [N + 1] int64), memory-mapped."""
        spec = self._side_spec(name)
        if spec["kind"] != "ids":
            raise DataError(f"field {name!r} is {spec['kind']!r}, not multi-valued ids")
        folder = self.path / "side" / spec["owner"]
        values, offsets = (np.load(folder / f"{name}.{part}.npy", mmap_mode="r") for part in ("values", "offsets"))
        self._check_rows(spec, len(offsets) - 1)
        return values, offsets

    def side_table(self, name: str) -> np.ndarray:
        """One item or user side field, model-ready, row index = the owner's id (rows 0, 1 zero):
        id [N] int64, number [N] float32 (NaN = missing), dense [N, d] float32, ids
        [N, max_values] int64 right-padded with 0."""
        spec = self._side_spec(name)
        if spec["kind"] == "ids":
            values, offsets = self.side_jagged(name)
            lengths = np.diff(offsets)
            width = max(int(spec["max_values"]), 1)
            steps = np.arange(width)
            mask = steps[None, :] < lengths[:, None]
            out = np.zeros((len(lengths), width), np.int64)
            out[mask] = np.asarray(values)[(offsets[:-1, None] + steps[None, :])[mask]]
            return out
        table = np.load(self.path / "side" / spec["owner"] / f"{name}.npy", mmap_mode="r")
        self._check_rows(spec, len(table))
        return table

    def _check_rows(self, spec: dict, rows: int) -> None:
        owner = spec["owner"]
        expected = int(self.manifest["vocab_sizes"][owner])
        if rows != expected:
            raise DataError(f"{self.path}: side table {spec['name']!r} has {rows} rows but the {owner} vocabulary "
                            f"has {expected} ids; the dataset is corrupt, rebuild it")

    def side_table_stamp(self, owner: str) -> dict:
        """``{"rows", "vocabulary_sha256"}`` of the owner's side tables, as built."""
        return dict(self.manifest.get("side_tables", {}).get(owner, {}))

    def check_side_tables(self, expected: Dict[str, dict]) -> None:
        """Raise unless this build's side tables were encoded with the same vocabularies as
        ``expected`` (another build's or a model's ``{owner: side_table_stamp(owner)}``)."""
        for owner, stamp in expected.items():
            mine = self.side_table_stamp(owner) or {
                "rows": int(self.manifest["vocab_sizes"][owner]),
                "vocabulary_sha256": vocabulary_fingerprint(self.vocabulary(owner))}
            if mine.get("vocabulary_sha256") != stamp.get("vocabulary_sha256"):
                raise DataError(f"{self.path}: the {owner} side tables were encoded with another {owner} vocabulary "
                                f"({mine.get('rows')} ids, sha256 {str(mine.get('vocabulary_sha256'))[:12]}) than "
                                f"expected ({stamp.get('rows')} ids, sha256 {str(stamp.get('vocabulary_sha256'))[:12]}); "
                                "load the run with the dataset it was trained on, or rebuild")

    @cached_property
    def item_category(self) -> np.ndarray:
        return np.load(self.path / "item_category.npy")

    def flat(self, name: str, mmap: bool = True) -> np.ndarray:
        """Concatenated timeline values (or ``offsets`` [users + 1]), memory-mapped."""
        path = self.path / "flat" / f"{name}.npy"
        if not path.exists():
            raise FileNotFoundError(f"{path} missing: the dataset at {self.path} is incomplete; rebuild it")
        return np.load(path, mmap_mode="r" if mmap else None)

    def samples(self, split: str, columns=None) -> pa.Table:
        """All sample rows of one split (train / valid / test)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        table = pq.read_table(str(self.path / "samples"), columns=columns,
                              filters=[("split", "=", SPLITS[split])])
        return table

    def sample_columns(self, split: str) -> Dict[str, np.ndarray]:
        """The loader's columns of one split (row, user, cut, target_item, target_category,
        label), each [N] and memory-mapped, so holding them costs no RAM per sample.

        Builds made before ``split_columns/`` existed fall back to reading the split's
        Parquet rows into RAM.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        folder = self.path / "split_columns" / split
        if not folder.is_dir():
            table = self.samples(split, columns=list(SAMPLE_COLUMNS))
            return {name: table.column(name).to_numpy() for name in table.column_names}
        columns = {}
        for name in SAMPLE_COLUMNS:
            path = folder / f"{name}.npy"
            if not path.exists():
                raise FileNotFoundError(f"{path} missing: the dataset at {self.path} is incomplete; rebuild it")
            columns[name] = np.load(path, mmap_mode="r")
        lengths = {name: len(values) for name, values in columns.items()}
        expected = self.split_counts.get(split)
        if len(set(lengths.values())) != 1 or (expected is not None and lengths["row"] != expected):
            raise ValueError(f"{folder}: column lengths {lengths} disagree with the manifest's "
                             f"{expected} {split} samples; the dataset is corrupt, rebuild it")
        return columns

    def timelines(self) -> pa.Table:
        return pq.read_table(str(self.path / "timelines"))
