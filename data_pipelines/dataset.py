"""A built dataset on disk (see data_pipelines.build for the layout)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Dict, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .build import load_manifest
from .columns import SAMPLE_COLUMNS
from .samples import SPLITS
from .vocab import Vocabulary


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

    def vocabulary(self, field: str) -> Vocabulary:
        return Vocabulary.load(self.path / "vocab" / f"{field}.parquet")

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
