"""Field embeddings built from a :class:`recsys.contract.FeatureSpec`, and the item side table.

``FeatureEmbedding`` turns the values of declared fields into vectors (FuxiCTR's
``FeatureEmbeddingDict`` built from its ``feature_map``; torchrec's ``EmbeddingBagConfig``
binding tables to features by name):

=========  ==================================  ===================================================
kind       values                              vector
=========  ==================================  ===================================================
``id``     ids ``[...]`` int64                 ``E_table[id]``, row 0 = padding (zero, no gradient)
``ids``    ``[..., A]`` padded with 0, or a    masked mean (default) or sum of ``E_table`` over the
           :class:`~recsys.contract.Jagged`    row's non-zero ids; an empty row → zero vector
``number`` ``[...]`` float (NaN = missing)     ``(x − mean) / std · v_field`` (FuxiCTR's numeric
                                               embedding, a learned vector per field); a NaN value
                                               gets a learned ``missing`` vector instead
``dense``  ``[..., d]`` float                  ``Linear_field(x)`` to the embedding width; the input
                                               vector itself is data (frozen content vectors)
=========  ==================================  ===================================================

One ``nn.Embedding`` per **table**: fields naming the same ``table`` share it (target and
history items share ``item``). Ids pooling runs through ``F.embedding_bag`` with
``padding_idx=0`` (padding contributes nothing to the sum nor to the mean's count).

``ItemSideTable`` holds the item-owned side fields as one row per item id — persistent
buffers ``id [N]``, ``ids [N, A]``, ``number [N]``, frozen ``dense [N, d]`` (a dense field with
``frozen=False`` is a trainable parameter initialised from the data) — so the weights file
carries them and a trained model rebuilds from model.json + weights alone. Models look the
fields up by item id for the target and for every history behaviour alike.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.contract import FeatureSpec, FieldSpec, Jagged
from recsys.errors import CheckpointError, ConfigError, DataError

POOLINGS = ("mean", "sum")
# Tables of the core fields are attributes of the module (``embedding.item.weight``), as
# before the field contract, so weights of core-only runs keep their names; others live in
# ``tables``.
CORE_TABLES = ("user", "item", "category", "behavior")

FieldValues = Union[Tensor, Jagged]


def _padding_zero_normal_(table: nn.Embedding, std: float) -> None:
    nn.init.normal_(table.weight, std=std)
    with torch.no_grad():
        table.weight[0].zero_()


class FeatureEmbedding(nn.Module):
    """Embeds the values of some fields of a spec: ``embed(field, values) -> [..., width]``.

    Args:
        features: the spec the fields come from.
        fields: names of the fields this module embeds (any kind, any owner).
        dim: the width of every field unless ``dims`` says otherwise.
        dims: widths by table name (id/ids fields) or field name (number/dense fields).
        init_std: std of the N(0, init_std²) init of tables and numeric vectors (row 0 of
            each table zero); None leaves PyTorch's default init to the owner.
        pooling: "mean" | "sum" over the ids of an ``ids`` field.
        shared: tables owned elsewhere (table name → ``nn.Embedding``) that fields naming
            that table use instead of a new one (e.g. a model's own user table).
    """

    def __init__(self, features: FeatureSpec, fields: Sequence[str], dim: int, *,
                 dims: Optional[Mapping[str, int]] = None, init_std: Optional[float] = 1e-4, pooling: str = "mean",
                 shared: Optional[Mapping[str, nn.Embedding]] = None) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"ids pooling must be one of {POOLINGS}, got {pooling!r}")
        unknown = [name for name in fields if name not in features]
        if unknown:
            raise ConfigError(f"field(s) {unknown} are not in the feature spec; fields: "
                              f"{[f.name for f in features.fields]}")
        dims = dict(dims or {})
        self.pooling = pooling
        self.specs: Dict[str, FieldSpec] = {name: features[name] for name in fields}
        self.tables = nn.ModuleDict()
        self.numbers = nn.ParameterDict()       # field → v [dim]
        self.missing = nn.ParameterDict()       # field → vector of a NaN value [dim]
        self.dense = nn.ModuleDict()            # field → Linear(d, dim)
        self._shared = dict(shared or {})       # not registered: their owner holds them
        self._widths: Dict[str, int] = {}
        created: List[nn.Embedding] = []
        for spec in self.specs.values():
            if spec.embedded:
                width = dims.get(spec.table, dim)
                table = self._shared.get(spec.table)
                if table is None and not self.has_table(spec.table):
                    table = nn.Embedding(spec.size, width, padding_idx=0)
                    created.append(table)
                    if spec.table in CORE_TABLES:
                        self.add_module(spec.table, table)
                    else:
                        self.tables[spec.table] = table
                width = self.table(spec.table).embedding_dim
            elif spec.kind == "number":
                width = dims.get(spec.name, dim)
                self.numbers[spec.name] = nn.Parameter(torch.empty(width))
                self.missing[spec.name] = nn.Parameter(torch.empty(width))
            else:
                width = dims.get(spec.name, dim)
                self.dense[spec.name] = nn.Linear(spec.size, width)
            if width < 1:
                raise ConfigError(f"field {spec.name!r}: embedding width must be >= 1, got {width}")
            self._widths[spec.name] = width
        if init_std is not None:   # None: the owner initialises (e.g. DARE's N(0, 0.01) over all)
            for table in created:    # after creating them all, as the first-phase models did
                _padding_zero_normal_(table, init_std)
            for params in (self.numbers, self.missing):
                for p in params.values():
                    nn.init.normal_(p, std=init_std)
        else:
            for params in (self.numbers, self.missing):
                for p in params.values():
                    nn.init.normal_(p, std=0.01)

    # ------------------------------------------------------------------ structure
    @property
    def fields(self) -> List[str]:
        return list(self.specs)

    def width(self, field: str) -> int:
        return self._widths[field]

    def has_table(self, name: str) -> bool:
        return name in self._shared or name in self.tables or (name in CORE_TABLES and name in self._modules)

    def table(self, name: str) -> nn.Embedding:
        """The ``nn.Embedding`` of a table name (shared, core attribute or ``tables``)."""
        if name in self._shared:
            return self._shared[name]
        if name in CORE_TABLES and name in self._modules:
            return self._modules[name]
        return self.tables[name]

    def own_tables(self) -> List[nn.Embedding]:
        """The tables this module owns (not the shared ones), each once."""
        return [self._modules[n] for n in CORE_TABLES if n in self._modules] + list(self.tables.values())

    # ------------------------------------------------------------------ lookup
    def embed(self, field: str, values: FieldValues) -> Tensor:
        """values of one field → vectors (see the module docstring for each kind).

        id ``[...]`` → ``[..., W]``; ids ``[..., A]`` → ``[..., W]`` or Jagged of B rows →
        ``[B, W]``; number ``[...]`` → ``[..., W]``; dense ``[..., d]`` → ``[..., W]``.
        """
        spec = self.specs.get(field)
        if spec is None:
            raise ConfigError(f"field {field!r} is not embedded by this module; it embeds {self.fields}")
        if spec.kind == "id":
            return self.table(spec.table)(values)
        if spec.kind == "ids":
            return self._pool_ids(self.table(spec.table), values)
        if spec.kind == "number":
            z = (values.to(self.numbers[field].dtype) - spec.mean) / spec.std
            nan = torch.isnan(z)
            out = z.nan_to_num(0.0).unsqueeze(-1) * self.numbers[field]
            return torch.where(nan.unsqueeze(-1), self.missing[field].expand_as(out), out)
        linear = self.dense[field]
        return linear(values.to(linear.weight.dtype))

    def _pool_ids(self, table: nn.Embedding, values: FieldValues) -> Tensor:
        if isinstance(values, Jagged):
            return F.embedding_bag(values.values, table.weight, values.offsets[:-1], mode=self.pooling,
                                   padding_idx=0, include_last_offset=False)
        if values.dim() < 1:
            raise ConfigError(f"ids values must be [..., A] or Jagged, got shape {tuple(values.shape)}")
        lead, width = values.shape[:-1], values.shape[-1]
        if width == 0 or values.numel() == 0:   # no ids at all: every row is empty → zeros
            return table.weight.new_zeros(tuple(lead) + (table.embedding_dim,))
        pooled = F.embedding_bag(values.reshape(-1, width), table.weight, mode=self.pooling, padding_idx=0)
        return pooled.reshape(tuple(lead) + (table.embedding_dim,))

    def penalty(self) -> Tensor:
        """Σ‖w‖² over the rows of its own tables (padding excluded), numeric vectors and
        dense projection weights (FuxiCTR's embedding_regularizer over every field)."""
        terms = [table.weight[1:].pow(2).sum() for table in self.own_tables()]
        terms += [p.pow(2).sum() for params in (self.numbers, self.missing) for p in params.values()]
        terms += [linear.weight.pow(2).sum() for linear in self.dense.values()]
        return torch.stack(terms).sum() if terms else torch.zeros(())


class ItemSideTable(nn.Module):
    """The item-owned side fields of a spec, one row per item id (see the module docstring).

    ``lookup(field, items [...])`` → id ``[...]``, ids ``[..., A]``, number ``[...]``,
    dense ``[..., d]``. Fill with :meth:`attach` (at fit time, from the built dataset) or by
    loading weights; a lookup before either is an error (zeros would train silently).
    """

    def __init__(self, features: FeatureSpec) -> None:
        super().__init__()
        self.num_items = features.num_items
        self.specs: Dict[str, FieldSpec] = {f.name: f for f in features.of("item", side_only=True)}
        for spec in self.specs.values():
            shape = self.expected_shape(spec)
            dtype = torch.int64 if spec.embedded else torch.float32
            try:
                if spec.kind == "dense" and not spec.frozen:
                    self.register_parameter(spec.name, nn.Parameter(torch.zeros(shape, dtype=dtype)))
                else:
                    self.register_buffer(spec.name, torch.zeros(shape, dtype=dtype), persistent=True)
            except KeyError as exc:
                raise ConfigError(f"item field {spec.name!r}: the name cannot be used for a side table ({exc})") from None
        self.attached = not self.specs
        self.register_load_state_dict_post_hook(ItemSideTable._loaded)

    @staticmethod
    def _loaded(module: "ItemSideTable", incompatible) -> None:
        module.attached = True   # strict loading has already rejected missing tables

    @property
    def fields(self) -> List[str]:
        return list(self.specs)

    def expected_shape(self, spec: FieldSpec) -> tuple:
        if spec.kind == "ids":
            if spec.max_values < 1:
                raise ConfigError(f"item field {spec.name!r} (ids): the spec needs max_values >= 1 to size its "
                                  "side table [num_items, max_values]")
            return (self.num_items, spec.max_values)
        if spec.kind == "dense":
            return (self.num_items, spec.size)
        return (self.num_items,)

    def attach(self, tables: Mapping[str, Tensor]) -> None:
        """Copy the built dataset's side tables in (``BuiltDataset.side_table(name)``).

        Every item side field of the spec must be given, in its model-ready shape: id
        ``[N]`` int, ids ``[N, A']`` int padded with 0 (``A' <= max_values``; narrower is
        right-padded), number ``[N]`` float (NaN = missing), dense ``[N, d]`` float without
        NaN. Raises ConfigError (missing/unknown field), CheckpointError (shape or dtype that
        does not fit) or DataError (ids outside the vocabulary, NaN in a dense vector), each
        naming the field (and the item row).
        """
        unknown = sorted(set(tables) - set(self.specs))
        if unknown:
            raise ConfigError(f"side table(s) {unknown} are not item side fields of this model; "
                              f"it has {self.fields or 'none'}")
        missing = [name for name in self.specs if name not in tables]
        if missing:
            raise ConfigError(f"side table(s) {missing} missing: the model is built for item side fields {self.fields}")
        checked = {name: self._checked(self.specs[name], tables[name]) for name in self.specs}
        with torch.no_grad():
            for name, value in checked.items():
                getattr(self, name).copy_(value)
        self.attached = True

    def _checked(self, spec: FieldSpec, value: Tensor) -> Tensor:
        name = spec.name
        if not torch.is_tensor(value):
            raise CheckpointError(f"side table {name!r}: expected a tensor, got {type(value).__name__}")
        expected = self.expected_shape(spec)
        if spec.embedded:
            if value.is_floating_point() or value.dtype == torch.bool or value.is_complex():
                raise CheckpointError(f"side table {name!r} ({spec.kind}): expected integer ids, got {value.dtype}")
            value = value.to(torch.int64)
            if spec.kind == "ids" and value.dim() == 2 and value.shape[0] == expected[0] \
                    and value.shape[1] < expected[1]:
                value = F.pad(value, (0, expected[1] - value.shape[1]))
        elif not value.is_floating_point():
            raise CheckpointError(f"side table {name!r} ({spec.kind}): expected floats, got {value.dtype}")
        if tuple(value.shape) != expected:
            raise CheckpointError(f"side table {name!r} ({spec.kind}): shape {tuple(value.shape)} does not fit the "
                                  f"model's {expected} (num_items={self.num_items}"
                                  + (f", max_values={spec.max_values}" if spec.kind == "ids" else "")
                                  + (f", width={spec.size}" if spec.kind == "dense" else "") + ")")
        if spec.embedded:
            bad = (value < 0) | (value >= spec.size)
            if bool(bad.any()):
                row = int(torch.nonzero(bad)[0][0])
                raise DataError(f"side table {name!r}: item row {row} holds id {int(value[bad][0])} outside the "
                                f"vocabulary [0, {spec.size})")
        elif spec.kind == "dense":
            nan = torch.isnan(value).any(dim=1) | torch.isinf(value).any(dim=1)
            if bool(nan.any()):
                row = int(torch.nonzero(nan)[0][0])
                raise DataError(f"side table {name!r} (dense): item row {row} has a NaN or infinite value "
                                f"({int(nan.sum())} such rows); dense vectors must be finite")
        return value.to(torch.float32) if not spec.embedded else value

    def lookup(self, field: str, items: Tensor) -> Tensor:
        """The side values of ``items`` [...] for one field (shapes in the class docstring)."""
        if not self.attached:
            raise ConfigError(f"the item side tables {self.fields} are not attached: call "
                              "model.attach_side_tables(...) with the dataset's side tables, or load trained weights")
        table = getattr(self, field)
        # index_select, not table[items]: 2-4x faster on CPU for [B, L] ids (bench/bench_side_lookup.py)
        return table.index_select(0, items.reshape(-1)).reshape(tuple(items.shape) + tuple(table.shape[1:]))
