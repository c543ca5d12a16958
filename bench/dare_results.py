"""Markdown tables for the DARE section of docs/results.md from the runs of
bench/dare_experiments.sh (runs/dare_exp/<name>_s<seed>/metrics.json) and the JSON of
bench/dare_retrieval.py.

Usage: python bench/dare_results.py [--runs runs/dare_exp] [--retrieval bench/results/dare_retrieval.json]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/dare_exp")
    parser.add_argument("--retrieval", default="bench/results/dare_retrieval.json")
    args = parser.parse_args()
    groups = defaultdict(list)
    for path in sorted(Path(args.runs).glob("*_s*/metrics.json")):
        name = path.parent.name.rsplit("_s", 1)[0]
        groups[name].append(json.loads(path.read_text()))
    search = {}
    if Path(args.retrieval).exists():
        for row in json.loads(Path(args.retrieval).read_text()):
            search[Path(row["run"]).name.rsplit("_s", 1)[0]] = row
    print("| model | seeds | valid AUC | test AUC | test GAUC | test logloss | train samples/s | search ms / 2048 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in groups.items():
        def stat(split, key):
            values = np.array([r["splits"][split][key] for r in runs])
            return f"{values.mean():.4f}" + (f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else "")
        seeds = ",".join(str(r["seed"]) for r in runs)
        speed = np.mean([r["train_samples_per_second"] for r in runs])
        ms = f"{search[name]['search_ms']:.1f}" if name in search else "–"
        print(f"| {name} | {seeds} | {stat('valid', 'auc')} | {stat('test', 'auc')} | {stat('test', 'gauc')} | "
              f"{stat('test', 'logloss')} | {speed:.0f} | {ms} |")
    if search:
        print("\n| model | k | test positives scored | precision@k | recall@k | NDCG@k |")
        print("|---|---|---|---|---|---|")
        for name, row in search.items():
            print(f"| {name} | {row['k']} | {row['positives']} | {row['precision_at_k']:.3f} | "
                  f"{row['recall_at_k']:.3f} | {row['ndcg_at_k']:.3f} |")


if __name__ == "__main__":
    main()
