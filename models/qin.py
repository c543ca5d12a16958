"""QIN: Quadratic Interest Network.

Li, Li, Zhang, Zhang, Yu, Sang, Zhang. "Quadratic Interest Network for Multimodal
Click-Through Rate Prediction." arXiv:2504.17699, 2025 (2nd place, WWW'25 EReL@MIR MM-CTR
Task 2). Official code: github.com/salmon1802/QIN, ``src/QIN_variety_v9.py`` on FuxiCTR
2.3.7; defaults from ``config/qin_config/model_config.yaml`` (QIN_variety_v9).

What it computes (official code; design note models-a §4):
    x(i)  = [E_id(i) ‖ pool(E_attr(attrs(i))) ‖ P·m(i)]   the item tower, d_i wide, looked up
            by item id for the target and every history behaviour; m(i) is a frozen content
            vector, P a bias-free Linear, the attribute pooling a masked mean
    o     = ASTA(x_t, X_b) = W_o(ReLU(QKᵀ/√d_a ⊙ mask) V) + x_t      d_a = 2·d_i, no biases
    z_0   = [sample fields..., x_t, o]                  (profile/context fields, one per sample)
    z     ← Dropout(PReLU(BN(z ⊙ Σ_r Dropout(W z + b)_r))) + z   num_layers times, R = num_row
    logit = wᵀ z + b
    loss  = BCE + (λ/2)·Σ‖θ_emb‖²  over every embedding table and the content projections
            (FuxiCTR's embedding_regularizer, λ = 2e-4); no auxiliary loss

The item tower is built from the open feature contract: the item id, then every item side
field of the run (``item_fields``; default all of them) in spec order — ``ids`` fields
(genres, attributes) mean-pooled over their non-padding ids, ``id`` fields embedded,
``number`` fields as (x − mean)/std · v, ``dense`` fields (``recsys data embed-text`` content
vectors, held frozen in the item side table) through a bias-free Linear to ``embedding_dim``.
Every part is ``embedding_dim`` wide, so d_i = embedding_dim · parts (the official tower:
id + tags + 128-d multimodal vector = 3 · 128 = 384).

Defaults (QIN_variety_v9): embedding_dim 128, num_layers 4, num_row 4, net_dropout 0.1,
batch_norm on, embedding_regularizer 2e-4, attention width 2·d_i, Xavier-normal Linear
weights with zero biases, embeddings N(0, 1e-4²) with a zero padding row, PReLU with one
slope per layer starting at 0.25 (``nn.PReLU()``). The run configs carry the optimiser side
(Adam 2e-3, gradient clip 10, lr ×0.5 on a validation plateau down to 1e-6).

Deliberate departures and where the sources differ (switches):
    * ASTA output: the official code applies W_o (d_a → d_i) before the residual; the paper
      writes o = ReLU(QKᵀ/√d_a)V + x_t with no W_o (which only type-checks for d_a = d_i).
      ``attention_projection`` (default True, the code) selects; False needs
      ``attention_dim`` equal to d_i.
    * ASTA evaluation order: s = X_b (W_kᵀ Q)/√d_a and aᵀV = W_v (aᵀ X_b) instead of
      building K, V [B, L, d_a] (``attention_reassociate``, default True): the same
      parameters and function (equal up to float rounding, tested), O(L·d_i) instead of
      O(L·d_i·d_a) per row.
    * ASTA masking: scores at padded positions are set to 0 with ``torch.where`` (and the
      values there too) instead of the code's ``scores * mask``; identical for finite numbers
      (ReLU(0) = 0), and a non-finite value behind the padding cannot turn into NaN.
    * QNN rows: reproduced as the code computes them, Σ_r over the R rows *before* the
      product with z, so without dropout the R maps collapse into one linear map (the
      "R rows" of the paper's story add no capacity; a test checks the collapse). No switch:
      the code is what produced the published numbers.
    * PReLU: one slope per layer as the code's ``nn.PReLU()``; ``prelu_per_unit`` gives one
      per unit (not in either source).
    * Category: the official tower has no category field; ``use_category=True`` adds
      E_cate(c(i)) (our datasets' first genre / first attribute, redundant with the pooled
      attribute field, hence off).
    * Sample fields: the official z_0 starts with likes_level / views_level (per-sample
      categorical fields, embedding_dim each); here any user-profile and context fields of
      the run play that role (``sample_fields``; default all), embedded ``embedding_dim``
      wide, ids pooled, numbers scaled. There is no user-id embedding (user_id is meta in the
      official config).
    * History length: the official loader keeps the last 64 behaviours (``max_len``); here
      the data's L (``data.max_length``) decides, the most recent behaviours as built.
    * Numeric side fields are embedded as (x − mean)/std · v with a learned vector for a
      missing value (FuxiCTR: x · v); the official dataset has none.
    * One model file for the QIN_variety_v9 form only; the repo's other QIN variants are not
      reproduced.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from recsys.contract import Batch
from recsys.errors import ConfigError

from .base import FeatureSpec, RankingModel, RankingOutput
from .inputs import embed_fields, profile_embedding, user_and_context_fields
from .layers.features import FeatureEmbedding, ItemSideTable
from .layers.quadratic import AdaptiveSparseTargetAttention, QuadraticNeuralNetwork
from .registry import register


def check_item_fields(features: FeatureSpec, names: Sequence[str]) -> None:
    """ConfigError naming the first of ``names`` that is not an item side field of the spec."""
    available = [f.name for f in features.of("item", side_only=True)]
    for name in names:
        if name not in features:
            raise ConfigError(f"QIN item_fields: field {name!r} is not in the run's fields; the item side fields "
                              f"are {available or 'none'} (add it to data.fields; a content vector is written by "
                              "`recsys data embed-text CONFIG --columns ... --name " + name + "`)")
        if name not in available:
            raise ConfigError(f"QIN item_fields: field {name!r} is a {features[name].owner} field, not an item side "
                              f"field; the item side fields are {available or 'none'}")


class QINItemTower(nn.Module):
    """x(i) = [E_item(i) (‖ E_cate(c(i))) ‖ s_1(i) ‖ … ‖ s_S(i)]: ids [...] → [..., d_i].

    ``s_f(i)`` is item side field f of item i, looked up by item id in the model's
    :class:`ItemSideTable`: ``ids`` pooled (``pooling``), ``id`` / ``number`` embedded
    (``FeatureEmbedding``), ``dense`` projected by a bias-free Linear (FuxiCTR's projection
    of an ``embedding``-type feature). Every part is ``dim`` wide.
    """

    def __init__(self, features: FeatureSpec, fields: Sequence[str], dim: int, use_category: bool,
                 pooling: str, init_std: float) -> None:
        super().__init__()
        core = ["item"] + (["category"] if use_category else [])
        self.fields = list(fields)
        self.parts = core + self.fields
        dense = [n for n in self.fields if features[n].kind == "dense"]
        self.embedding = FeatureEmbedding(features, core + [n for n in self.fields if n not in dense], dim,
                                          init_std=init_std, pooling=pooling)
        self.content = nn.ModuleDict({n: nn.Linear(features[n].size, dim, bias=False) for n in dense})
        self.use_category = use_category
        self.dim = dim * len(self.parts)

    def forward(self, items: Tensor, categories: Tensor, item_side: ItemSideTable) -> Tensor:
        parts = [self.embedding.embed("item", items)]
        if self.use_category:
            parts.append(self.embedding.embed("category", categories))
        for name in self.fields:
            values = item_side.lookup(name, items)
            if name in self.content:
                linear = self.content[name]
                parts.append(linear(values.to(linear.weight.dtype)))
            else:
                parts.append(self.embedding.embed(name, values))
        return torch.cat(parts, dim=-1)

    def penalty(self) -> Tensor:
        """Σ‖θ‖² over its tables, numeric vectors and content projections."""
        total = self.embedding.penalty()
        for linear in self.content.values():
            total = total + linear.weight.pow(2).sum()
        return total


@register
class QIN(RankingModel):
    """Quadratic Interest Network (see the module docstring).

    Args:
        features: the fields of the run (sizes from the data).
        embedding_dim: width of every item-tower part and every sample field (128).
        item_fields: the item side fields of the tower, in this order (None = every item
            side field of the run, in spec order). A named field the run does not have is a
            ConfigError at construction.
        use_category: add the category embedding to the tower (not in the official tower).
        sample_fields: the profile / context fields of z_0 (None = all of the run's).
        attention_dim: d_a (None = 2 · d_i, the official code).
        attention_scale: divide the scores by sqrt(d_a).
        attention_projection: W_o before the residual (code) or not (paper; d_a = d_i).
        attention_reassociate: evaluate the keys and values through their linearity
            (X_b(W_kᵀQ), W_v(aᵀX_b)): the same function, without the [B, L, d_a] tensors.
        num_layers, num_row: QNN depth and R.
        net_dropout: dropout inside each quadratic layer and after each activation.
        batch_norm: BatchNorm1d after each quadratic layer.
        prelu_per_unit: one PReLU slope per unit instead of per layer.
        embedding_regularizer: λ of (λ/2)·Σ‖θ_emb‖² (FuxiCTR's embedding_regularizer).
        embedding_init_std: std of the N(0, σ²) embedding init.
        ids_pooling: "mean" (FuxiCTR's sequence-field default) | "sum".
        linear_init: "xavier_normal" (FuxiCTR, zero biases) | "torch".
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 128, item_fields: Optional[List[str]] = None,
                 use_category: bool = False, sample_fields: Optional[List[str]] = None,
                 attention_dim: Optional[int] = None, attention_scale: bool = True, attention_projection: bool = True,
                 attention_reassociate: bool = True,
                 num_layers: int = 4, num_row: int = 4, net_dropout: float = 0.1, batch_norm: bool = True,
                 prelu_per_unit: bool = False, embedding_regularizer: float = 2e-4, embedding_init_std: float = 1e-4,
                 ids_pooling: str = "mean", linear_init: str = "xavier_normal") -> None:
        super().__init__(features)
        if embedding_dim < 1:
            raise ConfigError(f"QIN embedding_dim must be >= 1, got {embedding_dim}")
        if linear_init not in ("xavier_normal", "torch"):
            raise ConfigError(f"QIN linear_init must be 'xavier_normal' or 'torch', got {linear_init!r}")
        if not 0.0 <= net_dropout < 1.0:
            raise ConfigError(f"QIN net_dropout must be in [0, 1), got {net_dropout}")
        if item_fields is None:
            item_fields = [f.name for f in features.of("item", side_only=True)]
        check_item_fields(features, item_fields)
        if sample_fields is None:
            sample_fields = user_and_context_fields(features)
        allowed = user_and_context_fields(features)
        for name in sample_fields:
            if name not in allowed:
                raise ConfigError(f"QIN sample_fields: {name!r} is not a user-profile or context field of the run; "
                                  f"those are {allowed or 'none'}")
        self.tower = QINItemTower(features, item_fields, embedding_dim, use_category, ids_pooling, embedding_init_std)
        item_dim = self.tower.dim
        self.attention = AdaptiveSparseTargetAttention(item_dim, attention_dim or 2 * item_dim, attention_scale,
                                                       attention_projection, attention_reassociate)
        self.sample_fields = list(sample_fields)
        self.fields = profile_embedding(features, self.sample_fields, self.tower.embedding, embedding_dim,
                                        embedding_init_std, ids_pooling)
        sample_dim = sum(self.fields.width(n) for n in self.sample_fields) if self.fields is not None else 0
        self.input_dim = sample_dim + 2 * item_dim
        self.qnn = QuadraticNeuralNetwork(self.input_dim, num_layers, num_row, net_dropout, batch_norm,
                                          prelu_per_unit)
        self.embedding_regularizer = embedding_regularizer
        if linear_init == "xavier_normal":    # FuxiCTR's reset_parameters: every nn.Linear
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def items(self, batch: Batch) -> "tuple[Tensor, Tensor, Tensor]":
        """(x_t [B, d_i], X_b [B, L, d_i], mask [B, L]) of a padded batch, one tower lookup."""
        items = torch.cat([batch.hist_item, batch.target_item.unsqueeze(1)], dim=1)           # [B, L + 1]
        categories = torch.cat([batch.hist_category, batch.target_category.unsqueeze(1)], dim=1)
        x = self.tower(items, categories, self.item_side)                                     # [B, L + 1, d_i]
        return x[:, -1], x[:, :-1], batch.history_mask()

    def forward(self, batch: Batch) -> RankingOutput:
        batch = batch.to_padded()
        target, history, mask = self.items(batch)
        interest = self.attention(target, history, mask)                                      # [B, d_i]
        parts = embed_fields(self.fields, batch, self.features, self.sample_fields) if self.fields is not None else []
        z = torch.cat(parts + [target, interest], dim=-1)                                     # [B, input_dim]
        return RankingOutput(logit=self.qnn(z))

    def regularization(self, batch: Batch) -> Tensor:
        if self.embedding_regularizer <= 0:
            return self.qnn.fc.weight.new_zeros(())
        total = self.tower.penalty()
        if self.fields is not None:
            total = total + self.fields.penalty()
        return self.embedding_regularizer / 2 * total
