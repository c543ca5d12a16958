"""Quality of every stage of a recommendation cascade on a retrieval split (``loo``/``users``).

:func:`evaluate_cascades` runs each named :class:`~recsys.cascade.Cascade` (the same stages
with some switched off: "retrieval", "retrieval+fine", "retrieval+coarse+fine", ...) over
the evaluation users of a built retrieval dataset and scores the final list of each with the
full-ranking metric code (:func:`recsys.metrics.retrieval_sums`), the user's earlier items
left out (S3-Rec / ICLRec masking, as the retrieval evaluator does). It also gives each
stage's candidate recall (HR at the length of that stage's list: the ceiling of the stages
after it), the time each variant took and its stats. ``bench/cascade_results.py`` and
``recsys quickstart`` both call it.
"""

from __future__ import annotations

import time
from typing import Dict, Mapping, Sequence

import numpy as np
import torch

from recsys.cascade import Cascade
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.full_ranking import SplitTruth
from recsys.metrics import distinct_truth_counts, mean_of_sums, retrieval_sums, topk_hits


def _add(total: Dict[str, float], part: Mapping[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


def evaluate_cascades(dataset: BuiltDataset, cascades: Mapping[str, Cascade], split: str = "test",
                      ks: Sequence[int] = (10, 20), batch_size: int = 512, every: int = 1) -> Dict[str, dict]:
    """{variant: {"hr@K", "ndcg@K" for K in ks, "users", "seconds", "users_per_second",
    "candidate_recall": {stage: HR at that stage's list length}, "stats": summed CascadeResult
    stats}}. ``every``: score the split's samples whose index is a multiple of it (a
    deterministic subsample, for time)."""
    ks = tuple(sorted(ks))
    truth_of = SplitTruth(dataset, split)
    max_length = max(c.max_length for c in cascades.values())
    sums = {name: {} for name in cascades}
    recall = {name: {} for name in cascades}
    seconds = {name: 0.0 for name in cascades}
    stats = {name: {} for name in cascades}
    lengths: Dict[str, Dict[str, int]] = {name: {} for name in cascades}
    users = 0
    for batch in SampleLoader(dataset, split, batch_size, max_length=max_length):
        index = batch.sample_index.numpy()
        keep = np.flatnonzero(index % every == 0)
        if not len(keep):
            continue
        batch = batch.take(torch.from_numpy(keep))
        index = index[keep]
        truth = truth_of.truth(index)
        seen = truth_of.seen(index, truth)
        counts = distinct_truth_counts(truth)
        users += len(index)
        for name, cascade in cascades.items():
            started = time.perf_counter()
            result = cascade.run(batch, seen)
            seconds[name] += time.perf_counter() - started
            _add(stats[name], result.stats)
            final = result.final.items
            if final.shape[1] < ks[-1]:
                final = np.pad(final, ((0, 0), (0, ks[-1] - final.shape[1])))
            _add(sums[name], retrieval_sums(topk_hits(final[:, :ks[-1]], truth), counts, ks))
            for stage in result.stages:
                items = getattr(result, stage).items
                lengths[name][stage] = items.shape[1]
                hits = retrieval_sums(topk_hits(items, truth), counts, (items.shape[1],))
                _add(recall[name], {stage: hits[f"hr@{items.shape[1]}"]})
    out = {}
    for name in cascades:
        metrics = mean_of_sums(sums[name]) if sums[name] else {"users": 0}
        row = {k: v for k, v in metrics.items() if k.startswith(("hr@", "ndcg@"))}
        row.update(users=users, seconds=round(seconds[name], 3),
                   users_per_second=round(users / max(seconds[name], 1e-9), 1),
                   candidate_recall={f"{stage}@{lengths[name][stage]}": value / max(users, 1)
                                     for stage, value in recall[name].items()},
                   stats=stats[name])
        out[name] = row
    return out
