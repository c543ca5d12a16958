"""Scoring requests (raw ids) → the model's :class:`~recsys.contract.Batch` and candidates.

A request is one user's ``history`` (raw item ids, oldest first, most recent last),
``candidates`` (raw item ids to score), optional ``user`` and ``context``:

* **history.** Mapped through the item vocabulary (unknown → 1, counted), categories from
  the artifact's item → category table, behaviour types not given (0: no model reads them).
  A history longer than the model's L is **truncated to its most recent L** behaviours, as
  the training loader does (counted: ``truncated_histories``, ``truncated_behaviours``). The
  step from id lists to history tensors is the training loader's own
  (:func:`recsys.data_pipelines.loader.history_batch`), so serving and training cannot
  disagree.
* **candidates.** Mapped like the history (unknown → 1, counted); an empty list scores to
  an empty result.
* **user.** None (anonymous: id 1, counted), a raw user id, or a mapping
  ``{"id": raw id (optional), field: value, ...}`` whose fields replace the user side table's
  values of this user: id → a raw id of the field's vocabulary; ids → a list of them;
  number → a float, None = missing (NaN / inf is an error); dense → a list of ``d`` floats
  (NaN / inf, wrong width: errors). Profile fields not given come from the user side table
  row of the user id (the unknown row 1 for an anonymous or unknown user).
* **context.** ``{field: raw value}`` for the model's context fields: hour (0..23 UTC),
  weekday (0..6, Monday = 0) through their vocabularies, behaviour (a name such as ``"pv"``
  or its code). A field the model has that the request omits gets the unknown id 1
  (counted: ``missing_context``); a field the model does not have is an error (a typo).

Every problem is a :class:`~recsys.serving.ids.RequestError` naming the request field (and
the position); nothing is dropped or altered silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from recsys.contract import Batch, FeatureSpec, Jagged
from recsys.data_pipelines.loader import history_batch

from .ids import UNKNOWN_ID, IdMap, RequestError

COUNT_KEYS = ("requests", "candidates", "history_items", "unknown_history_items", "unknown_candidates",
              "anonymous_users", "unknown_users", "truncated_histories", "truncated_behaviours",
              "unknown_profile_ids", "missing_context", "unknown_context")


@dataclass(frozen=True)
class Request:
    """One user's scoring request (see the module docstring)."""

    history: Sequence
    candidates: Sequence
    user: Any = None
    context: Optional[Mapping[str, Any]] = None


def as_request(value, index: int) -> Request:
    if isinstance(value, Request):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"history", "candidates", "user", "context"})
        if unknown or "history" not in value or "candidates" not in value:
            raise RequestError(f"requests[{index}]: a request needs 'history' and 'candidates' (optional 'user', "
                               f"'context'); got keys {sorted(value)}")
        return Request(value["history"], value["candidates"], value.get("user"), value.get("context"))
    raise RequestError(f"requests[{index}]: expected a Request or a mapping, got {type(value).__name__}")


def _id_list(values, what: str) -> Sequence:
    if isinstance(values, (str, bytes, Mapping, set, frozenset)) or not hasattr(values, "__len__"):
        raise RequestError(f"{what}: expected a list of raw item ids (oldest first), got {type(values).__name__}")
    if isinstance(values, np.ndarray) and values.ndim != 1:
        raise RequestError(f"{what}: expected a 1-d list of raw ids, got an array of shape {values.shape}")
    return values


@dataclass
class Encoded:
    """B requests with at least one candidate: ``batch`` [B], ``candidates`` {"item",
    "category": [B, M]} (rows shorter than M padded with their first candidate), ``sizes``
    [B] the real candidate counts, ``rows`` the position of each in the call's requests,
    ``histories`` the B whole histories as ids (before truncation)."""

    batch: Batch
    candidates: Dict[str, torch.Tensor]
    sizes: List[int]
    rows: List[int]
    counts: Dict[str, int]
    histories: List[np.ndarray] = None      # each row's whole history as ids (the seen items)


class RequestEncoder:
    """Encodes requests for one model's feature spec (read-only after construction)."""

    def __init__(self, features: FeatureSpec, maps: Mapping[str, IdMap], item_category: np.ndarray,
                 user_tables: Mapping[str, Any], context_columns: Mapping[str, str],
                 behaviors: Mapping[str, int]) -> None:
        self.features, self.maps = features, dict(maps)
        self.item_category = np.asarray(item_category, np.int64)
        if len(self.item_category) != features.num_items:
            raise RequestError(f"the item -> category table has {len(self.item_category)} rows for "
                               f"{features.num_items} item ids")
        self.max_length = features.max_length
        self.profile_fields = features.of("user", side_only=True)
        self.context_fields = features.of("context")
        self.user_tables, self.context_columns = dict(user_tables), dict(context_columns)
        self.behaviors = dict(behaviors)

    # ------------------------------------------------------------------ one request's parts
    def _user(self, user, what: str, counts: Dict[str, int]) -> Tuple[int, Dict[str, Any]]:
        """(user id, profile overrides {field: raw value})."""
        overrides: Dict[str, Any] = {}
        raw = user
        if isinstance(user, Mapping):
            allowed = {f.name for f in self.profile_fields}
            unknown = sorted(set(user) - allowed - {"id"})
            if unknown:
                raise RequestError(f"{what}: unknown user field(s) {unknown}; this model's profile fields: "
                                   f"{sorted(allowed)} (and 'id')")
            raw = user.get("id")
            overrides = {k: v for k, v in user.items() if k != "id"}
        if raw is None:
            counts["anonymous_users"] += 1
            return UNKNOWN_ID, overrides
        uid = int(self.maps["user"].encode([raw], f"{what}.id" if overrides else what)[0])
        counts["unknown_users"] += uid == UNKNOWN_ID
        return uid, overrides

    def _profile_value(self, spec, uid: int, overrides: Mapping[str, Any], what: str, counts: Dict[str, int]):
        name = spec.name
        if name not in overrides:
            table = self.user_tables[name]
            if spec.kind == "ids":
                values, offsets = table
                return np.asarray(values[offsets[uid]:offsets[uid + 1]], np.int64)
            return table[uid]
        value, where = overrides[name], f"{what}.{name}"
        if spec.kind == "id":
            out = int(self.maps[spec.table].encode([value], where)[0])
            counts["unknown_profile_ids"] += out == UNKNOWN_ID
            return out
        if spec.kind == "ids":
            ids = self.maps[spec.table].encode(_id_list(value, where), where)
            counts["unknown_profile_ids"] += int((ids == UNKNOWN_ID).sum())
            return ids
        if spec.kind == "number":
            if value is None:
                return np.float32(np.nan)          # missing, as a side table's NaN
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise RequestError(f"{where}: expected a number (None = missing), got {type(value).__name__}")
            if not math.isfinite(float(value)):
                raise RequestError(f"{where}: {value!r} is not finite (give None for a missing value)")
            return np.float32(value)
        vector = np.asarray(value, dtype=np.float64) if not isinstance(value, (str, bytes)) else None
        if vector is None or vector.dtype.kind not in "fiu" or vector.shape != (spec.size,):
            raise RequestError(f"{where}: expected a vector of {spec.size} floats, got "
                               f"{getattr(vector, 'shape', type(value).__name__)}")
        if not np.isfinite(vector).all():
            raise RequestError(f"{where}: the vector holds NaN or infinite values at positions "
                               f"{np.flatnonzero(~np.isfinite(vector)).tolist()[:5]}")
        return vector.astype(np.float32)

    def _context_value(self, spec, context: Mapping[str, Any], what: str, counts: Dict[str, int]) -> int:
        if spec.name not in context:
            counts["missing_context"] += 1
            return UNKNOWN_ID
        value, where = context[spec.name], f"{what}.{spec.name}"
        column = self.context_columns.get(spec.name)
        if column == "behavior":
            if isinstance(value, str) and value in self.behaviors:
                return int(self.behaviors[value])
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and \
                    int(value) in self.behaviors.values():
                return int(value)
            raise RequestError(f"{where}: {value!r} is not a behaviour; use one of {sorted(self.behaviors)} or its "
                               f"code {sorted(self.behaviors.values())}")
        out = int(self.maps[spec.table].encode([value], where)[0])
        counts["unknown_context"] += out == UNKNOWN_ID
        return out

    # ------------------------------------------------------------------ a call's requests
    def encode(self, requests: Sequence[Request], names: Sequence[str], scoring: bool = True) -> Encoded:
        """The requests as one batch; ``names[i]`` names request i in errors. ``scoring``:
        requests without candidates are left out (empty results); else (the Recommender)
        every request is a row and candidates are not read."""
        counts = dict.fromkeys(COUNT_KEYS, 0)
        items = self.maps["item"]
        histories, candidates, users, profiles, contexts, rows = [], [], [], [], [], []
        for row, (request, what) in enumerate(zip(requests, names)):
            cands = items.encode(_id_list(request.candidates, f"{what}.candidates"), f"{what}.candidates") \
                if scoring else np.zeros(0, np.int64)
            hist = items.encode(_id_list(request.history, f"{what}.history"), f"{what}.history")
            context = request.context if request.context is not None else {}
            if not isinstance(context, Mapping):
                raise RequestError(f"{what}.context: expected a mapping of context fields, got "
                                   f"{type(context).__name__}")
            unknown = sorted(set(context) - {f.name for f in self.context_fields})
            if unknown:
                raise RequestError(f"{what}.context: unknown field(s) {unknown}; this model's context fields: "
                                   f"{[f.name for f in self.context_fields]}")
            uid, overrides = self._user(request.user, f"{what}.user", counts)
            profile = {f.name: self._profile_value(f, uid, overrides, f"{what}.user", counts)
                       for f in self.profile_fields}
            ctx = {f.name: self._context_value(f, context, f"{what}.context", counts) for f in self.context_fields}
            counts["requests"] += 1
            counts["candidates"] += len(cands)
            counts["unknown_candidates"] += int((cands == UNKNOWN_ID).sum())
            counts["history_items"] += len(hist)
            counts["unknown_history_items"] += int((hist == UNKNOWN_ID).sum())
            if len(hist) > self.max_length:
                counts["truncated_histories"] += 1
                counts["truncated_behaviours"] += len(hist) - self.max_length
            if scoring and not len(cands):
                continue            # nothing to score: an empty result, no model call
            histories.append(hist)
            candidates.append(cands)
            users.append(uid)
            profiles.append(profile)
            contexts.append(ctx)
            rows.append(row)
        if not rows:
            return Encoded(None, {}, [], [], counts)
        return Encoded(self._batch(histories, users, profiles, contexts),
                       self._candidates(candidates) if scoring else {}, [len(c) for c in candidates], rows, counts,
                       histories)

    def _batch(self, histories: List[np.ndarray], users: List[int], profiles: List[dict],
               contexts: List[dict]) -> Batch:
        size = len(histories)
        lengths = np.array([len(h) for h in histories], np.int64)
        offsets = np.zeros(size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat_items = np.concatenate(histories) if size else np.zeros(0, np.int64)
        flat = {"item": flat_items, "category": self.item_category[flat_items],
                "behavior": np.zeros(len(flat_items), np.int64)}
        hist, hist_lengths, _ = history_batch(flat, offsets, np.arange(size), lengths, self.max_length)
        zeros = torch.zeros(size, dtype=torch.long)
        return Batch(user=torch.tensor(users, dtype=torch.long), label=torch.zeros(size), lengths=hist_lengths,
                     target_item=zeros, target_category=zeros, history=hist,
                     profile={f.name: self._stack(f, [p[f.name] for p in profiles]) for f in self.profile_fields},
                     context={f.name: torch.tensor([c[f.name] for c in contexts], dtype=torch.long)
                              for f in self.context_fields})

    @staticmethod
    def _stack(spec, values: List[Any]):
        if spec.kind == "ids":
            return Jagged.from_lists([np.asarray(v).tolist() for v in values])
        if spec.kind == "id":
            return torch.tensor(np.asarray(values, np.int64))
        return torch.from_numpy(np.ascontiguousarray(np.stack(values).astype(np.float32)))

    def _candidates(self, candidates: List[np.ndarray]) -> Dict[str, torch.Tensor]:
        width = max(len(c) for c in candidates)
        padded = np.empty((len(candidates), width), np.int64)
        for b, c in enumerate(candidates):        # short rows repeat their first candidate (scored, then cut)
            padded[b, :len(c)] = c
            padded[b, len(c):] = c[0]
        return {"item": torch.from_numpy(padded), "category": torch.from_numpy(self.item_category[padded])}
