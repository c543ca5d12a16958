"""Ranking runs scored on the test pairs of other builds of the same events that differ only in
how negatives were drawn (uniform, popularity, retrieval candidates): does a ranker trained on
harder negatives tell them apart better? The builds must share the runs' vocabularies (checked
against each run's data stamp, as `recsys evaluate` does). Writes bench/results/cross_negatives.json.

    python bench/cross_negatives.py --runs runs/cascade/din_beauty_seed0 runs/cascade/din_candneg_beauty_seed0 \\
        --data runs/data/amazon_beauty runs/data/amazon_beauty_candneg
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.metrics import ctr_metrics
from recsys.run_state import check_same_vocabulary
from recsys.runner import _eval_loader, load_run, predict

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--data", nargs="+", required=True, help="built dataset folders (din protocol)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cross_negatives.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for run in map(Path, args.runs):
        config, model = load_run(run)
        for folder in args.data:
            dataset = BuiltDataset.open(folder)
            check_same_vocabulary(run, dataset)    # the same ids, or a CheckpointError naming both
            started = time.perf_counter()
            with torch.inference_mode():
                scores = predict(model, _eval_loader(dataset, config, args.split))
            metrics = ctr_metrics(scores["label"], scores["prob"], scores["user"])
            row = {"run": str(run), "data": str(folder), "negatives": dataset.manifest.get("config", {})
                   .get("protocol", {}).get("negatives"), "split": args.split,
                   "auc": round(float(metrics["auc"]), 4), "gauc": round(float(metrics["gauc"]), 4),
                   "samples": int(metrics["samples"]), "seconds": round(time.perf_counter() - started, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"command": "python bench/cross_negatives.py " + " ".join(argv if argv is not None else
                                                                    __import__("sys").argv[1:]), "rows": rows}
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return result


if __name__ == "__main__":
    main()
