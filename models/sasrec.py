"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), as the
authors' TensorFlow code (kang205/SASRec ``model.py``, ``modules.py``).

::

    x_j  = E[item_j] · sqrt(D) + P[pos_j]                 [B, L, D]  (dropout, padded rows zero)
    per block (num_blocks):
        q    = LN(x)
        x    = q + MHA(q, x, x; causal, padded keys masked; dropout on the attention weights)
        q    = LN(x)
        x    = q + Conv1×1(Dropout(ReLU(Conv1×1(q))))  (dropout after each conv)
        x    = x · mask
    s_j  = LN(x_j)                                        one user vector per position
    score(j, i) = <s_j, E[i]>                             the item table is the output table

``user_interests`` returns K = 1 interest (the state at the last history position) and, as
``RetrievalOutput.sequence``, every position's state: with ``retrieval.positions: all``
each position j is trained to predict the behaviour after it. The paper's objective is
``retrieval.loss: bce`` with ``num_negatives: 1`` uniform negative per position outside
the user's sequence; the eSASRec benchmark's stronger variant is ``loss: sampled_softmax``
over shared negatives (``configs/sasrec_amazon_beauty.yaml`` documents both).

Positions are counted as in the code's left-padded window: the most recent behaviour
always has position L − 1 (L = ``features.max_length``), the one before L − 2, ... Our
batches are right-padded; the positions are computed from the lengths, so the model sees
exactly what the code does.

Defaults are the code's: D = 50, 2 blocks, 1 head, dropout 0.2 (the paper uses 0.5 on the
sparse Amazon sets; the Beauty config does), LayerNorm ε = 1e-8, Xavier-initialised tables.

Deliberate departures:

* Padded keys are masked out of the attention for every query (the code masks keys whose
  embedding sums to zero, which is the same set unless an embedding sums to exactly 0),
  so the output does not depend on what is stored in padded positions.
* Q/K/V are ``Linear`` maps with bias and no output projection, as ``modules.py``
  (pmixer's PyTorch port uses ``nn.MultiheadAttention``, which adds one).
* Training examples: with the ``loo`` data every training prefix is a sample, and with
  ``positions: all`` each prefix trains all of its positions. This is the training-set
  augmentation of the CoSeRec / ICLRec code whose SASRec rows we compare against (their
  ``RecWithContrastiveLearningDataset`` adds ``input_ids[:i + 1]`` for every i); Kang's
  code trains each user's one sequence per epoch. ``positions: last`` trains every
  (prefix, next item) pair exactly once, the set of terms of the per-user objective.
* BCE negatives avoid the items of the sample's own history and target (Kang's sampler
  avoids the user's whole training sequence, which a prefix sample does not carry).
* Adam's β₂ is ``optimizer.beta2`` (0.999 by default; the code's 0.98 is a config
  setting); the code's optional embedding L2 (``l2_emb``, 0 by default) is not offered.
* Item side fields may be summed into the item vector (``item_fields``; default none).

Two switches take choices of RecTools 0.13's SASRec (the library version behind the eSASRec
benchmark), both off by default because Kang's code has neither (measured on Beauty: no gain,
docs/results.md):

* ``scale_embeddings: false`` drops the ``· sqrt(D)`` of the history embeddings (RecTools
  adds the positional table to the raw item vectors: ``LearnableInversePositionalEncoding``).
* ``item_dropout: p`` zeroes each coordinate of the item table with probability p at every
  training step, one mask per step for every lookup of the step (the history and the scored
  positives and negatives), as RecTools 0.13-0.15 does (``IdEmbeddingsItemNet`` applies
  dropout to ``get_all_embeddings()``, the one table both sides read; read at 6ffd25b,
  0.13.0, the version the benchmark pins; removed after 0.15, at 2859e59). The mask is drawn over the whole
  table ([N, D], N·D floats a step: 1 GB at 1M items and D = 256) when ``user_interests``
  runs in training mode, which the training step does first; evaluation never sees it.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from recsys.contract import Batch

from .base import FeatureSpec, RetrievalModel, RetrievalOutput
from .layers.item_tower import ItemTower
from .registry import register

LAYER_NORM_EPS = 1e-8   # modules.normalize(epsilon=1e-8)


class CausalSelfAttention(nn.Module):
    """Kang's ``multihead_attention``: queries [B, L, D], keys [B, L, D], key mask [B, L]
    → [B, L, D] (no residual; causal: query j sees keys <= j)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding_dim ({dim}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: Tensor, keys: Tensor, key_mask: Tensor) -> Tensor:
        b, length, d = queries.shape
        h = self.heads

        def split(x: Tensor) -> Tensor:
            return x.reshape(b, length, h, d // h).transpose(1, 2)                  # [B, h, L, d/h]

        q, k, v = split(self.q(queries)), split(self.k(keys)), split(self.v(keys))
        scores = q @ k.transpose(-1, -2) / (d // h) ** 0.5                           # [B, h, L, L]
        causal = torch.ones(length, length, dtype=torch.bool, device=queries.device).tril()
        allowed = causal[None, None] & key_mask[:, None, None, :]
        scores = scores.masked_fill(~allowed, -2.0 ** 32 + 1)
        # a query without any allowed key (a padded position) gets zero weights
        weights = torch.softmax(scores, dim=-1) * allowed.any(-1, keepdim=True).to(scores.dtype)
        out = self.dropout(weights) @ v                                              # [B, h, L, d/h]
        return out.transpose(1, 2).reshape(b, length, d)


class PointWiseFeedForward(nn.Module):
    """Kang's ``feedforward``: two 1×1 convolutions (ReLU between), dropout after each, the
    input added back."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.inner, self.outer = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.dropout(self.outer(self.dropout(torch.relu(self.inner(x)))))


@register
class SASRec(RetrievalModel):
    """Causal self-attention over the history; one user vector per position (see module docstring).

    Args:
        features: the run's feature spec (``max_length`` = L, the positional table's rows).
        embedding_dim: D (``hidden_units``, 50 in the code).
        num_blocks: attention blocks (2).
        num_heads: heads per block (1).
        dropout: ``dropout_rate`` (0.2; the paper: 0.5 on Amazon Beauty / Games).
        item_fields: item side fields summed into the item vectors (default none).
        item_init: init of the item table (``xavier_normal``).
        scale_embeddings: multiply the history's item vectors by sqrt(D) (Kang's code; True).
        item_dropout: per-step dropout of the item table shared by every lookup (RecTools
            0.13-0.15; 0 = off, Kang's code).
    """

    def __init__(self, features: FeatureSpec, *, embedding_dim: int = 50, num_blocks: int = 2, num_heads: int = 1,
                 dropout: float = 0.2, item_fields: Optional[List[str]] = None,
                 item_init: str = "xavier_normal", scale_embeddings: bool = True, item_dropout: float = 0.0) -> None:
        super().__init__(features)
        if num_blocks < 1 or embedding_dim < 1:
            raise ValueError("num_blocks and embedding_dim must be >= 1")
        for name, value in (("dropout", dropout), ("item_dropout", item_dropout)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.dim = embedding_dim
        self.scale = embedding_dim ** 0.5 if scale_embeddings else 1.0
        self.item_dropout = item_dropout
        self._step_item_keep: Optional[Tensor] = None     # [N, D] mask / (1 − p) of the current training step
        self.items = ItemTower(features, embedding_dim, item_fields or (), init=item_init)
        self.position = nn.Embedding(features.max_length, embedding_dim)
        nn.init.xavier_normal_(self.position.weight)
        self.embedding_dropout = nn.Dropout(dropout)
        self.attention_norms = nn.ModuleList(nn.LayerNorm(embedding_dim, eps=LAYER_NORM_EPS) for _ in range(num_blocks))
        self.attentions = nn.ModuleList(CausalSelfAttention(embedding_dim, num_heads, dropout)
                                        for _ in range(num_blocks))
        self.forward_norms = nn.ModuleList(nn.LayerNorm(embedding_dim, eps=LAYER_NORM_EPS) for _ in range(num_blocks))
        self.feed_forwards = nn.ModuleList(PointWiseFeedForward(embedding_dim, dropout) for _ in range(num_blocks))
        self.last_norm = nn.LayerNorm(embedding_dim, eps=LAYER_NORM_EPS)

    def positions(self, lengths: Tensor, width: int) -> Tensor:
        """[B, L'] positional ids: the last behaviour of a row is L − 1, as in a left-padded window."""
        steps = torch.arange(width, device=lengths.device)
        shift = self.features.max_length - lengths.clamp(max=self.features.max_length)
        return (steps[None, :] + shift[:, None]).clamp(0, self.features.max_length - 1)

    def sequence(self, batch: Batch) -> "tuple[Tensor, Tensor]":
        """(states [B, L', D] with padded rows zero, lengths [B]); L' = the batch's padded width."""
        padded = batch.to_padded()
        mask = padded.history_mask()                                                 # [B, L']
        keep = mask.unsqueeze(-1).to(self.items.weight.dtype)
        x = self.item_embeddings(padded.hist_item) * self.scale
        x = x + self.position(self.positions(padded.lengths, mask.shape[1]))
        x = self.embedding_dropout(x) * keep
        for norm_a, attention, norm_f, feed_forward in zip(self.attention_norms, self.attentions, self.forward_norms,
                                                           self.feed_forwards):
            q = norm_a(x)
            x = q + attention(q, x, mask)
            x = feed_forward(norm_f(x)) * keep
        return self.last_norm(x) * keep, padded.lengths

    def user_interests(self, batch: Batch) -> RetrievalOutput:
        """interests [B, 1, D] (the last position's state; zero for an empty history) and
        ``sequence`` [B, L', D] (every position's state)."""
        if self.training and self.item_dropout > 0:
            self._draw_item_mask()
        states, lengths = self.sequence(batch)
        last = (lengths - 1).clamp_min(0)
        user = states[torch.arange(states.shape[0], device=states.device), last]      # [B, D]
        user = user * (lengths > 0).unsqueeze(-1).to(user.dtype)
        return RetrievalOutput(user.unsqueeze(1), sequence=states)

    def _draw_item_mask(self) -> None:
        """The training step's item-table mask [N, D]: keep with probability 1 − p, scaled by 1 / (1 − p)."""
        keep = 1.0 - self.item_dropout
        self._step_item_keep = torch.bernoulli(torch.full_like(self.items.weight, keep)) / keep

    def item_embeddings(self, items: Tensor) -> Tensor:
        """items [...] → [..., D]: the input item table (Kang scores with ``item_emb_table``);
        in training with ``item_dropout``, through the step's mask."""
        vectors = self.items(items, self.item_side)
        if not (self.training and self.item_dropout > 0):
            return vectors
        if self._step_item_keep is None:       # a lookup before the first user_interests: draw a mask
            self._draw_item_mask()
        return vectors * self._step_item_keep[items]
