"""Popularity and item co-occurrence baselines (recsys.retrieval.baselines) on built retrieval
datasets, ranked over every item with the models' metric code.

Writes bench/results/retrieval_baselines.json and, with ``--update-docs``, the
``retrieval-baselines`` section of docs/results.md. Each data config is built (or reused)
first; nothing is trained, so every number is deterministic.

    python bench/retrieval_baselines.py configs/data/amazon_beauty_loo.yaml configs/data/amazon_toys_loo.yaml \\
        --update-docs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KS = (5, 10, 20, 50)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_configs", nargs="+", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--decay", type=float, default=0.5)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    from recsys.data_pipelines.build import build_from_yaml
    from recsys.data_pipelines.dataset import BuiltDataset
    from recsys.retrieval.baselines import evaluate_baselines
    rows = []
    for config in args.data_configs:
        path = build_from_yaml(config, progress=False)
        dataset = BuiltDataset.open(path)
        started = time.perf_counter()
        result = evaluate_baselines(dataset, args.split, KS, window=args.window, decay=args.decay)
        for name, metrics in result.items():
            rows.append({"data": config.stem, "protocol": dataset.protocol, "baseline": name, "split": args.split,
                         "seconds": round(time.perf_counter() - started, 1), **metrics})
            print(json.dumps(rows[-1]), flush=True)
    command = "python bench/retrieval_baselines.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = REPO / "bench" / "results" / "retrieval_baselines.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
                               "window": args.window, "decay": args.decay, "rows": rows}, indent=2) + "\n")
    if args.update_docs:
        sys.path.insert(0, str(REPO / "bench"))
        from docs_section import write_section
        write_section(REPO / "docs" / "results.md", "retrieval-baselines", markdown(rows, command, args),
                      "bench/retrieval_baselines.py --update-docs")
    return 0


def markdown(rows, command: str, args) -> str:
    lines = ["## Retrieval baselines: popularity and item co-occurrence", "",
             f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d} on {platform.machine()} CPU; deterministic "
             "(nothing is trained). Command:", "", "```", command, "```", "",
             f"Full ranking over every item, the user's earlier items masked (the protocol of every retrieval "
             f"row in this file), {args.split} split. Counts come from the training samples only. Co-occurrence: "
             f"the items that followed each of the user's last {args.window} behaviours in training, weighted "
             f"{args.decay}^(j-1) by recency (`recsys/retrieval/baselines.py`).", "",
             "| data | protocol | baseline | users | HR@5 | HR@10 | HR@20 | HR@50 | NDCG@10 | NDCG@20 | Recall@20 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['protocol']} | {r['baseline']} | {r['users']:,} | {r['hr@5']:.4f} | "
                     f"{r['hr@10']:.4f} | {r['hr@20']:.4f} | {r['hr@50']:.4f} | {r['ndcg@10']:.4f} | "
                     f"{r['ndcg@20']:.4f} | {r['recall@20']:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
