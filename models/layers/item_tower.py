"""The item table of the retrieval models, shared by the history and the output side.

SASRec, MIND and ComiRec embed history items and score candidates with **one** table (the
softmax weights are tied to the input embedding: ComiRec's ``mid_embeddings_var`` in both
places, SASRec's ``item_emb`` for inputs and logits). ``ItemTower`` is that table plus,
optionally, item side fields summed into the id vector (the open feature contract: brand,
attribute ids, a frozen text vector, ... looked up by item id in the model's
:class:`~recsys.models.layers.features.ItemSideTable`), so history and candidates get the
same item vector. The papers use the id embedding alone (the default: no fields).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from recsys.contract import FeatureSpec
from recsys.errors import ConfigError

from .features import FeatureEmbedding, ItemSideTable

INITS = ("xavier_uniform", "xavier_normal", "normal")


def init_table_(table: nn.Embedding, init: str, std: Optional[float] = None) -> None:
    """Initialise an embedding table in place, padding row 0 zero.

    ``xavier_uniform``: TensorFlow's ``get_variable`` default (ComiRec's item table);
    ``xavier_normal``: SASRec (pmixer's port initialises every weight so; Kang's TF code
    uses a Xavier initialiser); ``normal``: N(0, std²) (std None = 1 / sqrt(width))."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if init == "xavier_uniform":
        nn.init.xavier_uniform_(table.weight)
    elif init == "xavier_normal":
        nn.init.xavier_normal_(table.weight)
    else:
        nn.init.normal_(table.weight, std=table.embedding_dim ** -0.5 if std is None else std)
    with torch.no_grad():
        table.weight[0].zero_()


class ItemTower(nn.Module):
    """items [...] → [..., D]: the id embedding, plus the embeddings of ``fields`` (item
    side fields of the spec, looked up through the ids) when given.

    Args:
        features: the run's feature spec.
        dim: width D.
        fields: item side fields summed into the id vector (default none: the papers).
        init: init of the id table (see :func:`init_table_`).
        side_init_std: std of the side-field embeddings' N(0, std²) init.
    """

    def __init__(self, features: FeatureSpec, dim: int, fields: Sequence[str] = (), init: str = "xavier_uniform",
                 side_init_std: float = 1e-2) -> None:
        super().__init__()
        side = {f.name for f in features.of("item", side_only=True)}
        wrong = [name for name in fields if name not in side]
        if wrong:
            raise ConfigError(f"item_fields {wrong} are not item side fields of the run (data.fields); item side "
                              f"fields: {sorted(side) or 'none'}")
        self.ids = nn.Embedding(features.num_items, dim, padding_idx=0)
        init_table_(self.ids, init)
        self.fields = list(fields)
        self.side = FeatureEmbedding(features, self.fields, dim, init_std=side_init_std) if self.fields else None

    @property
    def weight(self) -> Tensor:
        """The id table [N, D]."""
        return self.ids.weight

    def forward(self, items: Tensor, item_side: Optional[ItemSideTable] = None) -> Tensor:
        out = self.ids(items)
        if self.side is not None:
            if item_side is None:
                raise ConfigError(f"item_fields {self.fields} need the model's item side table")
            for name in self.fields:
                out = out + self.side.embed(name, item_side.lookup(name, items))
        return out


def embedded_history(tower: ItemTower, batch, item_side: Optional[ItemSideTable] = None) -> "tuple[Tensor, Tensor]":
    """(E [B, L, D] with padded positions zeroed, mask [B, L] bool) of a batch's history;
    a jagged batch is padded first (to its longest row)."""
    padded = batch.to_padded()
    mask = padded.history_mask()
    history = tower(padded.hist_item, item_side) * mask.unsqueeze(-1).to(tower.weight.dtype)
    return history, mask
