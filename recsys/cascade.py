"""The recommendation cascade: FAISS retrieval → coarse ranking → fine ranking.

One call turns a batch of users into ranked lists, stage by stage:

1. **Retrieval.** The retrieval model's interests ``[B, K, D]`` are searched in the run's
   FAISS index (:func:`recsys.retrieval.search.multi_interest_search`): ``retrieve_n``
   candidates per user, ``per_interest`` per interest, the user's seen items left out when
   ``exclude_seen`` (the ``seen`` pairs given to :meth:`Cascade.run`), optional λ-greedy
   category ``diversity``. Padding (0) and unknown (1) ids are never indexed.
2. **Coarse ranking** (``coarse_m``; None = off). A cheap ranking model (HCN: two-tower,
   the user side once per user) scores every valid retrieval candidate with
   :meth:`RankingModel.score_candidates` and keeps its top ``coarse_m``.
3. **Fine ranking** (``fine_n``; None = off). An expensive ranking model (DIN, FinalMLP,
   DARE, QIN, DiffuMIN, ...) scores the previous stage's valid candidates and keeps its top
   ``fine_n``.

Each ranking stage sees only the previous stage's output, orders it by its own logit (ties
keep the previous stage's order: a stable sort) and never adds an item, so every stage's
list is a subset of the one before. With both ranking stages off the result is exactly
:func:`multi_interest_search`.

**Fewer results, counted.** A user with fewer valid candidates than a stage asks for (M or
N larger than what the previous stage returned; few unseen items) gets all of them, padded
with item 0 / score −inf; ``stats`` counts such users per stage (``retrieval_short``,
``coarse_short``, ``fine_short``).

**Fallback users.** A row with an empty history (``lengths == 0``: a user without
behaviours, or an unknown user without a given history) has no interests to search: it gets
the most popular unseen items (``popularity`` [N] counts per item id, the score = the
count), counted in ``stats["fallback"]``. Through the ranking stages such a row is treated
by ``fallback_ranking``:

* ``"popularity"`` (default): the stage keeps the first M / N items in popularity order
  and its score for them is the popularity count (a model with no history to attend to
  adds little over popularity, and an unseen-user list stays predictable);
* ``"rank"``: the stage scores the popular items with the empty history like any other
  row and orders them by its logit.

**Vocabulary.** Every stage's model must be built on the retrieval model's item (and
category, user) vocabulary: the ranking models embed the same item ids.
:meth:`Cascade.from_runs` compares the runs' vocabulary fingerprints
(``data_fingerprint.json``, :func:`recsys.run_fingerprint.read_data_fingerprint`) before loading
any weights and refuses a mismatch with a one-line :class:`ConfigError`.

Each model sees the last ``features.max_length`` behaviours of the batch's history (the
batch may be longer: :attr:`Cascade.max_length` is the longest any stage uses). Models
run in eval mode under ``torch.inference_mode``.

This module imports torch, numpy, faiss and ``recsys.{contract, errors, retrieval.search,
retrieval.index}`` only (and ``recsys.artifacts`` inside :meth:`Cascade.from_runs`): no
Lightning, pandas or pyarrow, so serving imports it (a test checks ``sys.modules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch

from recsys.contract import Batch
from recsys.errors import ConfigError, NonFiniteLossError
from recsys.retrieval.index import FIRST_ITEM, ItemIndex
from recsys.run_fingerprint import read_data_fingerprint
from recsys.retrieval.search import Candidates, Seen, _seen_mask, multi_interest_search

STAGES = ("retrieval", "coarse", "fine")
FALLBACK_RANKING = ("popularity", "rank")


@dataclass(frozen=True)
class CascadeConfig:
    """Sizes and switches of the cascade (module docstring).

    retrieve_n: candidates per user from FAISS; per_interest: list length per interest
    (None = retrieve_n); exclude_seen: leave the ``seen`` pairs out; diversity: ComiRec's λ;
    coarse_m / fine_n: the ranking stages' list sizes (None = stage off); max_rows: rows per
    ranking forward (bounded memory); fallback_ranking: ``popularity`` | ``rank``."""

    retrieve_n: int = 500
    per_interest: Optional[int] = None
    exclude_seen: bool = True
    diversity: float = 0.0
    coarse_m: Optional[int] = None
    fine_n: Optional[int] = None
    max_rows: int = 16384
    fallback_ranking: str = "popularity"

    def __post_init__(self) -> None:
        for name, optional in (("retrieve_n", False), ("per_interest", True), ("coarse_m", True),
                               ("fine_n", True), ("max_rows", False)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"cascade.{name} must be a positive integer{' or null' if optional else ''}, "
                                  f"got {value!r}")
        if not isinstance(self.exclude_seen, bool):
            raise ConfigError(f"cascade.exclude_seen must be true or false, got {self.exclude_seen!r}")
        if isinstance(self.diversity, bool) or not isinstance(self.diversity, (int, float)) or \
                not np.isfinite(self.diversity) or self.diversity < 0:
            raise ConfigError(f"cascade.diversity (λ) must be a finite number >= 0, got {self.diversity!r}")
        if self.fallback_ranking not in FALLBACK_RANKING:
            raise ConfigError(f"cascade.fallback_ranking {self.fallback_ranking!r}: expected one of "
                              f"{list(FALLBACK_RANKING)}")

    @classmethod
    def from_dict(cls, raw: Mapping, source: str = "<cascade config>") -> "CascadeConfig":
        """Strict: an unknown key is a ConfigError naming it."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: the cascade section is a mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown cascade key(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(raw))


@dataclass
class CascadeResult:
    """What :meth:`Cascade.run` returns.

    retrieval / coarse / fine: each stage's :class:`Candidates` ([B, n] items best first by
    that stage's score, 0 / −inf padding), None for a stage that is off. final: the last
    stage's. stage_scores: {stage: [B, n_final]}: the score every stage that ran gave the
    final list's items (−inf on padding). fallback: [B] bool, the popularity rows.
    stats: users, fallback, and per stage the users it returned fewer items than asked
    (``{stage}_short``) and the items it returned (``{stage}_items``)."""

    retrieval: Candidates
    coarse: Optional[Candidates]
    fine: Optional[Candidates]
    stage_scores: Dict[str, np.ndarray]
    fallback: np.ndarray
    stats: Dict[str, int] = field(default_factory=dict)

    @property
    def final(self) -> Candidates:
        return self.fine if self.fine is not None else self.coarse if self.coarse is not None else self.retrieval

    @property
    def stages(self) -> "tuple[str, ...]":
        """The stages that ran, in order."""
        return tuple(s for s in STAGES if getattr(self, s) is not None)


def _last_behaviours(batch: Batch, max_length: int) -> Batch:
    """The batch with each row's history cut to its last ``max_length`` behaviours
    (right-padded [B, L] → [B, min(L, max_length)]); returned as is when it fits."""
    width = batch.hist_item.shape[1]
    if width <= max_length:
        return batch
    lengths = batch.lengths.clamp(max=max_length)
    start = (batch.lengths - lengths).unsqueeze(1)                          # [B, 1] first kept position
    positions = start + torch.arange(max_length, device=lengths.device).unsqueeze(0)
    valid = torch.arange(max_length, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
    positions = torch.where(valid, positions, torch.zeros_like(positions))

    def cut(values: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, values.gather(1, positions), torch.zeros((), dtype=values.dtype))
    return batch.replace(history={name: cut(v) for name, v in batch.history.items()}, lengths=lengths)


def _stable_order(scores: np.ndarray) -> np.ndarray:
    """[B, n] → column order, best first, ties keeping the current order."""
    return np.argsort(-scores, axis=1, kind="stable")


class Cascade:
    """Retrieval → optional coarse ranking → optional fine ranking (module docstring).

    retrieval_model: a RetrievalModel; index: its :class:`ItemIndex`; coarse / fine:
    RankingModels or None; item_category [N] int64 (category id per item id);
    popularity [N] (training counts per item id: the fallback list and its scores).
    A stage whose model is given but whose size is None (or the reverse) is a ConfigError."""

    def __init__(self, retrieval_model: torch.nn.Module, index: ItemIndex,
                 coarse: Optional[torch.nn.Module] = None, fine: Optional[torch.nn.Module] = None, *,
                 item_category: np.ndarray, popularity: np.ndarray,
                 config: CascadeConfig = CascadeConfig()) -> None:
        self.retrieval_model, self.index, self.config = retrieval_model, index, config
        self.coarse, self.fine = coarse, fine
        num_items = retrieval_model.features.num_items
        for stage, model, size in (("coarse", coarse, config.coarse_m), ("fine", fine, config.fine_n)):
            if (model is None) != (size is None):
                raise ConfigError(f"the {stage} stage needs both a model and its size "
                                  f"({'coarse_m' if stage == 'coarse' else 'fine_n'}); got "
                                  f"{'a model' if model is not None else 'no model'} and size {size!r}")
            if model is not None and model.features.num_items != num_items:
                raise ConfigError(f"the {stage} model embeds {model.features.num_items} items, the retrieval "
                                  f"model {num_items}: not the same item vocabulary")
        if index.stamp.get("num_items") != num_items:
            raise ConfigError(f"the index holds {index.stamp.get('num_items')} item ids, the retrieval model "
                              f"{num_items}: the index belongs to another vocabulary")
        self.item_category = np.asarray(item_category, dtype=np.int64)
        popularity = np.asarray(popularity)
        for name, values in (("item_category", self.item_category), ("popularity", popularity)):
            if values.shape != (num_items,):
                raise ConfigError(f"{name} must have one entry per item id ({num_items}), got shape {values.shape}")
        self.popularity = popularity.astype(np.float32)
        self.popular = (np.argsort(-popularity[FIRST_ITEM:], kind="stable") + FIRST_ITEM).astype(np.int64)

    # ------------------------------------------------------------------ construction from runs
    @classmethod
    def from_runs(cls, retrieval_run: Union[str, Path], coarse_run: Optional[Union[str, Path]] = None,
                  fine_run: Optional[Union[str, Path]] = None, config: CascadeConfig = CascadeConfig(), *,
                  item_category: np.ndarray, popularity: np.ndarray, index_name: str = "flat") -> "Cascade":
        """Load the stages from finished run directories (:func:`recsys.artifacts.load_model`)
        and the retrieval run's index ``index_name`` (checked against its weights; the exact
        ``flat`` index is built on first use). The runs' families and vocabularies are checked
        first, from their JSON files alone: a mismatch is a one-line ConfigError before any
        weights are read."""
        from recsys.artifacts import load_model, read_model_json
        from recsys.retrieval.index import IndexConfig, build_run_index, index_path, load_run_index

        runs = {"retrieval": Path(retrieval_run), "coarse": coarse_run and Path(coarse_run),
                "fine": fine_run and Path(fine_run)}
        runs = {stage: run for stage, run in runs.items() if run is not None}
        for stage, run in runs.items():
            family = read_model_json(run).get("family")
            wanted = "retrieval" if stage == "retrieval" else "ranking"
            if family != wanted:
                raise ConfigError(f"{run}: the {stage} stage needs a {wanted} model, this run trained a {family} one")
        check_same_vocabulary(runs)
        models = {stage: load_model(run) for stage, run in runs.items()}
        if index_name == "flat" and not index_path(runs["retrieval"], "flat").exists():
            build_run_index(runs["retrieval"], IndexConfig("flat"), model=models["retrieval"])
        index = load_run_index(runs["retrieval"], index_name)
        return cls(models["retrieval"], index, models.get("coarse"), models.get("fine"),
                   item_category=item_category, popularity=popularity, config=config)

    @property
    def max_length(self) -> int:
        """The longest history any stage reads."""
        return max(m.features.max_length for m in (self.retrieval_model, self.coarse, self.fine) if m is not None)

    # ------------------------------------------------------------------ running
    def run(self, batch: Batch, seen: Optional[Seen] = None) -> CascadeResult:
        """A padded batch of B users (history, profile, context; target and label ignored) →
        each stage's lists. ``seen``: (row, item id) pairs left out when ``exclude_seen``."""
        config = self.config
        batch = batch.to_padded()
        seen = seen if config.exclude_seen else None
        lengths = batch.lengths.cpu().numpy()
        fallback = lengths == 0
        stats = {"users": int(batch.size), "fallback": int(fallback.sum())}
        retrieval = self._retrieve(batch, seen, fallback)
        stats["retrieval_short"] = int((retrieval.counts < config.retrieve_n).sum())
        stats["retrieval_items"] = int(retrieval.counts.sum())
        stage_scores = {"retrieval": retrieval.scores}
        result = {"retrieval": retrieval}
        current = retrieval
        for stage, model, size in (("coarse", self.coarse, config.coarse_m), ("fine", self.fine, config.fine_n)):
            if model is None:
                result[stage] = None
                continue
            stats[f"{stage}_short"] = int((current.counts < size).sum())
            current, order = self._rank(model, batch, current, size, fallback, stage)
            stage_scores = {name: np.take_along_axis(s, order, axis=1) for name, s in stage_scores.items()}
            stage_scores[stage] = current.scores
            stats[f"{stage}_items"] = int(current.counts.sum())
            result[stage] = current
        padding = current.items < FIRST_ITEM
        stage_scores = {name: np.where(padding, -np.inf, s).astype(np.float32) for name, s in stage_scores.items()}
        return CascadeResult(result["retrieval"], result["coarse"], result["fine"], stage_scores, fallback, stats)

    def _retrieve(self, batch: Batch, seen: Optional[Seen], fallback: np.ndarray) -> Candidates:
        config, size = self.config, batch.size
        items = np.zeros((size, config.retrieve_n), dtype=np.int64)
        scores = np.full((size, config.retrieve_n), -np.inf, dtype=np.float32)
        seen_rows, seen_items = ((np.asarray(seen[0], np.int64), np.asarray(seen[1], np.int64)) if seen is not None
                                 else (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        model_rows = np.flatnonzero(~fallback)
        if len(model_rows):
            sub = _last_behaviours(batch.take(torch.from_numpy(model_rows).to(batch.lengths.device)),
                                   self.retrieval_model.features.max_length)
            with torch.inference_mode():
                interests = self.retrieval_model.user_interests(sub).interests.float().cpu().numpy()
            remap = np.full(size, -1, dtype=np.int64)
            remap[model_rows] = np.arange(len(model_rows))
            mine = remap[seen_rows] >= 0
            found = multi_interest_search(self.index, interests, config.retrieve_n, config.per_interest,
                                          (remap[seen_rows[mine]], seen_items[mine]) if seen is not None else None,
                                          config.diversity, self.item_category)
            items[model_rows], scores[model_rows] = found.items, found.scores
        fallback_rows = np.flatnonzero(fallback)
        if len(fallback_rows):
            # the most popular items, the row's seen ones left out (deep enough for the most seen)
            remap = np.full(size, -1, dtype=np.int64)
            remap[fallback_rows] = np.arange(len(fallback_rows))
            mine = remap[seen_rows] >= 0
            depth = min(len(self.popular), config.retrieve_n + int(np.bincount(
                remap[seen_rows[mine]], minlength=1).max(initial=0)))
            pool = np.broadcast_to(self.popular[:depth], (len(fallback_rows), depth))
            usable = ~_seen_mask(pool, (remap[seen_rows[mine]], seen_items[mine]))
            first = np.argsort(~usable, axis=1, kind="stable")[:, :config.retrieve_n]
            kept = np.take_along_axis(usable, first, axis=1)
            chosen = np.where(kept, np.take_along_axis(pool, first, axis=1), 0)
            width = chosen.shape[1]
            items[fallback_rows, :width] = chosen
            scores[fallback_rows, :width] = np.where(kept, self.popularity[chosen], -np.inf)
        return Candidates(items, scores)

    def _rank(self, model: torch.nn.Module, batch: Batch, previous: Candidates, size: int, fallback: np.ndarray,
              stage: str) -> "tuple[Candidates, np.ndarray]":
        """Score the previous stage's valid candidates, keep the top ``size`` by the model's
        logit. Returns (candidates [B, size], order [B, size]: the previous stage's column of
        each slot, 0 on padding)."""
        counts = previous.counts
        # valid candidates are a prefix of each row: one [B', width] call; a short row's padding
        # slots (item 0) ride along in it and are masked to -inf, never returned
        width = int(counts.max(initial=0))
        rows = np.arange(batch.size) if self.config.fallback_ranking == "rank" else np.flatnonzero(~fallback)
        rows = rows[counts[rows] > 0]
        logits = np.where(previous.items >= FIRST_ITEM, previous.scores, -np.inf)       # [B, n_prev]
        if len(rows) and width:
            items = previous.items[rows, :width]
            sub = _last_behaviours(batch.take(torch.from_numpy(rows).to(batch.lengths.device)),
                                   model.features.max_length)
            extra = sorted(set(sub.target) - {"item", "category"})
            if extra:
                raise ConfigError(f"the {stage} model's batch has target fields {extra}; the cascade fills only "
                                  "item and category (item side fields are looked up by the model)")
            device = sub.lengths.device
            candidates = {"item": torch.from_numpy(items).to(device),
                          "category": torch.from_numpy(self.item_category[items]).to(device)}
            with torch.inference_mode():
                scored = model.score_candidates(sub, candidates, max_rows=self.config.max_rows).float().cpu().numpy()
            valid = items >= FIRST_ITEM
            if not np.isfinite(scored[valid]).all():
                bad = rows[np.flatnonzero((~np.isfinite(scored) & valid).any(axis=1))]
                raise NonFiniteLossError(f"the {stage} model gives NaN or infinite scores for {len(bad)} users (batch "
                                         f"rows {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''})")
            logits[rows, :width] = np.where(valid, scored, -np.inf)
        order = _stable_order(logits)[:, :size]
        if order.shape[1] < size:                      # fewer columns than asked: pad
            order = np.pad(order, ((0, 0), (0, size - order.shape[1])), constant_values=-1)
        taken = order >= 0
        safe = np.where(taken, order, 0)
        items = np.where(taken, np.take_along_axis(previous.items, safe, axis=1), 0)
        scores = np.where(taken & (items >= FIRST_ITEM), np.take_along_axis(logits, safe, axis=1), -np.inf)
        items = np.where(np.isfinite(scores), items, 0)
        return Candidates(items.astype(np.int64), scores.astype(np.float32)), safe


# ---------------------------------------------------------------------- vocabulary check
def run_vocabularies(run_dir: Path) -> Dict[str, Optional[str]]:
    """{item, category, user: vocabulary fingerprint (sha256) or None} of a finished run."""
    stamp = read_data_fingerprint(run_dir)
    prints = {} if stamp is None else stamp["vocab_fingerprint"]
    return {name: prints.get(f"{name}.parquet") for name in ("item", "category", "user")}


def check_same_vocabulary(runs: Mapping[str, Path]) -> None:
    """One-line ConfigError unless every run has the retrieval run's item, category and
    user vocabularies (a run without fingerprints cannot be checked and is refused too)."""
    reference = run_vocabularies(runs["retrieval"])
    for stage, run in runs.items():
        prints = reference if stage == "retrieval" else run_vocabularies(run)
        for name in ("item", "category", "user"):
            if prints[name] is None:
                raise ConfigError(f"{run}: the {stage} run records no {name} vocabulary fingerprint "
                                  "(data_fingerprint.json); retrain it to use it in a cascade")
            if prints[name] != reference[name]:
                raise ConfigError(f"{run}: the {stage} model was trained on another {name} vocabulary than the "
                                  f"retrieval run {runs['retrieval']} ({prints[name][:12]} vs "
                                  f"{reference[name][:12]}); train both on builds of the same data")
