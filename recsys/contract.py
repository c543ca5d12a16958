"""The open feature contract shared by data, models and serving: fields, feature spec, batch.

This module imports only torch (and the standard library), so ``recsys.models`` and
``recsys.serving`` depend on it without pulling in pyarrow, Lightning or pandas.

Fields
------
Every feature is a declared :class:`FieldSpec`: a name, a **kind** and an **owner**.

=========  ===============================================================  ==================
kind       values                                                           size
=========  ===============================================================  ==================
``id``     one categorical id per row (0 padding, 1 unknown, 2.. by freq.)  vocabulary size
``ids``    several ids per row (multi-valued, e.g. genres, attributes)      vocabulary size
``number`` one float per row (NaN = missing)                                1
``dense``  a float vector per row (e.g. frozen content vectors)             width
=========  ===============================================================  ==================

=========== ====================================================================
owner       where the values live
=========== ====================================================================
``event``   per behaviour, in the timelines (item, category, behavior, timestamp)
``item``    the item side table, one row per item id, looked up by item id for the
            target, for every history behaviour, for the FAISS item tower and in serving
``user``    the user side table, one row per user id (profile fields)
``context`` per sample (hour, weekday, behaviour type of the impression)
=========== ====================================================================

Side tables are stored once beside the vocabularies and never copied into samples or
timelines. ``table`` names the embedding table a field's ids index: target and history
items share ``item``; fields with the same ``table`` share one vocabulary and one table.

The core fields ``user``, ``item``, ``category`` and ``behavior`` exist in every dataset
(:data:`CORE_FIELDS`); everything else is a side field a data config declares.

Batch layout
------------
Histories are **most-recent-last** and **right-padded**: for row ``b`` the valid behaviours
are ``history[name][b, :lengths[b]]`` (oldest first) and positions ``>= lengths[b]`` hold 0.
The jagged form stores the same rows back to back: row ``b`` is
``values[offsets[b]:offsets[b + 1]]`` with ``offsets`` of shape ``[B + 1]``. Right padding
makes both forms share the in-row index ``j`` (``padded[b, j] == values[offsets[b] + j]``),
which is what the kernels rely on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields as dataclass_fields
from typing import Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

FIELD_KINDS = ("id", "ids", "number", "dense")
FIELD_OWNERS = ("event", "item", "user", "context")
CORE_FIELDS = ("user", "item", "category", "behavior")
PADDING_ID = 0
UNKNOWN_ID = 1


class ContractError(ValueError):
    """A field spec, feature spec or batch does not follow the contract; names the field."""


def _construct(cls, data: Mapping, known: set, where: str):
    """``cls(**data)`` with unknown keys and missing/wrong arguments as ContractErrors naming ``where``."""
    unknown = sorted(set(data) - known)
    if unknown:
        raise ContractError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    try:
        return cls(**dict(data))
    except TypeError as exc:
        raise ContractError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class FieldSpec:
    """One declared feature (see the module docstring for kinds and owners).

    Args:
        name: the field's name in batches, side tables and configs ("genres", "age").
        kind: "id" | "ids" | "number" | "dense".
        owner: "event" | "item" | "user" | "context".
        table: embedding table of an id/ids field ("" = its own name); fields naming the
            same table share its vocabulary.
        size: vocabulary size counting padding 0 and unknown 1 (id/ids), vector width
            (dense), 1 (number).
        frozen: dense vectors that are inputs, never trained (content vectors).
        max_values: ids fields: the most values one row holds.
        mean, std: number fields: the training data's statistics, used to standardise.
    """

    name: str
    kind: str
    owner: str
    table: str = ""
    size: int = 0
    frozen: bool = False
    max_values: int = 0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ContractError(f"a field needs a non-empty name, got {self.name!r}")
        if self.kind not in FIELD_KINDS:
            raise ContractError(f"field {self.name!r}: kind must be one of {FIELD_KINDS}, got {self.kind!r}")
        if self.owner not in FIELD_OWNERS:
            raise ContractError(f"field {self.name!r}: owner must be one of {FIELD_OWNERS}, got {self.owner!r}")
        if self.kind in ("id", "ids") and self.size < 2:
            raise ContractError(f"field {self.name!r}: an {self.kind} field needs size >= 2 "
                                f"(padding 0 and unknown 1), got {self.size}")
        if self.kind == "dense" and self.size < 1:
            raise ContractError(f"field {self.name!r}: a dense field needs its width as size >= 1, got {self.size}")
        if self.kind == "number" and self.size not in (0, 1):
            raise ContractError(f"field {self.name!r}: a number field has size 1, got {self.size}")
        if self.frozen and self.kind != "dense":
            raise ContractError(f"field {self.name!r}: only dense fields can be frozen")
        if self.kind == "ids" and self.max_values < 0:
            raise ContractError(f"field {self.name!r}: max_values must be >= 0")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ContractError(f"field {self.name!r}: mean/std must be finite with std > 0, "
                                f"got {self.mean}, {self.std}")
        if self.kind == "number" and self.size == 0:
            object.__setattr__(self, "size", 1)
        if self.kind in ("id", "ids") and not self.table:
            object.__setattr__(self, "table", self.name)

    @property
    def embedded(self) -> bool:
        """True for fields that index an embedding table (id, ids)."""
        return self.kind in ("id", "ids")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclass_fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "field") -> "FieldSpec":
        if not isinstance(data, Mapping):
            raise ContractError(f"{where}: expected a mapping, got {type(data).__name__}")
        return _construct(cls, data, {f.name for f in dataclass_fields(cls)}, where)


def core_fields(num_users: int, num_items: int, num_categories: int, num_behaviors: int = 8) -> Tuple[FieldSpec, ...]:
    """The four fields every dataset has."""
    return (FieldSpec("user", "id", "user", size=num_users),
            FieldSpec("item", "id", "event", size=num_items),
            FieldSpec("category", "id", "event", size=num_categories),
            FieldSpec("behavior", "id", "event", size=num_behaviors))


class FeatureSpec:
    """The fields a model is built for and the padded history length L.

    Built by the training spine from the dataset's manifest (restricted to the run's
    configured field set), saved in ``model.json`` and read back from there, so a trained
    model is rebuilt without its dataset. ``FeatureSpec(num_users=.., num_items=..,
    num_categories=..)`` builds the core fields only (what today's models need).
    """

    __slots__ = ("fields", "max_length")

    def __init__(self, fields: Iterable[FieldSpec] = (), max_length: int = 100, *,
                 num_users: Optional[int] = None, num_items: Optional[int] = None,
                 num_categories: Optional[int] = None, num_behaviors: Optional[int] = None) -> None:
        fields = tuple(fields)
        sizes = (num_users, num_items, num_categories)
        if any(s is not None for s in sizes + (num_behaviors,)):
            if fields or any(s is None for s in sizes):
                raise ContractError("give either fields or all of num_users, num_items, num_categories")
            fields = core_fields(num_users, num_items, num_categories, 8 if num_behaviors is None else num_behaviors)
        names = [f.name for f in fields]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ContractError(f"duplicate field name(s) {duplicates}")
        missing = [n for n in CORE_FIELDS if n not in names]
        if missing:
            raise ContractError(f"a feature spec needs the core fields {list(CORE_FIELDS)}; missing {missing}")
        tables: Dict[str, Tuple[str, int]] = {}
        for f in fields:
            if f.embedded:
                other = tables.setdefault(f.table, (f.name, f.size))
                if other[1] != f.size:
                    raise ContractError(f"fields {other[0]!r} and {f.name!r} share table {f.table!r} but have "
                                        f"sizes {other[1]} and {f.size}")
        if not isinstance(max_length, int) or max_length < 1:
            raise ContractError(f"max_length must be an int >= 1, got {max_length!r}")
        object.__setattr__(self, "fields", fields)
        object.__setattr__(self, "max_length", max_length)

    def __setattr__(self, name, value):  # immutable, so it can be shared and hashed
        raise AttributeError("FeatureSpec is immutable; build a new one (e.g. with select())")

    def __eq__(self, other) -> bool:
        return isinstance(other, FeatureSpec) and (self.fields, self.max_length) == (other.fields, other.max_length)

    def __hash__(self) -> int:
        return hash((self.fields, self.max_length))

    def __repr__(self) -> str:
        return f"FeatureSpec(fields=[{', '.join(f'{f.name}:{f.kind}/{f.owner}' for f in self.fields)}], " \
               f"max_length={self.max_length})"

    # -- access
    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def __getitem__(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise ContractError(f"no field {name!r} in the feature spec; fields: {[f.name for f in self.fields]}")

    def of(self, owner: str, side_only: bool = False) -> Tuple[FieldSpec, ...]:
        """Fields of one owner (``side_only``: without the core fields)."""
        if owner not in FIELD_OWNERS:
            raise ContractError(f"owner must be one of {FIELD_OWNERS}, got {owner!r}")
        return tuple(f for f in self.fields if f.owner == owner and not (side_only and f.name in CORE_FIELDS))

    @property
    def side_fields(self) -> Tuple[FieldSpec, ...]:
        return tuple(f for f in self.fields if f.name not in CORE_FIELDS)

    def table_sizes(self) -> Dict[str, int]:
        """Embedding table name → vocabulary size, over the id/ids fields."""
        return {f.table: f.size for f in self.fields if f.embedded}

    def select(self, names: Optional[Sequence[str]], max_length: Optional[int] = None) -> "FeatureSpec":
        """The core fields plus the named side fields (None or [] = the core fields only), in
        spec order; ``max_length`` replaces L when given."""
        names = list(names or [])
        unknown = [n for n in names if n not in self]
        if unknown:
            raise ContractError(f"field(s) {unknown} are not in the data; available side fields: "
                                f"{[f.name for f in self.side_fields]}")
        keep = set(CORE_FIELDS) | set(names)
        fields = tuple(f for f in self.fields if f.name in keep)
        return FeatureSpec(fields, self.max_length if max_length is None else max_length)

    # -- the sizes today's models read
    @property
    def num_users(self) -> int:
        return self["user"].size

    @property
    def num_items(self) -> int:
        return self["item"].size

    @property
    def num_categories(self) -> int:
        return self["category"].size

    @property
    def num_behaviors(self) -> int:
        return self["behavior"].size

    # -- model.json
    def to_dict(self) -> dict:
        return {"max_length": self.max_length, "fields": [f.to_dict() for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "features") -> "FeatureSpec":
        """Inverse of :meth:`to_dict`; also reads the sizes-only form older runs saved."""
        if not isinstance(data, Mapping):
            raise ContractError(f"{where}: expected a mapping, got {type(data).__name__}")
        if "fields" not in data:   # model.json of runs made before the field contract
            legacy = {"num_users", "num_items", "num_categories", "num_behaviors", "max_length"}
            return _construct(cls, data, legacy, where)
        if not isinstance(data["fields"], Sequence):
            raise ContractError(f"{where}.fields: expected a list")
        fields = [FieldSpec.from_dict(f, f"{where}.fields[{i}]") for i, f in enumerate(data["fields"])]
        return cls(fields, int(data.get("max_length", 100)))


# ------------------------------------------------------------------------------- batch
@dataclass
class Jagged:
    """Multi-valued ids of B rows: row ``b`` is ``values[offsets[b]:offsets[b + 1]]``.

    values [N] int64, offsets [B + 1] int64 (``offsets[0] == 0``, ``offsets[-1] == N``);
    torchrec's KeyedJaggedTensor core for one key, without the torchrec dependency.
    """

    values: Tensor
    offsets: Tensor

    def __post_init__(self) -> None:
        if self.offsets.dim() != 1 or self.offsets.numel() < 1:
            raise ContractError(f"Jagged offsets must be [B + 1], got shape {tuple(self.offsets.shape)}")

    @property
    def size(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> "Jagged":
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        offsets[1:] = torch.cumsum(lengths, 0)
        values = torch.tensor([v for r in rows for v in r], dtype=torch.int64)
        return cls(values, offsets)

    def to_padded(self, width: Optional[int] = None) -> Tensor:
        """[B, W] right-padded with 0 (W = the longest row unless given)."""
        lengths = self.lengths
        width = int(lengths.max()) if width is None and self.size else (width or 0)
        positions = torch.arange(width, device=self.values.device)
        mask = positions.unsqueeze(0) < lengths.unsqueeze(1)
        out = self.values.new_zeros((self.size, width))
        out[mask] = self.values[(self.offsets[:-1].unsqueeze(1) + positions.unsqueeze(0))[mask]]
        return out

    def take(self, rows: Tensor) -> "Jagged":
        """The rows ``rows`` [R] int64 (any order, repeats allowed) as a new Jagged of R rows."""
        lengths = self.lengths[rows]
        offsets = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=self.offsets.device)
        offsets[1:] = torch.cumsum(lengths, 0)
        # value j of new row r sits at old position offsets_old[rows[r]] + j
        starts = torch.repeat_interleave(self.offsets[:-1][rows] - offsets[:-1], lengths)
        return Jagged(self.values[starts + torch.arange(int(offsets[-1]), device=self.values.device)], offsets)

    def to(self, device, non_blocking: bool = False) -> "Jagged":
        return Jagged(self.values.to(device, non_blocking=non_blocking),
                      self.offsets.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Jagged":
        return Jagged(self.values.pin_memory(), self.offsets.pin_memory())


FieldValue = Union[Tensor, Jagged]


def _map(values: Mapping[str, FieldValue], fn) -> Dict[str, FieldValue]:
    return {k: fn(v) for k, v in values.items()}


def _named(store: str, key: str) -> property:
    """``batch.<store>_<key>`` as a property over ``batch.<store>[key]`` (None when absent)."""
    def get(self):
        return getattr(self, store).get(key)

    def set(self, value):
        if value is None:
            getattr(self, store).pop(key, None)
        else:
            getattr(self, store)[key] = value
    return property(get, set)


class Batch:
    """A batch of (user, history, target) examples, keyed by field.

    Shapes (B = batch size, L = padded history length, N = total behaviours):

    Always present:
        user:     [B] int64 user id (0 padding, 1 unknown)
        label:    [B] float32 in {0, 1}
        lengths:  [B] int64 valid history behaviours per row (0 allowed)
        target:   {"item": [B], "category": [B], ...} int64 ids of the candidate
        history:  event fields {"item", "category", "behavior"[, "timestamp"]}:
                  [B, L] right-padded with 0 (padded form) or [N] (jagged form)
    Optional:
        profile:  user-owned side fields {name: [B] ids / [B] float / Jagged multi-valued}
        context:  per-sample fields {name: [B] ids or float}
        offsets:  [B + 1] int64 in the jagged form, else None
        sample_index: [B] int64 row of the split's sample table (joins predictions back)

    Item-owned side fields are not in the batch: models look them up by item id in the
    item side table they hold (``recsys.models.layers.features``), for targets and
    histories alike. The familiar names stay readable: ``target_item``,
    ``target_category``, ``hist_item``, ``hist_category``, ``hist_behavior``,
    ``hist_timestamp``; the constructor accepts them as keywords too.
    """

    __slots__ = ("user", "label", "lengths", "target", "history", "profile", "context", "offsets", "sample_index")

    def __init__(self, *, user: Tensor, label: Tensor, lengths: Tensor,
                 target: Optional[Mapping[str, Tensor]] = None, history: Optional[Mapping[str, Tensor]] = None,
                 profile: Optional[Mapping[str, FieldValue]] = None, context: Optional[Mapping[str, Tensor]] = None,
                 offsets: Optional[Tensor] = None, sample_index: Optional[Tensor] = None,
                 target_item: Optional[Tensor] = None, target_category: Optional[Tensor] = None,
                 hist_item: Optional[Tensor] = None, hist_category: Optional[Tensor] = None,
                 hist_behavior: Optional[Tensor] = None, hist_timestamp: Optional[Tensor] = None) -> None:
        target = dict(target or {})
        history = dict(history or {})
        for store, name, value in ((target, "item", target_item), (target, "category", target_category),
                                   (history, "item", hist_item), (history, "category", hist_category),
                                   (history, "behavior", hist_behavior), (history, "timestamp", hist_timestamp)):
            if value is not None:
                if name in store:
                    raise ContractError(f"{name!r} given twice (keyword and dict)")
                store[name] = value
        for where, store in (("target", target), ("history", history)):
            for name in ("item", "category"):
                if name not in store:
                    raise ContractError(f"a batch needs {where}[{name!r}]")
        self.user, self.label, self.lengths = user, label, lengths
        self.target, self.history = target, history
        self.profile, self.context = dict(profile or {}), dict(context or {})
        self.offsets, self.sample_index = offsets, sample_index

    # -- the named fields of the first phase, read and written through the keyed dicts
    target_item = _named("target", "item")
    target_category = _named("target", "category")
    hist_item = _named("history", "item")
    hist_category = _named("history", "category")
    hist_behavior = _named("history", "behavior")
    hist_timestamp = _named("history", "timestamp")

    @property
    def is_jagged(self) -> bool:
        return self.offsets is not None

    @property
    def size(self) -> int:
        return int(self.label.shape[0])

    @property
    def max_length(self) -> int:
        """L of the padded form (the longest row for a jagged batch)."""
        if self.is_jagged:
            return int(self.lengths.max().item()) if self.size else 0
        return int(self.hist_item.shape[1])

    def replace(self, **changes) -> "Batch":
        """A copy with some attributes (or first-phase field names) replaced."""
        state = {name: getattr(self, name) for name in self.__slots__}
        state["target"], state["history"] = dict(self.target), dict(self.history)
        for name, value in changes.items():
            if name in self.__slots__:
                state[name] = value
            elif name in ("target_item", "target_category"):
                state["target"][name.split("_", 1)[1]] = value
            elif name in ("hist_item", "hist_category", "hist_behavior", "hist_timestamp"):
                if value is None:
                    state["history"].pop(name.split("_", 1)[1], None)
                else:
                    state["history"][name.split("_", 1)[1]] = value
            else:
                raise ContractError(f"Batch has no attribute {name!r}")
        return Batch(**state)

    def _apply(self, fn) -> "Batch":
        def one(v):
            return None if v is None else fn(v)
        return Batch(user=fn(self.user), label=fn(self.label), lengths=fn(self.lengths),
                     target=_map(self.target, fn), history=_map(self.history, fn),
                     profile=_map(self.profile, fn), context=_map(self.context, fn),
                     offsets=one(self.offsets), sample_index=one(self.sample_index))

    def to(self, device: Union[torch.device, str], non_blocking: bool = False) -> "Batch":
        return self._apply(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self._apply(lambda v: v.pin_memory())

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows ``start:stop`` (padded form)."""
        if self.is_jagged:
            raise ContractError("slice() needs the padded form; call to_padded() first")

        def cut(v):
            if isinstance(v, Jagged):
                lo, hi = int(v.offsets[start]), int(v.offsets[stop])
                return Jagged(v.values[lo:hi], v.offsets[start:stop + 1] - lo)
            return v[start:stop]
        return self._apply(cut)

    def take(self, rows: Tensor) -> "Batch":
        """The rows ``rows`` [R] int64 (any order, repeats allowed: one user's row once per
        candidate) as a new padded batch of R rows."""
        if self.is_jagged:
            raise ContractError("take() needs the padded form; call to_padded() first")
        return self._apply(lambda v: v.take(rows) if isinstance(v, Jagged) else v[rows])

    def history_mask(self) -> Tensor:
        """[B, L] bool, True on valid behaviours (padded form only)."""
        if self.is_jagged:
            raise ContractError("history_mask() needs the padded form; call to_padded() first")
        positions = torch.arange(self.hist_item.shape[1], device=self.hist_item.device)
        return positions.unsqueeze(0) < self.lengths.unsqueeze(1)

    def to_padded(self, max_length: Optional[int] = None) -> "Batch":
        """Jagged → padded ([N] + offsets → [B, L]); a padded batch is returned as is."""
        if not self.is_jagged:
            return self
        length = self.max_length if max_length is None else max_length
        if self.size and int(self.lengths.max()) > length:
            raise ContractError(f"a row has {int(self.lengths.max())} behaviours, more than max_length={length}")
        positions = torch.arange(length, device=self.lengths.device)
        mask = positions.unsqueeze(0) < self.lengths.unsqueeze(1)            # [B, L]
        gather = (self.offsets[:-1].unsqueeze(1) + positions.unsqueeze(0))[mask]

        def pad(values: Tensor) -> Tensor:
            out = values.new_zeros((self.size, length))
            out[mask] = values[gather]
            return out

        return self.replace(history=_map(self.history, pad), offsets=None)

    def to_jagged(self) -> "Batch":
        """Padded → jagged ([B, L] → [N] + [B + 1] offsets); a jagged batch is returned as is."""
        if self.is_jagged:
            return self
        mask = self.history_mask()
        offsets = torch.zeros(self.size + 1, dtype=torch.int64, device=self.lengths.device)
        offsets[1:] = torch.cumsum(self.lengths, 0)
        return self.replace(history=_map(self.history, lambda v: v[mask]), offsets=offsets)

    def __iter__(self) -> Iterator:  # pragma: no cover - guard against tuple-unpacking a batch
        raise TypeError("Batch is not iterable; read its fields by name")

    def __repr__(self) -> str:
        form = "jagged" if self.is_jagged else "padded"
        return (f"Batch(B={self.size}, {form}, target={sorted(self.target)}, history={sorted(self.history)}, "
                f"profile={sorted(self.profile)}, context={sorted(self.context)})")
