"""Retrieval quality of the stage-1 search on generated data (DARE paper §5.3, NDCG of search).

On the synthetic data every user's behaviours come from planted interests (categories), so
the behaviours relevant to a positive target are known: the history behaviours whose
category is the target's, when that category is one of the user's planted interests.
For each trained run this script runs the model's search on the test positives and reports

    precision@k  share of picked behaviours that are relevant,
    recall@k     relevant picks / min(k, #relevant in the history),
    NDCG@k       binary relevance, picks in descending score order (ideal: all relevant first),

Search time is measured apart, under the benchmark lock, by bench/dare_search_timing.py.
Runs at 1 torch thread (a shared 2-core machine).

Usage: python bench/dare_retrieval.py RUN_DIR [RUN_DIR ...] [--split test] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from recsys.data_pipelines.config import load_data_config
from recsys.data_pipelines.loader import SampleLoader
from recsys.data_pipelines.synthetic import SyntheticConfig, planted_interests
from recsys.runner import load_run, open_dataset


def planted_lookup(dataset, data_config_path: str):
    """[num_users, K] planted interest category ids in the dataset's vocabulary (0 = not in vocab)."""
    cfg = load_data_config(Path(data_config_path)).source.synthetic
    users, interests = planted_interests(SyntheticConfig(**vars(cfg)))
    user_ids = dataset.vocabulary("user").encode(__import__("pyarrow").array(users))
    cat_ids = dataset.vocabulary("category").encode(__import__("pyarrow").array(interests.reshape(-1)))
    table = np.zeros((dataset.num_users, interests.shape[1]), np.int64)
    ok = user_ids >= 2
    table[user_ids[ok]] = cat_ids.reshape(interests.shape)[ok]
    return table


def search_quality(run_dir: str, split: str) -> dict:
    config, model = load_run(run_dir)
    dataset = open_dataset(config)
    planted = planted_lookup(dataset, config.data.build)
    model.eval()
    k = model.top_k
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    precision, recall, ndcg = [], [], []
    loader = SampleLoader(dataset, split, 2048, max_length=config.data.max_length)
    with torch.no_grad():
        for batch in loader:
            index = model.search_and_pool(batch)["index"].numpy()
            hist_cat = batch.hist_category.numpy()
            target_cat = batch.target_category.numpy()
            users = batch.user.numpy()
            for b in np.flatnonzero(batch.label.numpy() == 1):
                if target_cat[b] not in planted[users[b]]:
                    continue
                n = int(batch.lengths[b])
                relevant = hist_cat[b, :n] == target_cat[b]
                picks = index[b][index[b] >= 0]
                if len(picks) == 0 or not relevant.any():
                    continue
                hits = relevant[picks].astype(float)
                ideal = min(k, int(relevant.sum()))
                precision.append(hits.mean())
                recall.append(hits.sum() / ideal)
                ndcg.append((hits * discount[:len(hits)]).sum() / discount[:ideal].sum())
    return {"run": str(run_dir), "variant": getattr(model, "variant", "?"), "split": split, "k": k,
            "positives": len(precision), "precision_at_k": float(np.mean(precision)),
            "recall_at_k": float(np.mean(recall)), "ndcg_at_k": float(np.mean(ndcg))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--split", default="test")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [search_quality(run, args.split) for run in args.runs]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
