"""DARE: Decoupled Attention and Representation Embeddings.

Feng, Yang, Liu, Zhang, Wang, Long. "Long-Sequence Recommendation Models Need Decoupled
Embeddings." ICLR 2025 (arXiv:2410.02604). Official code: github.com/thuml/DARE
(model/din_pytorch.py, attention_pytorch.py; scripts/taobao.sh for the defaults).

What it computes (paper §4, official code):
    ids per behaviour: item, category and a target-relative position p (target 0, most
    recent behaviour 1, the one before 2, ...).
    attention set A and representation set R, each [item ‖ category (‖ side fields) ‖ position]:
        q = A(target) [B, D_A],  K = A(history) [B, L, D_A]
        v_t = R(target) [B, D_R], V = R(history) [B, L, D_R]
    stage 1  s_j = ⟨q_sem, k_j,sem⟩/sqrt(D_A,sem) + ⟨q_pos, k_j,pos⟩/sqrt(d_A,pos)   [B, L]
             idx = top-k(s) (padding never selected; "hard" search keeps only behaviours
             whose category equals the target's)
    stage 2  w = softmax(s | idx),  h = Σ_{j∈idx} w_j V_j                          [B, D_R]
    predict  logit = MLP(BN([v_t, h, v_t ⊙ h]))   200 → 80, PReLU                   [B]
    aux      h_full = softmax(s) · V over the whole history; aux logit = MLP(BN([v_t, h_full,
             v_t ⊙ h_full])) 200, PReLU; its BCE is returned as ``aux_losses["aux"]``.
    loss     BCE + aux + l2 · Σ‖θ‖² over parameters whose name has neither "bias" nor
             "embedding" (``regularization``), as the official training script adds it.

Defaults follow scripts/taobao.sh: item/category/position widths 16 (D_R = 48), top-k 20,
aux loss on, L2 1e-6, every non-bias parameter drawn from N(0, 0.01) (BN scales and PReLU
slopes included, as the official init loop does). Stage 1 and 2 run through the
``kernels.topk_target_attention`` op (padded or jagged). The aux branch attends over the
whole history with the same scores s, so on the padded layout with soft search it reuses the
op's returned [B, L] scores (one score pass over [B, L, D_A] forward and backward instead of
two); for jagged input or hard search (whose scores cover only the category sub-history) it
runs ``kernels.attention_pooling``. Both ops take one scale, so the query's semantic and
position parts are pre-scaled by their own 1/sqrt(width) and the op's scale is 1.

Baselines of the paper, one ``variant`` argument each:
    "dare"        decoupled attention / representation tables (the method);
    "twin"        TWIN: one table set for both roles (attention widths must equal
                  representation widths);
    "twin_4e"     TWIN-4E: four sets (attention-target, attention-history,
                  representation-target, representation-history);
    "projection"  one table set; attention embeddings are a bias-free linear projection
                  of it per field (the paper's "TWIN w/ proj", DARE with a projection
                  instead of decoupled tables);
    "din_topk"    DARE's DIN baseline: one set, scores from DIN's activation unit
                  (36 PReLU → 1) divided by D, then the same top-k and softmax (the official
                  DIN run also turns positions off: ``use_position: false`` in its config).

Deliberate departures:
    * One logit + sigmoid/BCE instead of 2 softmax units with one-hot labels (equivalent).
    * Right-padded histories (project contract); the position id is counted from the
      row's own end (p = length − j), which equals the official id for full rows.
    * The position table has ``max_length + 1`` rows by default (official: 2000); a
      smaller ``position_vocab`` than the data needs is rejected at construction.
    * Padding is masked explicitly before top-k and in stage 2 (the official soft search
      would give a padded behaviour in the top-k its raw score; it never happens there
      because of the ≥ 210 filter, but our histories can be shorter than k).
    * k larger than a batch's longest row uses all behaviours of that batch (rows shorter
      than k are the normal case); k = 0 or k > FeatureSpec.max_length is a config error.
    * The aux branch is computed only in training (it is a training loss); the official
      code computes it in evaluation too but does not use it.
    * "din_topk" scores with DIN's activation-unit module on the padded layout, its first
      layer split as q(Wa+Wc) + k(Wb−Wc) + (q⊙k)Wd (same function as the explicit
      [q, k, q−k, q⊙k] input, no [B, L, 4D] tensor).
    * An empty history scores with the target alone (h = 0).
    * Side fields (our extension; the paper has none): item side fields of the run's spec
      join **both** decoupled embeddings, each set with its own tables, so
      A(i) = [item ‖ category ‖ side fields of i ‖ position] and likewise R(i) (widths
      ``attention_field_dim`` / ``field_dim``); the scores' semantic part then includes the
      side fields. User-profile and context fields are not used by DARE (its prediction
      head is [v_t, h, v_t ⊙ h]): configuring them is a ConfigError rather than an
      ignored field. A core-only spec is the first-phase model exactly.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.contract import Batch
from recsys.errors import ConfigError
from recsys.kernels.attention_pooling import attention_pooling
from recsys.kernels.topk_attention import PAD_SCORE, topk_target_attention

from .base import FeatureSpec, RankingModel, RankingOutput
from .registry import register
from .layers.attention import ActivationUnitAttention
from .layers.embedding import BehaviorEmbedding
from .layers.mlp import MLP

VARIANTS = ("dare", "twin", "twin_4e", "projection", "din_topk")
SEARCHES = ("soft", "hard")
FIELDS = ("item", "category", "position", "side")


class FieldProjection(nn.Module):
    """Bias-free per-field linear maps of a shared embedding ([..., D_R] → [..., D_A]), one
    per part of the source behaviour embedding (item, category, side fields, position)."""

    def __init__(self, source: BehaviorEmbedding, widths: List[int]) -> None:
        super().__init__()
        self.split = list(source.widths)
        self.maps = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(self.split, widths))
        self.position_dim = widths[-1] if source.position is not None else 0
        self.semantic_dim = sum(widths) - self.position_dim
        self.dim = sum(widths)

    def forward(self, shared: Tensor) -> Tensor:
        return torch.cat([m(x) for m, x in zip(self.maps, shared.split(self.split, dim=-1))], dim=-1)


def _category_subhistory(keys: Tensor, values: Tensor, batch: Batch) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Hard search: only the behaviours of the target's category, as a jagged sub-history.

    keys / values [B, L, D] (padded batch) or [N, D] (jagged) → (keys [M, D], values [M, D],
    lengths [B], offsets [B + 1], in_row [M]: each kept behaviour's position in its original
    row, so it keeps its target-relative position and the search's index maps back)."""
    if batch.is_jagged:
        row = torch.repeat_interleave(torch.arange(batch.size, device=batch.lengths.device), batch.lengths)
        keep = batch.hist_category == batch.target_category[row]                     # [N]
        position = torch.arange(keys.shape[0], device=keys.device) - batch.offsets[row]
    else:
        keep = batch.history_mask() & (batch.hist_category == batch.target_category.unsqueeze(1))   # [B, L]
        row, position = torch.nonzero(keep, as_tuple=True)
    kept_rows = row[keep] if batch.is_jagged else row
    in_row = position[keep] if batch.is_jagged else position
    lengths = torch.bincount(kept_rows, minlength=batch.size)
    offsets = torch.zeros(batch.size + 1, dtype=torch.int64, device=lengths.device)
    offsets[1:] = torch.cumsum(lengths, 0)
    return keys[keep], values[keep], lengths, offsets, in_row


def _prediction_head(in_dim: int, units: List[int]) -> nn.Sequential:
    """BN on the input, then Linear → PReLU per hidden layer, then one logit (official layout)."""
    return nn.Sequential(nn.BatchNorm1d(in_dim), MLP(in_dim, units, "prelu", output_dim=1))


@register
class DARE(RankingModel):
    """DARE and its baselines (see the module docstring).

    Args:
        features: vocabulary sizes and the history length L the data was built with.
        item_dim, category_dim, position_dim: representation widths (D_R = their sum).
        attention_item_dim, attention_category_dim, attention_position_dim: attention widths
            (D_A); None = the representation width. Search cost scales with D_A.
        top_k: behaviours kept by the search (1 <= top_k <= features.max_length).
        search: "soft" (top-k of all) or "hard" (only behaviours of the target's category).
        variant: "dare" | "twin" | "twin_4e" | "projection" | "din_topk".
        use_position: target-relative position embeddings (official ``use_time``).
        position_vocab: rows of the position table; None = max_length + 1.
        use_aux_loss: the auxiliary full-sequence head and its loss ("aux").
        mlp_units, aux_mlp_units: prediction and auxiliary head hidden widths.
        din_attention_units: activation-unit widths of the "din_topk" scorer.
        l2: weight of Σ‖θ‖² over non-embedding, non-bias parameters.
        init_std: std of the N(0, init_std) init of every non-bias parameter.
        attention_backend: "auto" | "torch" | "triton" for the kernels ops.
        field_dim, attention_field_dim: width of each item side field in the representation
            and attention sets (None: category_dim, and the representation width).
        ids_pooling: "mean" | "sum" over the ids of a multi-valued item side field.
    """

    def __init__(self, features: FeatureSpec, *, item_dim: int = 16, category_dim: int = 16, position_dim: int = 16,
                 attention_item_dim: Optional[int] = None, attention_category_dim: Optional[int] = None,
                 attention_position_dim: Optional[int] = None, top_k: int = 20, search: str = "soft",
                 variant: str = "dare", use_position: bool = True, position_vocab: Optional[int] = None,
                 use_aux_loss: bool = True, mlp_units: List[int] = [200, 80], aux_mlp_units: List[int] = [200],
                 din_attention_units: List[int] = [36], l2: float = 1e-6, init_std: float = 0.01,
                 attention_backend: str = "auto", field_dim: Optional[int] = None,
                 attention_field_dim: Optional[int] = None, ids_pooling: str = "mean") -> None:
        super().__init__(features)
        if variant not in VARIANTS:
            raise ValueError(f"DARE variant must be one of {VARIANTS}, got {variant!r}")
        unused = [f.name for f in features.of("user", side_only=True) + features.of("context")]
        if unused:
            raise ConfigError(f"DARE uses item side fields only; the run configures user/context field(s) {unused} "
                              "(drop them from the run's fields, or use DIN / FinalMLP)")
        if search not in SEARCHES:
            raise ValueError(f"DARE search must be one of {SEARCHES}, got {search!r}")
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"DARE top_k must be a positive integer, got {top_k!r}")
        if top_k > features.max_length:
            raise ValueError(f"DARE top_k={top_k} is larger than the history length L={features.max_length} "
                             "(FeatureSpec.max_length); choose top_k <= L")
        position_vocab = features.max_length + 1 if position_vocab is None else position_vocab
        if use_position and position_vocab < features.max_length + 1:
            raise ValueError(f"DARE position_vocab={position_vocab} cannot hold the positions 0..{features.max_length} "
                             f"of histories of length L={features.max_length} (FeatureSpec.max_length); "
                             f"use position_vocab >= {features.max_length + 1}")
        field_dim = category_dim if field_dim is None else field_dim
        rep = {"item": item_dim, "category": category_dim, "position": position_dim, "side": field_dim}
        given = {"item": attention_item_dim, "category": attention_category_dim, "position": attention_position_dim,
                 "side": attention_field_dim}
        att = {name: rep[name] if given[name] is None else given[name] for name in FIELDS}
        if any(v < 1 for v in list(rep.values()) + list(att.values())):
            raise ValueError(f"DARE embedding widths must be >= 1, got representation {rep}, attention {att}")
        if variant in ("twin", "din_topk") and att != rep:
            raise ValueError(f"variant {variant!r} shares one table set, so attention widths {att} must equal "
                             f"representation widths {rep}; use variant 'dare' or 'projection' for a narrower D_A")

        self.variant, self.search, self.top_k = variant, search, top_k
        self.use_position, self.use_aux_loss = use_position, use_aux_loss
        self.l2, self.attention_backend = l2, attention_backend
        self.position_vocab = position_vocab

        def tables(dims: Dict[str, int]) -> BehaviorEmbedding:
            # init_std=None: _init_parameters draws every weight from N(0, init_std) (official)
            return BehaviorEmbedding(features, dims["item"], dims["category"], None, field_dim=dims["side"],
                                     pooling=ids_pooling, position_vocab=position_vocab if use_position else 0,
                                     position_dim=dims["position"], frequencies=False)

        # Parameter names carry "embedding" so the L2 term skips them, as in the official code.
        self.embeddings = nn.ModuleDict()
        self.embeddings["representation"] = tables(rep)
        if variant == "dare":
            self.embeddings["attention"] = tables(att)
        elif variant == "twin_4e":
            self.embeddings["attention"] = tables(att)
            self.embeddings["attention_target"] = tables(att)
            self.embeddings["representation_target"] = tables(rep)
        source = self.embeddings["representation"]
        att_widths = [att["item"], att["category"]] + [att["side"]] * len(source.side_fields) + \
                     ([att["position"]] if source.position is not None else [])
        self.attention_projection = FieldProjection(source, att_widths) if variant == "projection" else None
        rep_dim = source.dim
        # DIN's activation unit (Linear → PReLU per hidden layer → 1) as DIN's module; its raw
        # scores through the kernels' split first layer (no [B, L, 4D] tensor)
        self.din_scorer = ActivationUnitAttention(rep_dim, din_attention_units, "prelu", backend="torch") \
            if variant == "din_topk" else None
        self.head = _prediction_head(3 * rep_dim, list(mlp_units))
        self.aux_head = _prediction_head(3 * rep_dim, list(aux_mlp_units)) if use_aux_loss else None
        self._init_parameters(init_std)

    # ------------------------------------------------------------------ setup
    def _init_parameters(self, std: float) -> None:
        with torch.no_grad():
            for name, param in self.named_parameters():
                if "bias" not in name:
                    nn.init.normal_(param, 0.0, std)
            for module in self.embeddings.values():
                for table in module.own_tables():
                    table.weight[0].zero_()

    # ------------------------------------------------------------------ inputs
    def _positions(self, batch: Batch) -> Tensor:
        """Target-relative position of every history behaviour (same layout as hist_item):
        the newest is 1, the oldest of a row of length n is n; padding gets 0 (masked)."""
        longest = int(batch.lengths.max()) if batch.size else 0
        if self.use_position and longest >= self.position_vocab:
            raise ValueError(f"a history has {longest} behaviours but the DARE position table has {self.position_vocab} "
                             f"rows (positions 0..{self.position_vocab - 1}); rebuild with max_length >= {longest}")
        if batch.is_jagged:
            owner = torch.repeat_interleave(torch.arange(batch.size, device=batch.lengths.device), batch.lengths)
            in_row = torch.arange(batch.hist_item.shape[0], device=owner.device) - batch.offsets[owner]
            return batch.lengths[owner] - in_row
        in_row = torch.arange(batch.hist_item.shape[1], device=batch.lengths.device).unsqueeze(0)
        return (batch.lengths.unsqueeze(1) - in_row).clamp_min(0)

    def _embed(self, batch: Batch) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(q [B, D_A], K [B, L, D_A] or [N, D_A], v_t [B, D_R], V like K with D_R)."""
        target_pos = torch.zeros_like(batch.target_item)
        hist_pos = self._positions(batch)
        tgt = (batch.target_item, batch.target_category, self.item_side, target_pos)
        hist = (batch.hist_item, batch.hist_category, self.item_side, hist_pos)
        rep = self.embeddings["representation"]
        v_t, values = rep(*tgt), rep(*hist)
        if self.variant == "dare":
            q, keys = self.embeddings["attention"](*tgt), self.embeddings["attention"](*hist)
        elif self.variant == "twin_4e":
            q, keys = self.embeddings["attention_target"](*tgt), self.embeddings["attention"](*hist)
            v_t = self.embeddings["representation_target"](*tgt)
        elif self.variant == "projection":
            q, keys = self.attention_projection(v_t), self.attention_projection(values)
        else:   # twin, din_topk: one set for both roles
            q, keys = v_t, values
        return q, keys, v_t, values

    def _scaled_query(self, q: Tensor) -> Tensor:
        """Pre-scale the semantic and position parts so that one op scale of 1 gives
        ⟨q_sem, k_sem⟩/sqrt(D_sem) + ⟨q_pos, k_pos⟩/sqrt(D_pos)."""
        att = self.attention_projection if self.variant == "projection" else (
            self.embeddings["attention"] if self.variant in ("dare", "twin_4e") else self.embeddings["representation"])
        sem, pos = att.semantic_dim, att.position_dim
        if pos == 0:
            return q * sem ** -0.5
        return torch.cat([q[:, :sem] * sem ** -0.5, q[:, sem:] * pos ** -0.5], dim=-1)

    # ------------------------------------------------------------------ search
    def _two_stage(self, q: Tensor, keys: Tensor, values: Tensor, batch: Batch) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """(h [B, D_R], index [B, top_k] of in-row positions, -1 where nothing was kept,
        stage-1 scores [B, L] over the whole padded history, padding = PAD_SCORE; None for
        jagged input, hard search or an empty batch, where they do not cover the padded row)."""
        lengths, offsets = batch.lengths, batch.offsets
        in_row: Optional[Tensor] = None
        if self.search == "hard":
            keys, values, lengths, offsets, in_row = _category_subhistory(keys, values, batch)
        jagged = offsets is not None
        width = (int(lengths.max()) if batch.size else 0) if jagged else keys.shape[1]
        k = min(self.top_k, width)
        if k == 0:   # no row has a behaviour to keep: every user is scored by the target alone
            return values.new_zeros((batch.size, values.shape[-1])), lengths.new_full((batch.size, self.top_k), -1), None
        pooled, scores, index = topk_target_attention(q, keys, values, None if jagged else lengths, k=k, scale=1.0,
                                                 offsets=offsets if jagged else None, backend=self.attention_backend)
        if in_row is not None:   # map positions in the category sub-history back to the row
            flat = offsets[:-1].unsqueeze(1) + index.clamp_min(0)
            index = torch.where(index >= 0, in_row[flat.clamp_max(max(in_row.shape[0] - 1, 0))], index)
        if k < self.top_k:
            index = torch.cat([index, index.new_full((batch.size, self.top_k - k), -1)], dim=1)
        return pooled, index, (scores if in_row is None and not jagged else None)

    def _din_two_stage(self, q: Tensor, keys: Tensor, values: Tensor, batch: Batch) -> Tuple[Tensor, Tensor, Tensor]:
        """din_topk on the padded layout: (h [B, D_R], h_full [B, D_R], index [B, top_k])."""
        mask = batch.history_mask()
        if self.search == "hard":
            mask = mask & (batch.hist_category == batch.target_category.unsqueeze(1))
        # DIN activation-unit scores / D, padding → PAD_SCORE: [B, L]
        scores = (self.din_scorer.scores(q, keys, batch.lengths) / q.shape[-1]).masked_fill(~mask, PAD_SCORE)
        full = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
        h_full = torch.einsum("bl,bld->bd", full, values)
        k = min(self.top_k, scores.shape[1])
        if k == 0:
            zeros = values.new_zeros((batch.size, values.shape[-1]))
            return zeros, h_full, batch.lengths.new_full((batch.size, self.top_k), -1)
        kept, index = torch.topk(scores, k, dim=1)
        valid = torch.gather(mask, 1, index)
        weights = torch.softmax(kept.masked_fill(~valid, float("-inf")), dim=1).nan_to_num(0.0)
        picked = torch.gather(values, 1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
        h = torch.einsum("bk,bkd->bd", weights, picked)
        index = index.masked_fill(~valid, -1)
        if k < self.top_k:
            index = torch.cat([index, index.new_full((batch.size, self.top_k - k), -1)], dim=1)
        return h, h_full, index

    def search_and_pool(self, batch: Batch) -> Dict[str, Tensor]:
        """The model's internals for one batch: v_t, h (stage 2), index [B, top_k] (in-row
        positions picked by the search, -1 = nothing), and h_full when the aux head runs."""
        if self.variant == "din_topk" and batch.is_jagged:
            batch = batch.to_padded()
        q, keys, v_t, values = self._embed(batch)
        out: Dict[str, Tensor] = {"v_t": v_t}
        if self.variant == "din_topk":
            out["h"], h_full, out["index"] = self._din_two_stage(q, keys, values, batch)
            if self.aux_head is not None:
                out["h_full"] = h_full
            return out
        q = self._scaled_query(q)
        out["h"], out["index"], scores = self._two_stage(q, keys, values, batch)
        if self.aux_head is not None and self.training:
            if scores is not None:
                # The aux head attends over the whole history with the same scores as stage 1:
                # reuse them instead of a second [B, L, D_A] score pass (forward and backward).
                weights = torch.softmax(scores.masked_fill(~batch.history_mask(), float("-inf")), dim=1)
                out["h_full"] = torch.bmm(weights.nan_to_num(0.0).unsqueeze(1), values).squeeze(1)
            elif batch.is_jagged:
                out["h_full"] = attention_pooling(q, keys, offsets=batch.offsets, values=values, scale=1.0,
                                                  backend=self.attention_backend)
            elif keys.shape[1] == 0:
                out["h_full"] = values.new_zeros((batch.size, values.shape[-1]))
            else:
                out["h_full"] = attention_pooling(q, keys, batch.lengths, values=values, scale=1.0,
                                                  backend=self.attention_backend)
        return out

    # ------------------------------------------------------------------ model API
    def forward(self, batch: Batch) -> RankingOutput:
        parts = self.search_and_pool(batch)
        v_t, h = parts["v_t"], parts["h"]
        logit = self.head(torch.cat([v_t, h, v_t * h], dim=-1)).squeeze(-1)
        aux: Dict[str, Tensor] = {}
        if self.aux_head is not None and self.training and "h_full" in parts:
            h_full = parts["h_full"]
            aux_logit = self.aux_head(torch.cat([v_t, h_full, v_t * h_full], dim=-1)).squeeze(-1)
            aux["aux"] = F.binary_cross_entropy_with_logits(aux_logit, batch.label)
        return RankingOutput(logit=logit, aux_losses=aux)

    def regularization(self, batch: Batch) -> Tensor:
        """l2 · Σ‖θ‖² over parameters whose name contains neither "bias" nor "embedding"."""
        total = self.head[0].weight.new_zeros(())
        if self.l2 <= 0:
            return total
        for name, param in self.named_parameters():
            if "bias" not in name and "embedding" not in name and not name.startswith("item_side."):
                total = total + param.pow(2).sum()
        return self.l2 * total
