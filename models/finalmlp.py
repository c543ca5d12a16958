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

Fields here: user id, target item, target category, and the behaviour history (item and
category), F = 5. Defaults are the paper's best MovielensLatest_x1 setting (BARS): D = 10,
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
    * Gate context can name only the id fields (user, item, category), each looked up in a
      gate-specific table as in FuxiCTR; the history cannot be gate context.
    * One logit + sigmoid, as in the paper.
"""

from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor, nn

from recsys.contract import Batch

from .base import FeatureSpec, RankingModel, RankingOutput
from .registry import register
from .inputs import embed_batch
from .layers.attention import ActivationUnitAttention
from .layers.embedding import BehaviorEmbedding
from .layers.mlp import MLP

CONTEXT_FIELDS = ("user", "item", "category")


class FeatureGate(nn.Module):
    """g = 2σ(MLP(context)) ∈ (0, 2)^{F·D}, element-wise; starts at exactly 1 for a learned
    global context (zero vector, zero output bias)."""

    def __init__(self, features: FeatureSpec, context: List[str], dim: int, out_dim: int,
                 hidden_units: List[int]) -> None:
        super().__init__()
        unknown = sorted(set(context) - set(CONTEXT_FIELDS))
        if unknown:
            raise ValueError(f"gate context fields {unknown} unknown; choose from {CONTEXT_FIELDS}")
        self.context = list(context)
        sizes = {"user": features.num_users, "item": features.num_items, "category": features.num_categories}
        self.tables = nn.ModuleDict({name: nn.Embedding(sizes[name], dim, padding_idx=0) for name in self.context})
        for table in self.tables.values():
            nn.init.normal_(table.weight, std=1e-4)
        self.global_context = None if self.context else nn.Parameter(torch.zeros(dim))
        in_dim = dim * max(len(self.context), 1)
        self.mlp = MLP(in_dim, hidden_units, "relu", output_dim=out_dim)

    def forward(self, batch: Batch) -> Tensor:
        if self.global_context is not None:
            context = self.global_context.expand(batch.size, -1)
        else:
            ids = {"user": batch.user, "item": batch.target_item, "category": batch.target_category}
            context = torch.cat([self.tables[name](ids[name]) for name in self.context], dim=-1)
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
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 10, mlp1_units: List[int] = [400],
                 mlp1_dropout: float = 0.4, mlp2_units: List[int] = [800], mlp2_dropout: float = 0.2,
                 batch_norm: bool = True, use_fs: bool = True, fs_hidden_units: List[int] = [800],
                 fs1_context: List[str] = [], fs2_context: List[str] = [], num_heads: int = 10,
                 dual_mlp: bool = False, sequence: str = "mean", l2_embedding: float = 0.01,
                 attention_units: List[int] = [64], attention_activation: str = "dice",
                 attention_softmax: bool = False, attention_backend: str = "auto") -> None:
        super().__init__(features)
        if sequence not in ("mean", "attention"):
            raise ValueError(f"sequence must be 'mean' or 'attention', got {sequence!r}")
        self.embedding = BehaviorEmbedding(features.num_items, features.num_categories, embedding_dim,
                                           embedding_dim)
        self.user = nn.Embedding(features.num_users, embedding_dim, padding_idx=0)
        nn.init.normal_(self.user.weight, std=1e-4)
        self.sequence = sequence
        self.attention = (ActivationUnitAttention(2 * embedding_dim, attention_units, attention_activation,
                                                  attention_softmax, attention_backend)
                          if sequence == "attention" else None)
        width = 5 * embedding_dim
        self.dual_mlp, self.use_fs = dual_mlp, use_fs and not dual_mlp
        if dual_mlp:
            self.mlp1 = MLP(width, mlp1_units, "relu", mlp1_dropout, batch_norm, output_dim=1)
            self.mlp2 = MLP(width, mlp2_units, "relu", mlp2_dropout, batch_norm, output_dim=1)
        else:
            self.mlp1 = MLP(width, mlp1_units, "relu", mlp1_dropout, batch_norm)
            self.mlp2 = MLP(width, mlp2_units, "relu", mlp2_dropout, batch_norm)
            self.fusion = BilinearFusion(self.mlp1.out_dim, self.mlp2.out_dim, num_heads)
        if self.use_fs:
            self.gate1 = FeatureGate(features, fs1_context, embedding_dim, width, fs_hidden_units)
            self.gate2 = FeatureGate(features, fs2_context, embedding_dim, width, fs_hidden_units)
        self.l2_embedding = l2_embedding
        for module in self.modules():   # FuxiCTR: Xavier-normal Linear weights, zero biases
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def field_embeddings(self, batch: Batch) -> Tensor:
        """e = [user, item, category, history item, history category] → [B, 5·D]."""
        emb = embed_batch(self.embedding, batch)
        if self.attention is None:
            history = emb.pooled_mean()
        elif emb.offsets is None:
            history = self.attention(emb.target, emb.history, lengths=emb.lengths)
        else:
            history = self.attention(emb.target, emb.history, offsets=emb.offsets)
        return torch.cat([self.user(batch.user), emb.target, history], dim=-1)

    def forward(self, batch: Batch) -> RankingOutput:
        e = self.field_embeddings(batch)
        if self.dual_mlp:
            return RankingOutput(logit=(self.mlp1(e) + self.mlp2(e)).squeeze(-1))
        h1 = self.gate1(batch) * e if self.use_fs else e
        h2 = self.gate2(batch) * e if self.use_fs else e
        return RankingOutput(logit=self.fusion(self.mlp1(h1), self.mlp2(h2)))

    def regularization(self, batch: Batch) -> Tensor:
        if self.l2_embedding <= 0:
            return self.user.weight.new_zeros(())
        # FuxiCTR adds (λ/2)·||θ||² of every embedding table each batch
        tables = self.embedding.penalty("full") + self.user.weight[1:].pow(2).sum()
        if self.use_fs:
            for gate in (self.gate1, self.gate2):
                tables = tables + sum(t.weight[1:].pow(2).sum() for t in gate.tables.values())
        return 0.5 * self.l2_embedding * tables
