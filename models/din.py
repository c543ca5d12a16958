"""DIN: Deep Interest Network.

Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li, Gai. "Deep Interest Network for
Click-Through Rate Prediction." KDD 2018 (arXiv:1706.06978). Official code:
github.com/zhougr1993/DeepInterestNetwork; FuxiCTR model_zoo/DIN for the switches.

What it computes (paper, Fig. 2 and §4.3):
    e(i)  = [E_item(i) ‖ E_cate(c(i))]                    target v_t [B, D], history H [B, L, D]
    a_j   = MLP_att([v_t, h_j, v_t − h_j, v_t ⊙ h_j])     local activation unit, [B, L]
    v_U   = Σ_j a_j h_j                                    no softmax (paper), padding masked
    logit = MLP([v_U, v_t]) → 1                            200 → 80 with PReLU / Dice

Defaults follow the paper: item and category embeddings of 64 each (official code),
attention MLP one hidden layer of 36 units, PReLU (``activation="dice"`` gives
"DIN with Dice"), main MLP 200 → 80, unnormalised attention, and DIN's mini-batch-aware
L2 on the embedding rows of each batch (``l2_embedding``; 0 disables it).

Deliberate departures (each a switch where the sources differ):
    * Output: one logit and a sigmoid instead of 2 units and a softmax (equivalent).
    * Attention normalisation: the paper uses raw scores; the official code (and DIEN's)
      applies a softmax. ``use_softmax`` selects it; the official code's additional
      1/sqrt(D) scaling and the per-item bias b_i are not reproduced.
    * Attention MLP: official code uses 80 → 40 with sigmoid; set ``attention_units=[80, 40]``
      and ``attention_activation="sigmoid"`` for that form.
    * The official code feeds [u, v_t, u ⊙ v_t] with BatchNorm to its main MLP;
      ``interaction="concat_product"`` adds the product term; BatchNorm is off by default
      because the authors' README reports that its misuse inflated the published numbers.
    * Side fields (the open feature contract; none in the Amazon / Taobao setups we
      reproduce): item side fields (attributes, genres, numbers, frozen content vectors)
      extend the behaviour embedding, e(i) = [item ‖ category ‖ side fields of i], for the
      target and every history behaviour alike (looked up by item id in the model's side
      table); user-profile and context fields are embedded (``field_dim`` wide) and
      concatenated to the main MLP's input, [v_U, v_t, profile..., context...], as the
      paper's Fig. 2 shows. A core-only spec gives exactly the first-phase model. The user
      id embedding exists in the official code but is never used, likewise here. The MBA /
      batch L2 covers the item and category tables; "full" covers every table.
    * The first attention layer is evaluated as q(Wa+Wc) + k(Wb−Wc) + (q⊙k)Wd (identical
      math, no [B, L, 4D] tensor), through kernels.din_attention.
    * Dice statistics are taken over valid (non-padding) behaviours only.
    * Linear layers (activation unit and main MLP) start Xavier-normal with zero biases
      (``linear_init="xavier_normal"``, FuxiCTR's initialiser; the official TensorFlow code's
      ``tf.layers.dense`` default is Glorot-uniform, same variance); ``"torch"`` keeps PyTorch's
      Kaiming-uniform default. PReLU slopes start at 0.1 (``prelu_init``), the official code's
      and FuxiCTR's value (PyTorch's default is 0.25). On Amazon Beauty these two choices were
      found to be what separated our 1-epoch AUC from FuxiCTR's (bench/peers/findings.md).
    * Embedding tables start from N(0, 1e-4²) as in FuxiCTR (``embedding_init_std``); the
      official TensorFlow code uses TF's default initialiser.
    * MBA L2 is off by default (``l2_embedding=0``): the paper gives no λ for the public
      datasets. n_j comes from ``set_id_frequencies`` (the spine passes the training
      vocabulary counts); without counts n_j = 1 (see ``BehaviorEmbedding``).
"""

from __future__ import annotations

from typing import List, Mapping, Optional

import torch
from torch import Tensor, nn

from recsys.contract import Batch

from .base import FeatureSpec, RankingModel, RankingOutput, check_candidates
from .registry import register
from .inputs import embed_batch, embed_fields, profile_embedding, profile_l2, user_and_context_fields
from .layers.attention import ActivationUnitAttention
from .layers.embedding import BehaviorEmbedding
from .layers.mlp import MLP


@register
class DIN(RankingModel):
    """Deep Interest Network (see module docstring).

    Args:
        features: the fields of the run (sizes from the data); side fields are used as the
            module docstring says.
        item_dim, category_dim: embedding widths (D = item_dim + category_dim + side widths).
        attention_units: hidden widths of the activation unit's MLP.
        attention_activation: "prelu" | "dice" | "sigmoid" | "relu".
        use_softmax: softmax-normalised attention (official code) instead of raw weights (paper).
        mlp_units: hidden widths of the main MLP.
        mlp_activation: "prelu" | "dice" | "relu" | ...
        dropout, batch_norm: in the main MLP.
        interaction: "concat" ([v_U, v_t], paper) or "concat_product" ([v_U, v_t, v_U ⊙ v_t]).
        l2_embedding: weight of the embedding L2 penalty; l2_mode "mba" | "batch" | "full".
        embedding_init_std: std of the normal init of the embedding tables.
        attention_backend: "auto" | "torch" | "triton".
        linear_init: "xavier_normal" (default) | "torch" (PyTorch's default Linear init).
        prelu_init: initial PReLU slope (0.1, official code and FuxiCTR).
        field_dim: width of each side field (item, profile, context); None = category_dim.
        ids_pooling: "mean" | "sum" over the ids of a multi-valued field.
    """

    def __init__(self, features: FeatureSpec, *, item_dim: int = 64, category_dim: int = 64,
                 attention_units: List[int] = [36], attention_activation: str = "prelu",
                 use_softmax: bool = False, mlp_units: List[int] = [200, 80], mlp_activation: str = "prelu",
                 dropout: float = 0.0, batch_norm: bool = False, interaction: str = "concat",
                 l2_embedding: float = 0.0, l2_mode: str = "mba", embedding_init_std: float = 1e-4,
                 attention_backend: str = "auto", linear_init: str = "xavier_normal",
                 prelu_init: float = 0.1, field_dim: Optional[int] = None, ids_pooling: str = "mean") -> None:
        super().__init__(features)
        if interaction not in ("concat", "concat_product"):
            raise ValueError(f"interaction must be 'concat' or 'concat_product', got {interaction!r}")
        self.embedding = BehaviorEmbedding(features, item_dim, category_dim, embedding_init_std,
                                           field_dim=field_dim, pooling=ids_pooling)
        dim = self.embedding.dim
        self.attention = ActivationUnitAttention(dim, attention_units, attention_activation, use_softmax,
                                                 attention_backend)
        self.interaction = interaction
        self.field_names = user_and_context_fields(features)
        self.fields = profile_embedding(features, self.field_names, self.embedding,
                                         category_dim if field_dim is None else field_dim, embedding_init_std,
                                         ids_pooling)
        in_dim = dim * (3 if interaction == "concat_product" else 2)
        in_dim += sum(self.fields.width(name) for name in self.field_names) if self.fields is not None else 0
        self.mlp = MLP(in_dim, mlp_units, mlp_activation, dropout, batch_norm, output_dim=1)
        self.l2_embedding, self.l2_mode = l2_embedding, l2_mode
        self._init_dense(linear_init, prelu_init)

    def _init_dense(self, linear_init: str, prelu_init: float) -> None:
        """Xavier-normal Linear weights with zero biases (or PyTorch's default), PReLU slopes."""
        if linear_init not in ("xavier_normal", "torch"):
            raise ValueError(f"linear_init must be 'xavier_normal' or 'torch', got {linear_init!r}")
        for module in (self.attention, self.mlp):
            for layer in module.modules():
                if isinstance(layer, nn.Linear) and linear_init == "xavier_normal":
                    nn.init.xavier_normal_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)
                elif isinstance(layer, nn.PReLU):
                    nn.init.constant_(layer.weight, prelu_init)

    def user_interest(self, batch: Batch) -> "tuple[Tensor, Tensor]":
        """(v_U [B, D], v_t [B, D])."""
        emb = embed_batch(self.embedding, batch, self.item_side)
        if emb.offsets is None:
            pooled = self.attention(emb.target, emb.history, lengths=emb.lengths)
        else:
            pooled = self.attention(emb.target, emb.history, offsets=emb.offsets)
        return pooled, emb.target

    def forward(self, batch: Batch) -> RankingOutput:
        interest, target = self.user_interest(batch)
        parts = [interest, target] + ([interest * target] if self.interaction == "concat_product" else [])
        if self.fields is not None:
            parts += embed_fields(self.fields, batch, self.features, self.field_names)
        return RankingOutput(logit=self.mlp(torch.cat(parts, dim=-1)).squeeze(-1))

    def score_candidates(self, batch: Batch, candidates: Mapping[str, Tensor], max_rows: int = 16384) -> Tensor:
        """Logits [B, M] of M candidates per user, equal to ``forward`` on each (user,
        candidate) row. In eval mode on padded batches the history is embedded once per
        user and the activation unit runs over all M candidates in one GEMM
        (``kernels.din_attention.din_attention_candidates``); in training mode (Dice batch
        statistics, dropout) and for jagged batches it is the base class's per-row path."""
        items = check_candidates(batch, candidates)
        if self.training or batch.offsets is not None or items.numel() == 0:
            return super().score_candidates(batch, candidates, max_rows)
        users, per_user = items.shape
        fields = (embed_fields(self.fields, batch, self.features, self.field_names)
                  if self.fields is not None else [])                                           # [B, W_f] each
        step = max(1, max_rows // per_user)          # users per chunk: at most max_rows (user, candidate) rows
        out = []
        for start in range(0, users, step):
            rows = slice(start, min(users, start + step))
            n = rows.stop - rows.start
            history = self.embedding(batch.hist_item[rows], batch.hist_category[rows], self.item_side)  # [n, L, D]
            target = self.embedding(items[rows], candidates["category"][rows], self.item_side)          # [n, M, D]
            interest = self.attention.pool_candidates(target, history, batch.lengths[rows])           # [n, M, D]
            parts = [interest, target] + ([interest * target] if self.interaction == "concat_product" else [])
            parts += [f[rows].unsqueeze(1).expand(n, per_user, f.shape[-1]) for f in fields]
            out.append(self.mlp(torch.cat(parts, dim=-1).reshape(n * per_user, -1)).reshape(n, per_user))
        return torch.cat(out)

    def regularization(self, batch: Batch) -> Tensor:
        return profile_l2(self.embedding, self.fields, batch, self.l2_embedding, self.l2_mode)

    def set_id_frequencies(self, item_counts: Tensor, category_counts: Tensor) -> None:
        self.embedding.set_frequencies(item_counts, category_counts)

