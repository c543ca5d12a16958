"""FinalMLP: an enhanced two-stream MLP model for CTR prediction.

Mao, Zhu, Su, Cai, Li, Dong. "FinalMLP: An Enhanced Two-Stream MLP Model for CTR
Prediction." AAAI 2023 (arXiv:2304.00902). Official code: FuxiCTR model_zoo/FinalMLP
(FinalMLP.py and DualMLP.py).

What it computes:
    e     = [e_1 ‖ ... ‖ e_F]                     field embeddings, [B, F·D]
    g_s   = 2σ(MLP_gate_s(c_s))                   stream-specific feature gating, s ∈ {1, 2};
                                                  c_s = embeddings of the context fields
                                                  (separate tables) or a learned vector p_s
    o_s   = MLP_s(g_s ⊙ e)                        two MLP streams, no output layer
    logit = b + w_1ᵀo_1 + w_2ᵀo_2 + Σ_h (o_1ʰ)ᵀ W_h o_2ʰ     multi-head bilinear fusion, k heads

``dual_mlp=True`` gives the DualMLP ablation: logit = MLP'_1(e) + MLP'_2(e), each ending
in a Linear to 1, no gating and no bilinear fusion.

Fields: every field of the run's spec — the user id, the target's behaviour embedding
[item ‖ category ‖ item side fields] and the history's (pooled), then the user-profile and
context fields; F·D = D·(1 + 2·(2 + S) + P + C) for S item side, P profile and C context
fields (core-only: F = 5, the first-phase model exactly). Defaults are the paper's best
MovielensLatest_x1 setting (BARS): D = 10,
mlp1 [400] (dropout 0.4), mlp2 [800] (dropout 0.2), gate hidden [800], 10 heads, BatchNorm,
embedding L2 0.01 over the whole tables, no gate context (learned global vectors).
Initialisation as in the official code: embeddings N(0, 1e-4²), Linear weights
Xavier-normal with zero biases, the bilinear tensor Xavier-normal as the flat
[k·(d1/k)·(d2/k), 1] matrix (std √(2/(n+1)), ~0.008 here).

Deliberate departures:
    * Behaviour sequences: FinalMLP has no sequence module; FuxiCTR mean-pools a sequence
      into one field, which is our default (``sequence="mean"``: masked mean of the item
      and of the category embeddings, two fields). ``sequence="attention"`` instead pools
      the history with DIN's activation unit against the target — **our extension**, not
      in the paper; the two pooled halves still count as two fields.
    * Gate context (``fs1_context`` / ``fs2_context``) may name any field with one value per
      sample — user, item, category, item side fields (of the target), profile and context
      fields — each embedded by a gate-specific table/projection as in FuxiCTR; per-behaviour
      fields (the history, ``behavior``) cannot be gate context (a ConfigError).
    * Multi-valued (ids) fields are mean-pooled (``ids_pooling``), numbers embedded as
      (x − mean)/std · v, dense vectors through a Linear (see layers.features): FuxiCTR's
      field embeddings.
    * One logit + sigmoid, as in the paper.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor, nn

from recsys.contract import Batch

from .base import FeatureSpec, RankingModel, RankingOutput
from .registry import register
from .inputs import (check_sample_fields, embed_batch, embed_fields, profile_embedding, sample_field_values,
                     user_and_context_fields)
from .layers.attention import ActivationUnitAttention
from .layers.embedding import BehaviorEmbedding
from .layers.features import FeatureEmbedding, ItemSideTable
from .layers.mlp import MLP


class FeatureGate(nn.Module):
    """g = 2σ(MLP(context)) ∈ (0, 2)^{F·D}, element-wise; starts at exactly 1 for a learned
    global context (zero vector, zero output bias)."""

    def __init__(self, features: FeatureSpec, context: List[str], dim: int, out_dim: int,
                 hidden_units: List[int], pooling: str = "mean") -> None:
        super().__init__()
        check_sample_fields(features, context, "FinalMLP gate context")
        self.features = features
        self.context = list(context)
        # ``tables``: the gate's own field embeddings (user/item/category ids keep the names
        # tables.user, tables.item, ... of the first phase)
        self.tables = FeatureEmbedding(features, self.context, dim, init_std=1e-4, pooling=pooling) \
            if self.context else None
        self.global_context = None if self.context else nn.Parameter(torch.zeros(dim))
        in_dim = sum(self.tables.width(n) for n in self.context) if self.context else dim
        self.mlp = MLP(in_dim, hidden_units, "relu", output_dim=out_dim)

    def forward(self, batch: Batch, item_side: Optional[ItemSideTable] = None) -> Tensor:
        if self.global_context is not None:
            context = self.global_context.expand(batch.size, -1)
        else:
            context = torch.cat([self.tables.embed(name, sample_field_values(batch, self.features, item_side, name))
                                 for name in self.context], dim=-1)
        return 2 * torch.sigmoid(self.mlp(context))


class BilinearFusion(nn.Module):
    """logit = b + w_1ᵀo_1 + w_2ᵀo_2 + Σ_h (o_1ʰ)ᵀ W_h o_2ʰ over ``heads`` chunks."""

    def __init__(self, dim1: int, dim2: int, heads: int) -> None:
        super().__init__()
        if dim1 % heads or dim2 % heads:
            raise ValueError(f"stream widths {dim1} and {dim2} must both be divisible by num_heads={heads}")
        self.heads = heads
        self.linear1 = nn.Linear(dim1, 1)
        self.linear2 = nn.Linear(dim2, 1, bias=False)
        self.weight = nn.Parameter(torch.empty(heads, dim1 // heads, dim2 // heads))
        # Xavier-normal of the official code's flat [k·(d1/k)·(d2/k), 1] matrix: std √(2/(n+1)).
        # (xavier_normal_ on the 3-D tensor would read fans 40·80 and 10·80: a ~3x larger std.)
        nn.init.normal_(self.weight, std=math.sqrt(2.0 / (self.weight.numel() + 1)))

    def forward(self, o1: Tensor, o2: Tensor) -> Tensor:
        h1 = o1.reshape(o1.shape[0], self.heads, -1)                       # [B, k, d1/k]
        h2 = o2.reshape(o2.shape[0], self.heads, -1)                       # [B, k, d2/k]
        bilinear = torch.einsum("bhi,hij,bhj->b", h1, self.weight, h2)
        return self.linear1(o1).squeeze(-1) + self.linear2(o2).squeeze(-1) + bilinear


@register
class FinalMLP(RankingModel):
    """FinalMLP / DualMLP (see module docstring).

    Args:
        features: vocabulary sizes from the data.
        embedding_dim: D, width of every field embedding.
        mlp1_units, mlp1_dropout, mlp2_units, mlp2_dropout: the two streams.
        batch_norm: BatchNorm in the streams.
        use_fs: stream-specific feature gating on/off.
        fs_hidden_units: gate MLP hidden widths.
        fs1_context, fs2_context: gate context fields per stream (empty = learned vector).
        num_heads: k of the bilinear fusion.
        dual_mlp: the DualMLP ablation instead of FinalMLP.
        sequence: "mean" (FuxiCTR's pooled field) or "attention" (our extension).
        l2_embedding: weight of the embedding L2 (whole tables, FuxiCTR's regularizer).
        attention_units, attention_activation, attention_softmax: the activation unit of
            ``sequence="attention"`` (defaults: FuxiCTR's DIN, [64] Dice, no softmax).
        attention_backend: for ``sequence="attention"``.
        ids_pooling: "mean" | "sum" over the ids of a multi-valued field.
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 10, mlp1_units: List[int] = [400],
                 mlp1_dropout: float = 0.4, mlp2_units: List[int] = [800], mlp2_dropout: float = 0.2,
                 batch_norm: bool = True, use_fs: bool = True, fs_hidden_units: List[int] = [800],
                 fs1_context: List[str] = [], fs2_context: List[str] = [], num_heads: int = 10,
                 dual_mlp: bool = False, sequence: str = "mean", l2_embedding: float = 0.01,
                 attention_units: List[int] = [64], attention_activation: str = "dice",
                 attention_softmax: bool = False, attention_backend: str = "auto",
                 ids_pooling: str = "mean") -> None:
        super().__init__(features)
        if sequence not in ("mean", "attention"):
            raise ValueError(f"sequence must be 'mean' or 'attention', got {sequence!r}")
        self.embedding = BehaviorEmbedding(features, embedding_dim, embedding_dim, field_dim=embedding_dim,
                                           pooling=ids_pooling)
        self.user = nn.Embedding(features.num_users, embedding_dim, padding_idx=0)
        nn.init.normal_(self.user.weight, std=1e-4)
        self.sequence = sequence
        self.attention = (ActivationUnitAttention(self.embedding.dim, attention_units, attention_activation,
                                                  attention_softmax, attention_backend)
                          if sequence == "attention" else None)
        self.field_names = user_and_context_fields(features)
        self.fields = profile_embedding(features, self.field_names, self.embedding, embedding_dim, 1e-4, ids_pooling,
                                        shared={features["user"].table: self.user})
        width = embedding_dim + 2 * self.embedding.dim
        width += sum(self.fields.width(n) for n in self.field_names) if self.fields is not None else 0
        self.dual_mlp, self.use_fs = dual_mlp, use_fs and not dual_mlp
        if dual_mlp:
            self.mlp1 = MLP(width, mlp1_units, "relu", mlp1_dropout, batch_norm, output_dim=1)
            self.mlp2 = MLP(width, mlp2_units, "relu", mlp2_dropout, batch_norm, output_dim=1)
        else:
            self.mlp1 = MLP(width, mlp1_units, "relu", mlp1_dropout, batch_norm)
            self.mlp2 = MLP(width, mlp2_units, "relu", mlp2_dropout, batch_norm)
            self.fusion = BilinearFusion(self.mlp1.out_dim, self.mlp2.out_dim, num_heads)
        if self.use_fs:
            self.gate1 = FeatureGate(features, fs1_context, embedding_dim, width, fs_hidden_units, ids_pooling)
            self.gate2 = FeatureGate(features, fs2_context, embedding_dim, width, fs_hidden_units, ids_pooling)
        self.l2_embedding = l2_embedding
        for module in self.modules():   # FuxiCTR: Xavier-normal Linear weights, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def field_embeddings(self, batch: Batch) -> Tensor:
        """e = [user, e(target), pooled e(history), profile..., context...] → [B, F·D]
        (core-only: [user, item, category, history item, history category], 5·D)."""
        emb = embed_batch(self.embedding, batch, self.item_side)
        if self.attention is None:
            history = emb.pooled("mean")
        elif emb.offsets is None:
            history = self.attention(emb.target, emb.history, lengths=emb.lengths)
        else:
            history = self.attention(emb.target, emb.history, offsets=emb.offsets)
        parts = [self.user(batch.user), emb.target, history]
        if self.fields is not None:
            parts += embed_fields(self.fields, batch, self.features, self.field_names)
        return torch.cat(parts, dim=-1)

    def forward(self, batch: Batch) -> RankingOutput:
        e = self.field_embeddings(batch)
        if self.dual_mlp:
            return RankingOutput(logit=(self.mlp1(e) + self.mlp2(e)).squeeze(-1))
        h1 = self.gate1(batch, self.item_side) * e if self.use_fs else e
        h2 = self.gate2(batch, self.item_side) * e if self.use_fs else e
        return RankingOutput(logit=self.fusion(self.mlp1(h1), self.mlp2(h2)))

    def regularization(self, batch: Batch) -> Tensor:
        if self.l2_embedding <= 0:
            return self.user.weight.new_zeros(())
        # FuxiCTR adds (λ/2)·||θ||² of every embedding table each batch
        tables = self.embedding.penalty("full") + self.user.weight[1:].pow(2).sum()
        if self.fields is not None:
            tables = tables + self.fields.penalty()
        if self.use_fs:
            for gate in (self.gate1, self.gate2):
                if gate.tables is not None:
                    tables = tables + gate.tables.penalty()
        return 0.5 * self.l2_embedding * tables
