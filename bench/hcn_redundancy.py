"""How alike are a trained HCN's interest centres? Mean cos² over the pairs of centres of each
level and sequence, over the test users of trained runs (one row per user: its positive
sample; the user side does not depend on the target), against 1/D, the value for random
directions in D dimensions. Compares runs trained with and without the redundancy penalty.

    python bench/hcn_redundancy.py runs/sweep11/hcn_amazon_beauty_seed0 \\
        runs/sweep11/hcn_amazon_beauty_beta0_seed0

Writes bench/results/hcn_redundancy.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def centre_similarity(run_dir: Path) -> dict:
    from recsys.data_pipelines.loader import SampleLoader
    from recsys.models.hcn import HCN, mutual_cos2
    from recsys.runner import load_run, open_dataset
    config, model = load_run(run_dir)
    if not isinstance(model, HCN):
        raise SystemExit(f"{run_dir} is not an HCN run ({type(model).__name__})")
    dataset = open_dataset(config)
    loader = SampleLoader(dataset, "test", config.data.eval_batch_size, max_length=config.data.max_length,
                          form=config.data.form, fields=config.data.fields)
    model.eval()
    sums: dict = {}
    users = 0
    with torch.inference_mode():
        for batch in loader:
            positives = torch.nonzero(batch.label > 0.5).squeeze(1)
            batch = batch.to_padded().take(positives)
            centres = model.user_side(batch).centres
            users += batch.size
            for sequence, levels in centres.items():
                for r, level in enumerate(levels):
                    k = level.shape[1]
                    pairs = max(k * (k - 1), 1)
                    key = f"{sequence} level {r + 1} (K={k})"
                    sums[key] = sums.get(key, 0.0) + float((mutual_cos2(level) / pairs).sum())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"run": str(run_dir.relative_to(REPO) if run_dir.is_absolute() else run_dir),
            "redundancy_weight": config.model_init_args["redundancy_weight"], "users": users,
            "D": model.dim, "random_baseline": 1.0 / model.dim,
            "mean_cos2": {key: value / users for key, value in sums.items()},
            "test_auc": metrics["splits"]["test"]["auc"], "test_gauc": metrics["splits"]["test"]["gauc"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [centre_similarity(run) for run in args.runs]
    command = "python bench/hcn_redundancy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = REPO / "bench" / "results" / "hcn_redundancy.json"
    out.write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    keys = list(rows[0]["mean_cos2"])
    print("| run | β | test AUC | test GAUC | " + " | ".join(keys) + " |")
    print("|---|---|---|---|" + "---|" * len(keys))
    for r in rows:
        print(f"| {r['run']} | {r['redundancy_weight']} | {r['test_auc']:.4f} | {r['test_gauc']:.4f} | "
              + " | ".join(f"{r['mean_cos2'][k]:.4f}" for k in keys) + " |")
    print(f"random directions in D = {rows[0]['D']}: {rows[0]['random_baseline']:.3f}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
