"""Typed configuration of a data build, loaded from YAML.

An unknown key or a value of the wrong type is an error that names the key, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import yaml

from recsys.errors import ConfigError

SOURCE_FORMATS = ("taobao", "synthetic", "s3rec", "movielens", "amazon", "ratings_csv", "multibehavior")
PROTOCOLS = ("din", "dare", "loo", "users")
PROTOCOLS_WITH_NEGATIVES = ("din", "dare")
NEGATIVE_KINDS = ("uniform", "popularity", "candidates")
# the field contract (recsys.contract, which imports torch: repeated here so a build does not)
FIELD_KINDS = ("id", "ids", "number", "dense")
FIELD_OWNERS = ("event", "item", "user", "context")
CORE_FIELDS = ("user", "item", "category", "behavior")
# context fields are derived from the target step's event, not read from a column
CONTEXT_COLUMNS = ("hour", "weekday", "behavior")
# sources whose timestamps are positions or stages, not times: no hour / weekday
SOURCES_WITHOUT_TIME = ("s3rec", "multibehavior")


@dataclass
class SyntheticSource:
    """Generated UserBehavior-layout data (see data_pipelines.synthetic.SyntheticConfig)."""

    n_rows: int = 1_000_000
    n_items: int = 50_000
    n_categories: int = 500
    mean_events: float = 60.0
    length_sigma: float = 1.0
    min_events: int = 5
    max_events: int = 10_000
    interests_per_user: int = 4
    interest_prob: float = 0.9
    stickiness: float = 0.7
    seed: int = 0


@dataclass
class SourceConfig:
    format: str = "synthetic"
    paths: List[str] = field(default_factory=list)
    # keep only these behaviour names (e.g. [pv] for DARE's Taobao protocol); empty = all
    behaviors: List[str] = field(default_factory=list)
    synthetic: SyntheticSource = field(default_factory=SyntheticSource)
    # MovieLens / ratings: ratings >= this are positives
    rating_threshold: float = 4.0
    # S3-Rec: which attribute of an item is its category ("first" or "last")
    category_attribute: str = "first"
    # side tables from any Parquet file keyed by the raw id (first column ``item`` / ``user``),
    # for sources whose reader has none (Taobao, synthetic) or to add columns to none
    item_file: str = ""
    user_file: str = ""

    def __post_init__(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"source.format must be one of {SOURCE_FORMATS}, got {self.format!r}")
        if self.format != "synthetic" and not self.paths:
            raise ValueError(f"source.paths is required for format {self.format!r}")


@dataclass
class ProtocolConfig:
    """How samples are cut from timelines (see data_pipelines.samples)."""

    name: str = "din"
    max_length: int = 100          # L: the last L behaviours before the cut are the history
    validation: bool = True        # hold out a validation target per user (din, loo)
    negatives: str = "uniform"     # uniform | popularity | candidates
    n_neg: int = 1                 # negatives per positive
    # candidates: a `recsys retrieve` candidates Parquet (user, rank, item, fallback) whose
    # rows are each user's negative pool (data_pipelines.candidate_pools)
    negatives_file: str = ""
    negatives_top: int = 0         # candidates: only ranks < this (0 = every candidate of the user)
    min_length: Optional[int] = None   # dare: default max_length + 10
    n_train_targets: int = 19      # dare: training targets per user
    target_stride: int = 5         # dare: distance between training targets
    user_split: List[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])  # users protocol
    history_fraction: float = 0.8  # users protocol: share of an eval user's items used as history
    # users protocol: Parquet (user, split) fixing the split of the users it lists; the others
    # are split by the hash as without it (data_pipelines.user_splits)
    user_split_file: str = ""

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol.name must be one of {PROTOCOLS}, got {self.name!r}")
        if self.negatives not in NEGATIVE_KINDS:
            raise ValueError(f"protocol.negatives must be one of {NEGATIVE_KINDS}, got {self.negatives!r}")
        if self.negatives == "candidates":
            if not self.negatives_file:
                raise ValueError("protocol.negatives: candidates needs protocol.negatives_file (the candidates "
                                 "Parquet written by `recsys retrieve`)")
            if self.name not in PROTOCOLS_WITH_NEGATIVES:
                raise ValueError(f"protocol.negatives: candidates: the {self.name!r} protocol draws no negatives "
                                 f"(only {PROTOCOLS_WITH_NEGATIVES} do)")
            if self.n_neg < 1:
                raise ValueError("protocol.negatives: candidates with n_neg: 0 draws no negatives; set n_neg >= 1")
        elif self.negatives_file or self.negatives_top:
            raise ValueError(f"protocol.negatives_file / negatives_top apply only to negatives: candidates, "
                             f"not {self.negatives!r}")
        if self.user_split_file and self.name != "users":
            raise ValueError(f"protocol.user_split_file applies only to the users protocol, not {self.name!r}")
        if self.negatives_top < 0:
            raise ValueError(f"protocol.negatives_top must be >= 0 (0 = every candidate), got {self.negatives_top}")
        if self.max_length < 1 or self.n_neg < 0 or self.n_train_targets < 1 or self.target_stride < 1:
            raise ValueError("protocol: max_length, n_train_targets, target_stride must be >= 1 and n_neg >= 0")


@dataclass
class FieldConfig:
    """One declared side field (the core fields user, item, category, behavior always exist).

    name: the field's name in batches, side tables and the manifest.
    kind: id | ids (multi-valued) | number | dense (a float vector).
    owner: item | user (side tables, one row per id) | context (per sample, derived from
        the target step's event: ``column`` hour, weekday or behavior).
    column: the source column it is read from (default: ``name``); for context fields one
        of hour, weekday, behavior.
    table: the vocabulary / embedding table of an id or ids field (default: its own name);
        fields naming the same table share one vocabulary; naming a core table
        (item, category, user) encodes with that core vocabulary.
    min_count: values seen on fewer side-table rows map to 1 (unknown).
    frozen: dense content vectors that are never trained.
    width: dense fields: the expected vector width (0 = take it from the data).
    """

    name: str
    kind: str
    owner: str
    column: str = ""
    table: str = ""
    min_count: int = 1
    frozen: bool = False
    width: int = 0

    def __post_init__(self) -> None:
        where = f"field {self.name!r}"
        if not self.name:
            raise ValueError("fields: a field needs a name")
        if self.name in CORE_FIELDS:
            raise ValueError(f"{where}: is a core field (always present); declare only side fields")
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"{where}: kind must be one of {FIELD_KINDS}, got {self.kind!r}")
        if self.owner not in FIELD_OWNERS:
            raise ValueError(f"{where}: owner must be one of {FIELD_OWNERS}, got {self.owner!r}")
        if self.owner == "event":
            raise ValueError(f"{where}: per-behaviour side fields are not supported; item attributes of history "
                             "behaviours are owner: item (looked up through the history's item ids)")
        if self.owner == "context":
            if self.kind != "id":
                raise ValueError(f"{where}: context fields are ids (kind: id), got {self.kind!r}")
            if (self.column or self.name) not in CONTEXT_COLUMNS:
                raise ValueError(f"{where}: a context field's column must be one of {CONTEXT_COLUMNS}, "
                                 f"got {self.column or self.name!r}")
        if self.frozen and self.kind != "dense":
            raise ValueError(f"{where}: only dense fields can be frozen")
        if self.min_count < 1 or self.width < 0:
            raise ValueError(f"{where}: min_count must be >= 1 and width >= 0")
        if not self.column:
            self.column = self.name
        if not self.table and self.kind in ("id", "ids"):
            self.table = "behavior" if self.owner == "context" and self.column == "behavior" else self.name


@dataclass
class DataConfig:
    output: str
    source: SourceConfig = field(default_factory=SourceConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    min_count: int = 1             # ids seen fewer times map to 1 (unknown)
    partitions: int = 8            # timelines are partitioned by user hash
    seed: int = 0
    on_error: str = "skip"         # skip | raise
    max_reject_rate: float = 0.01
    block_size_mb: int = 64
    fields: List[FieldConfig] = field(default_factory=list)   # side fields (see FieldConfig)

    def __post_init__(self) -> None:
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")
        if self.partitions < 1 or self.min_count < 1:
            raise ValueError("partitions and min_count must be >= 1")
        names = [f.name for f in self.fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"fields: duplicate name(s) {duplicates}")
        for f in self.fields:
            if f.owner == "context" and f.column in ("hour", "weekday") and self.source.format in SOURCES_WITHOUT_TIME:
                raise ValueError(f"field {f.name!r}: source format {self.source.format!r} has positions, not "
                                 f"times, as timestamps, so it has no {f.column}")


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise TypeError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise KeyError(f"{where or cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**values)
    except TypeError as exc:  # a required key is missing
        raise KeyError(f"{where or cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _coerce(hint, value, where)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (list, List):
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise TypeError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_data_config(path: Path) -> DataConfig:
    """Load a data config; every mistake in it (missing file, bad YAML, unknown key, wrong
    type or value) is a one-line ``ConfigError`` naming the file and the key."""
    if not Path(path).is_file():
        raise ConfigError(f"data config {path} does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    try:
        return from_dict(DataConfig, raw)
    except (KeyError, TypeError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc   # KeyError's str() quotes
        raise ConfigError(f"{path}: {message}") from None


def to_dict(config: Any) -> dict:
    """Plain dict of a config. An empty ``fields`` list and the unused candidate-negative keys
    are left out (as an unused ``user_split_file``), so the reuse key of a build made before
    they existed still matches the same config today."""
    d = dataclasses.asdict(config)
    if isinstance(config, DataConfig) and not config.fields:
        d.pop("fields")
    if isinstance(config, DataConfig) and config.protocol.negatives != "candidates":
        d["protocol"].pop("negatives_file")
        d["protocol"].pop("negatives_top")
    if isinstance(config, DataConfig) and not config.protocol.user_split_file:
        d["protocol"].pop("user_split_file")
    return d
