"""Markdown tables for the DARE section of docs/results.md from the runs of
bench/dare_experiments.sh / dare_experiments_real.sh (<runs>/<name>_s<seed>/metrics.json),
the JSON of bench/dare_retrieval.py and of bench/dare_search_timing.py.

Test metrics are those of the checkpoint with the best validation AUC; mean ± sample std over
seeds. GAUC is undefined for a user whose test samples are all of one label (e.g. one test
sample per user): such users are excluded and counted; when every user is excluded the cell
shows "–" with a footnote, never nan.

Usage: python bench/dare_results.py [--runs runs/dare_exp] [--retrieval bench/results/dare_retrieval.json]
                                    [--timing bench/results/dare_search_timing.json]
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ["dare", "twin", "dintopk", "dare_dintopk", "dare_da8", "dare_da4", "twin_4e", "dare_projection"]


def _rank(name: str):
    """Sort key: dataset suffix first (real-data runs are <model>_<dataset>), then ORDER."""
    matches = [o for o in ORDER if name == o or name.startswith(o + "_")]
    base = max(matches, key=len) if matches else ""
    return (name[len(base) + 1:] if base else name, ORDER.index(base) if base else len(ORDER), name)


def _cell(values) -> str:
    values = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(values) == 0:
        return "–"
    return f"{values.mean():.4f}" + (f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else "")


def run_table(runs_dir: str) -> str:
    groups = defaultdict(list)
    for path in sorted(Path(runs_dir).glob("*_s*/metrics.json")):
        groups[path.parent.name.rsplit("_s", 1)[0]].append(json.loads(path.read_text()))
    lines = ["| model | seeds | valid AUC | test AUC | test GAUC | test logloss | best epoch | train samples/s (1 thread) |",
             "|---|---|---|---|---|---|---|---|"]
    undefined = []
    for name in sorted(groups, key=_rank):
        runs = sorted(groups[name], key=lambda r: r["seed"])
        test = [r["splits"]["test"] for r in runs]
        gauc = _cell([t["gauc"] for t in test])
        excluded = sorted({(t.get("gauc_users_excluded"), t.get("users")) for t in test})
        if any(e and e[0] for e in excluded):
            e, u = excluded[-1]
            if gauc == "–":
                gauc = "–¹"
                undefined.append(f"{name} ({e} of {u} users excluded)")
            else:
                gauc += f" ({e} of {u} users excluded)"
        seeds = ",".join(str(r["seed"]) for r in runs)
        epochs = ",".join(str(r.get("best_epoch")) for r in runs)
        speed = np.mean([r["train_samples_per_second"] for r in runs])
        lines.append(f"| {name} | {seeds} | {_cell([r['splits']['valid']['auc'] for r in runs])} | "
                     f"{_cell([t['auc'] for t in test])} | {gauc} | {_cell([t['logloss'] for t in test])} | "
                     f"{epochs} | {speed:.0f} |")
    notes = ["", "¹ GAUC undefined: every test user has test samples of one label only (one test sample per user), "
             "so no user contributes a per-user AUC — " + "; ".join(undefined) + "."] if undefined else []
    return "\n".join(lines + notes)


def retrieval_table(path: str) -> str:
    rows = json.loads(Path(path).read_text())
    groups = defaultdict(list)
    for row in rows:
        groups[Path(row["run"]).name.rsplit("_s", 1)[0]].append(row)
    lines = ["| model | seeds | test positives scored | precision@k | recall@k | NDCG@k |", "|---|---|---|---|---|---|"]
    for name in sorted(groups, key=_rank):
        g = groups[name]
        seeds = ",".join(Path(r["run"]).name.rsplit("_s", 1)[1] for r in g)
        lines.append(f"| {name} | {seeds} | {g[0]['positives']} | {_cell([r['precision_at_k'] for r in g])} | "
                     f"{_cell([r['recall_at_k'] for r in g])} | {_cell([r['ndcg_at_k'] for r in g])} |")
    return "\n".join(lines)


def timing_table(path: str) -> str:
    data = json.loads(Path(path).read_text())
    m = data["meta"]
    lines = [f"{m['date']}, {m['machine']}, {m['threads']} thread, batch {m['batch']} test samples, L = {m['L']}, "
             f"median of {m['repeats']}", "",
             "| model | D_A / D_R | score + top-k + pool ms | embedding gathers ms | search_and_pool ms |",
             "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['model']} | {r['d_a']} / {r['d_r']} | {r['score_topk_ms']:.1f} | {r['gather_ms']:.1f} | "
                     f"{r['search_ms']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/dare_exp")
    parser.add_argument("--retrieval", default="bench/results/dare_retrieval.json")
    parser.add_argument("--timing", default="bench/results/dare_search_timing.json")
    args = parser.parse_args()
    print(run_table(args.runs))
    if args.retrieval and Path(args.retrieval).exists():
        print("\n" + retrieval_table(args.retrieval))
    if args.timing and Path(args.timing).exists():
        print("\n" + timing_table(args.timing))


if __name__ == "__main__":
    main()
