"""HCN: Hierarchical Multi-Interest Co-Network for coarse-grained ranking (a reconstruction).

Yuan, Xu, Chen, Zhuang, Chen, Li, Ge. "Hierarchical Multi-Interest Co-Network For
Coarse-Grained Ranking." arXiv:2210.10547, 2022. **No public code exists and only the
abstract is readable**: every equation below is ours, written from the design proposal of
../shared/design/models-b.md §2 and consistent with the abstract. Treat it as
"HCN-inspired", not as a replication; the paper's tables are not reproduced.

The parts and the abstract sentence behind each:

* Coarse ranking, two-tower form. "large-scale online recommendation services usually consist
  of three stages: candidate generation, coarse-grained ranking, and fine-grained ranking."
  A coarse ranker scores hundreds of candidates per user, so the user side depends only on
  the history and profile (never on the candidate) and a candidate costs one item-tower pass
  and K inner products (:meth:`HCN.score_candidates` computes the user side once per user).
* Hierarchical, iterative interest centres. "we design a hierarchical multi-interest
  extraction layer to update users' diverse interest centers iteratively."
* Redundancy penalty. "(1) The similarity of different vectors in existing methods is too
  high, with too much redundant information." → the cos² penalty ``aux_losses["redundancy"]``
  and, optionally, residual clustering.
* Co-Interest Network. "(2) Existing methods model the long-term and short-term behaviors
  together, ignoring the differences between them." and "we develop a Co-Interest Network to
  integrate users' long-term and short-term interests." → separate extractors for the long
  and the short sequence, co-attention between their centres, a gated fusion.

What it computes (B users, L history, D behaviour width, M candidates):
    e(i)   = [E_item(i) ‖ E_cate(c(i)) ‖ side fields of i]        (shared BehaviorEmbedding)
    long   H_l = e(history) [B, L, D]; short H_s = the ``short_length`` most recent valid
           behaviours [B, L_s, D] (one embedding, two extractors with their own weights)
    level r = 1..R with K_r centres (``centres_per_level``), inputs X¹ = H (masked), X^{r+1} = C^r:
           X̂ = S_r X (Linear D → D, no bias); C ← C⁰_r (learned [K_r, D])
           T times (``iterations``):
               a_nk = softmax_k(⟨x̂_n, c_k⟩ / τ)        (a_nk = 0 on padding)
               c_k ← LayerNorm_r(c_k + Σ_n a_nk x̂_n / Σ_n a_nk)
           residual=True: c_k is matched against, and moved within, the complement of the
           centres before it: ⟨x̂_n − P_{<k} x̂_n, c_k⟩ = ⟨x̂_n, c_k − P_{<k} c_k⟩ and
           c_k ← LN(c_k + (I − P_{<k}) m_k), P_{<k} = projection onto span(c_1..c_{k−1})
           (Gram–Schmidt in centre order); this is "subtract from each behaviour its projection
           onto the centres already extracted", without an [B, K, L, D] tensor.
    V      = the levels' centres stacked ([B, Σ_r K_r, D], ``output_levels="all"``) or the top
           level's ([B, K_R, D], "top"); V_l from H_l, V_s from H_s
    L_div  = Σ_{sequence, level} mean_b Σ_{k≠k'} cos²(c_k, c_k');  aux = β · L_div
    co-attention  V_s' = softmax(V_s V_lᵀ / √D) V_l,  V_l' = softmax(V_l V_sᵀ / √D) V_s
    gate   g = σ(MLP_g([p, mean_k V_s, mean_k V_l])) [B, 2D]   (p: profile/context fields)
    fusion "sum"   U = g ⊙ [V_s ‖ V_s'] + (1 − g) ⊙ [V_l ‖ V_l']      [B, K, 2D] (K_s = K_l)
           "stack" U = [g ⊙ [V_s ‖ V_s'] ; (1 − g) ⊙ [V_l ‖ V_l']]    [B, K_s + K_l, 2D]
    score  t_i = MLP_item(e(i)) [.., 2D];  s_k = ⟨U_k, t_i⟩
           readout "max": logit = max_k s_k + b_i + b;  "attention": Σ_k softmax_k(s)_k s_k + b_i + b
    loss   BCE + β · L_div (the task adds ``aux_losses`` with weight 1.0; β is ``redundancy_weight``)

Switches the proposal leaves open (each a constructor argument; defaults from §2(c):
D = 64 as item 32 + category 32, K₁ = 8, K₂ = 4, T = 3, τ = 1):
    centres_per_level    the number of levels R is its length, K_r its entries ([8, 4]); the
                         short sequence uses ``short_centres_per_level`` (None = the same)
    iterations           T, the centre updates per level (3)
    residual             residual clustering on/off (off)
    output_levels        "all" levels' centres (default) or only the "top" level's
    fusion               "sum" (the proposal's gated sum; needs as many short as long
                         interests) or "stack" (gated, stacked along the interest axis)
    readout              "max" (default) or softmax-"attention" pooled inner product
    temperature          τ of the soft assignment (1.0)
    redundancy_weight    β (1e-2; 0 disables the penalty)

Deliberate choices where the proposal is silent (ours, documented):
    * Learned initial centres C⁰ only (the proposal's alternative, K-means++ seeding on the
      history, is not implemented: it is stochastic per user and has no gradient).
    * More centres than behaviours (K_r > L, or an empty history) is allowed: every
      behaviour spreads weight 1 over the centres, so each centre moves to its weighted mean
      of the behaviours (with one behaviour, all centres move toward it); a centre with no
      weight at all (empty history) is LayerNorm applied T times to C⁰: a learned prior user. Padding
      never contributes (its weights are exactly zero).
    * ``short_length`` = 10: the proposal's "last 20–50" would equal the whole history for
      most users at our max_length 50; the long sequence is the whole history (it includes
      the short one, as "the last 1k actions" would).
    * The logit adds a per-item bias b_i (``item_bias``) and a global bias b; both are item
      side or constant, so the score stays two-tower.
    * The gate MLP takes the profile and context fields (if any) as p; the user id is not
      embedded (as in DIN).
    * Embedding tables start from N(0, 0.01²) (``embedding_init_std``); linear layers keep
      PyTorch's default initialisation; C⁰ starts from N(0, 1).

``forward(batch)`` gives the logit of the batch's own target; ``score_candidates`` gives
exactly the same logit for any candidate (tested), from one user-side pass per user.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from recsys.contract import Batch
from recsys.errors import ConfigError

from .base import FeatureSpec, RankingModel, RankingOutput, check_candidates
from .inputs import embed_fields, profile_embedding, user_and_context_fields
from .layers.embedding import BehaviorEmbedding
from .layers.mlp import MLP
from .registry import register

FUSIONS = ("sum", "stack")
READOUTS = ("max", "attention")
OUTPUT_LEVELS = ("all", "top")
_EPS = 1e-9


def _orthonormal(centres: Tensor) -> Tensor:
    """Gram–Schmidt in centre order: [B, K, D] → q [B, K, D], q_k ⟂ q_j for j < k, |q_k| = 1."""
    basis: List[Tensor] = []
    for k in range(centres.shape[1]):
        v = centres[:, k]
        for q in basis:
            v = v - (v * q).sum(-1, keepdim=True) * q
        basis.append(v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    return torch.stack(basis, dim=1)


def _without_earlier(x: Tensor, basis: Tensor) -> Tensor:
    """x_k minus its projection onto q_1..q_{k−1}: [B, K, D], basis [B, K, D] → [B, K, D]."""
    k = x.shape[1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=x.device).tril(-1)       # j < k
    coefficients = torch.einsum("bkd,bjd->bkj", x, basis) * earlier
    return x - torch.einsum("bkj,bjd->bkd", coefficients, basis)


def mutual_cos2(centres: Tensor) -> Tensor:
    """Σ_{k≠k'} cos²(c_k, c_k') per user: [B, K, D] → [B] (0 for K = 1)."""
    unit = centres / centres.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    gram = unit @ unit.transpose(1, 2)                                           # [B, K, K]
    off = ~torch.eye(centres.shape[1], dtype=torch.bool, device=centres.device)
    return (gram.pow(2) * off).sum(dim=(1, 2))


class InterestLevel(nn.Module):
    """One level of the hierarchy: [B, N, D] inputs (mask [B, N]) → K centres [B, K, D]
    after ``iterations`` soft-assignment updates (module docstring)."""

    def __init__(self, dim: int, centres: int, iterations: int, temperature: float, residual: bool) -> None:
        super().__init__()
        self.project = nn.Linear(dim, dim, bias=False)                             # S
        self.initial = nn.Parameter(torch.randn(centres, dim))                      # C⁰
        self.norm = nn.LayerNorm(dim)
        self.iterations, self.temperature, self.residual = iterations, temperature, residual

    def forward(self, inputs: Tensor, mask: Tensor, trace: Optional[List[Tensor]] = None) -> Tensor:
        """inputs [B, N, D], mask [B, N] bool → centres [B, K, D]; ``trace`` (a list) gets
        the centres after every iteration (for tests of convergence)."""
        x = self.project(inputs)
        weight = mask.unsqueeze(-1).to(x.dtype)                                    # [B, N, 1]
        centres = self.initial.unsqueeze(0).expand(x.shape[0], -1, -1)
        for _ in range(self.iterations):
            basis = _orthonormal(centres) if self.residual else None
            keys = _without_earlier(centres, basis) if self.residual else centres
            assign = torch.softmax(torch.einsum("bnd,bkd->bnk", x, keys) / self.temperature, dim=-1) * weight
            mean = torch.einsum("bnk,bnd->bkd", assign, x) / assign.sum(1).clamp_min(_EPS).unsqueeze(-1)
            if self.residual:
                mean = _without_earlier(mean, basis)
            centres = self.norm(centres + mean)
            if trace is not None:
                trace.append(centres)
        return centres


class HierarchicalInterests(nn.Module):
    """Levels r = 1..R: history [B, L, D] (mask) → the centres of every level, [B, K_r, D] each."""

    def __init__(self, dim: int, centres_per_level: Sequence[int], iterations: int, temperature: float,
                 residual: bool) -> None:
        super().__init__()
        self.levels = nn.ModuleList(InterestLevel(dim, k, iterations, temperature, residual)
                                    for k in centres_per_level)

    def forward(self, history: Tensor, mask: Tensor) -> List[Tensor]:
        out: List[Tensor] = []
        inputs = history
        for level in self.levels:
            inputs = level(inputs, mask)
            mask = torch.ones(inputs.shape[:2], dtype=torch.bool, device=inputs.device)
            out.append(inputs)
        return out


@dataclass
class UserSide:
    """interests U [B, K, W] (W = 2D) and the centres of every level of both sequences
    ({"long": [[B, K_r, D], ...], "short": [...]})."""

    interests: Tensor
    centres: Dict[str, List[Tensor]]


@register
class HCN(RankingModel):
    """Hierarchical Multi-Interest Co-Network, a reconstruction (see the module docstring).

    Args:
        features: the fields of the run; item side fields extend e(i), profile/context
            fields feed the fusion gate.
        item_dim, category_dim: embedding widths (D = item_dim + category_dim + side widths).
        centres_per_level: K_r per level (R = its length), long-term sequence.
        short_centres_per_level: the same for the short-term sequence (None = the same list).
        iterations: T centre updates per level.
        temperature: τ of the soft assignment.
        residual: residual clustering (match and move each centre in the complement of the
            centres before it).
        output_levels: "all" | "top".
        short_length: the short-term sequence is the last ``short_length`` behaviours.
        fusion: "sum" | "stack".
        readout: "max" | "attention".
        redundancy_weight: β of the cos² penalty (0 = off).
        gate_units, item_units: hidden widths of the gate MLP and the item-tower MLP (ReLU).
        item_bias: add a learned per-item bias to the logit.
        embedding_init_std: std of the normal init of the embedding tables.
        field_dim: width of each side field; None = category_dim.
        ids_pooling: "mean" | "sum" over the ids of a multi-valued field.

    Raises ``recsys.errors.ConfigError`` for an invalid switch value (naming it).
    """

    def __init__(self, features: FeatureSpec, *, item_dim: int = 32, category_dim: int = 32,
                 centres_per_level: Sequence[int] = (8, 4), short_centres_per_level: Optional[Sequence[int]] = None,
                 iterations: int = 3, temperature: float = 1.0, residual: bool = False, output_levels: str = "all",
                 short_length: int = 10, fusion: str = "sum", readout: str = "max",
                 redundancy_weight: float = 1e-2, gate_units: Sequence[int] = (64,),
                 item_units: Sequence[int] = (128,), item_bias: bool = True, embedding_init_std: float = 1e-2,
                 field_dim: Optional[int] = None, ids_pooling: str = "mean") -> None:
        super().__init__(features)
        long_centres = list(centres_per_level)
        short_centres = long_centres if short_centres_per_level is None else list(short_centres_per_level)
        self.embedding = BehaviorEmbedding(features, item_dim, category_dim, embedding_init_std,
                                           field_dim=field_dim, pooling=ids_pooling)
        dim = self.embedding.dim
        self._check(long_centres, short_centres, iterations, temperature, residual, output_levels, short_length,
                    fusion, readout, redundancy_weight, dim)
        self.dim = dim
        self.output_levels, self.short_length = output_levels, short_length
        self.fusion, self.readout, self.redundancy_weight = fusion, readout, redundancy_weight
        self.long = HierarchicalInterests(dim, long_centres, iterations, temperature, residual)
        self.short = HierarchicalInterests(dim, short_centres, iterations, temperature, residual)
        self.field_names = user_and_context_fields(features)
        self.fields = profile_embedding(features, self.field_names, self.embedding,
                                         category_dim if field_dim is None else field_dim, embedding_init_std,
                                         ids_pooling)
        profile_width = sum(self.fields.width(n) for n in self.field_names) if self.fields is not None else 0
        self.gate = MLP(profile_width + 2 * dim, list(gate_units), "relu", output_dim=2 * dim)
        self.item_tower = MLP(dim, list(item_units), "relu", output_dim=2 * dim)
        self.item_bias = nn.Embedding(features.num_items, 1, padding_idx=0) if item_bias else None
        if self.item_bias is not None:
            nn.init.zeros_(self.item_bias.weight)
        self.bias = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _check(long_centres: List[int], short_centres: List[int], iterations: int, temperature: float,
               residual: bool, output_levels: str, short_length: int, fusion: str, readout: str,
               redundancy_weight: float, dim: int) -> None:
        """Config-time errors, each naming the argument."""
        for name, value, allowed in (("fusion", fusion, FUSIONS), ("readout", readout, READOUTS),
                                     ("output_levels", output_levels, OUTPUT_LEVELS)):
            if value not in allowed:
                raise ConfigError(f"HCN: {name} must be one of {allowed}, got {value!r}")
        for name, levels in (("centres_per_level", long_centres), ("short_centres_per_level", short_centres)):
            if not levels or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in levels):
                raise ConfigError(f"HCN: {name} must be a non-empty list of integers >= 1, got {levels!r}")
            if residual and max(levels) > dim:
                raise ConfigError(f"HCN: residual clustering needs at most D={dim} centres per level "
                                  f"(the complement of D centres is empty), {name} is {levels}")
        if not isinstance(iterations, int) or iterations < 1:
            raise ConfigError(f"HCN: iterations must be an integer >= 1, got {iterations!r}")
        if not temperature > 0 or not math.isfinite(temperature):
            raise ConfigError(f"HCN: temperature must be a finite number > 0, got {temperature!r}")
        if not isinstance(short_length, int) or short_length < 1:
            raise ConfigError(f"HCN: short_length must be an integer >= 1, got {short_length!r}")
        if not redundancy_weight >= 0:
            raise ConfigError(f"HCN: redundancy_weight must be >= 0, got {redundancy_weight!r}")
        if fusion == "sum":
            count = (lambda levels: sum(levels) if output_levels == "all" else levels[-1])
            if count(long_centres) != count(short_centres):
                raise ConfigError(f"HCN: fusion='sum' adds the short- and long-term interests one to one, but they "
                                  f"have {count(short_centres)} and {count(long_centres)} (short_centres_per_level "
                                  f"{short_centres}, centres_per_level {long_centres}, output_levels "
                                  f"{output_levels!r}); make them equal or use fusion='stack'")

    # ------------------------------------------------------------------ user side
    def _short_term(self, history: Tensor, lengths: Tensor) -> "tuple[Tensor, Tensor]":
        """The ``short_length`` most recent valid behaviours: [B, L, D] → ([B, L_s, D], mask [B, L_s])."""
        offsets = torch.arange(self.short_length, device=history.device) - self.short_length
        index = lengths.unsqueeze(1) + offsets.unsqueeze(0)                        # [B, L_s], may be < 0
        mask = index >= 0
        if history.shape[1] == 0:                                                  # no positions at all
            return history.new_zeros(history.shape[0], self.short_length, history.shape[-1]), mask
        index = index.clamp_min(0)
        gathered = history.gather(1, index.unsqueeze(-1).expand(-1, -1, history.shape[-1]))
        return gathered, mask

    def user_side(self, batch: Batch) -> UserSide:
        """The candidate-independent part: U [B, K, 2D] from the history and profile only."""
        batch = batch.to_padded()
        history = self.embedding(batch.hist_item, batch.hist_category, self.item_side)   # [B, L, D]
        mask = batch.history_mask()
        short, short_mask = self._short_term(history, batch.lengths)
        centres = {"long": self.long(history, mask), "short": self.short(short, short_mask)}
        pick = (lambda levels: torch.cat(levels, dim=1)) if self.output_levels == "all" else (lambda levels: levels[-1])
        v_long, v_short = pick(centres["long"]), pick(centres["short"])
        scale = 1.0 / math.sqrt(self.dim)
        short_view = torch.softmax(v_short @ v_long.transpose(1, 2) * scale, dim=-1) @ v_long    # V_s'
        long_view = torch.softmax(v_long @ v_short.transpose(1, 2) * scale, dim=-1) @ v_short    # V_l'
        parts = embed_fields(self.fields, batch, self.features, self.field_names) if self.fields is not None else []
        gate = torch.sigmoid(self.gate(torch.cat(parts + [v_short.mean(1), v_long.mean(1)], dim=-1))).unsqueeze(1)
        short_part = gate * torch.cat([v_short, short_view], dim=-1)
        long_part = (1 - gate) * torch.cat([v_long, long_view], dim=-1)
        interests = short_part + long_part if self.fusion == "sum" else torch.cat([short_part, long_part], dim=1)
        return UserSide(interests=interests, centres=centres)

    def redundancy(self, centres: Mapping[str, List[Tensor]]) -> Tensor:
        """L_div = Σ_{sequence, level} mean_b Σ_{k≠k'} cos²(c_k, c_k') (a scalar)."""
        return torch.stack([mutual_cos2(level).mean() for levels in centres.values() for level in levels]).sum()

    # ------------------------------------------------------------------ item side and score
    def item_vectors(self, items: Tensor, categories: Tensor) -> Tensor:
        """t_i = MLP_item(e(i)): ids [...] → [..., 2D] (side fields through the item ids)."""
        return self.item_tower(self.embedding(items, categories, self.item_side))

    def score(self, interests: Tensor, items: Tensor, categories: Tensor) -> Tensor:
        """U [B, K, 2D] and candidate ids [B, M] → logits [B, M]."""
        scores = torch.einsum("bkw,bmw->bmk", interests, self.item_vectors(items, categories))     # [B, M, K]
        if self.readout == "max":
            logit = scores.max(dim=-1).values
        else:
            logit = (torch.softmax(scores, dim=-1) * scores).sum(-1)
        if self.item_bias is not None:
            logit = logit + self.item_bias(items).squeeze(-1)
        return logit + self.bias

    def forward(self, batch: Batch) -> RankingOutput:
        user = self.user_side(batch)
        logit = self.score(user.interests, batch.target_item.unsqueeze(1), batch.target_category.unsqueeze(1))
        aux = {"redundancy": self.redundancy_weight * self.redundancy(user.centres)} if self.redundancy_weight > 0 \
            else {}
        return RankingOutput(logit=logit.squeeze(1), aux_losses=aux)

    def score_candidates(self, batch: Batch, candidates: Mapping[str, Tensor], max_rows: int = 16384) -> Tensor:
        """Logits of M candidates per user, [B, M], equal to ``forward`` on each (user,
        candidate) row; the user side runs once per user, the candidates in chunks of at most
        ``max_rows`` (user, candidate) pairs."""
        items = check_candidates(batch, candidates)
        users, per_user = items.shape
        if users == 0 or per_user == 0:
            return items.new_zeros(items.shape, dtype=torch.float32)
        interests = self.user_side(batch).interests
        step = max(1, max_rows // per_user)
        categories = candidates["category"]
        return torch.cat([self.score(interests[start:start + step], items[start:start + step],
                                     categories[start:start + step]) for start in range(0, users, step)])
