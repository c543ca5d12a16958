"""Multi-interest retrieval on the `users` protocol (ComiRec's split): finished runs of several
models and seeds → mean ± std of the test metrics beside the popularity and item co-occurrence
baselines of the same build (bench/results/retrieval_baselines.json) → the ``users-protocol``
section of docs/results.md and bench/results/users_protocol.json.

    python bench/users_protocol_results.py --runs runs/retrieval/comirec_sa_amazon_beauty_seed{0,1,2} \\
        runs/retrieval/mind_amazon_beauty_seed{0,1,2} runs/retrieval/comirec_sa_amazon_toys_seed0 --update-docs

Rows are grouped by the run's data build (its config's ``data.build`` name, e.g.
``amazon_beauty_users``) and model; each data build gets the baselines of the same name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("recall@20", "hr@20", "ndcg@20", "recall@50", "hr@50", "ndcg@50")


def _run(path: Path, datasets: dict) -> dict:
    """A finished run's facts and its test metrics re-ranked with the history masked (the
    baselines' protocol; the configs follow ComiRec's code, which does not mask)."""
    import dataclasses

    import torch

    from bench.desmil_shift import epoch_means
    from recsys.runner import load_run, open_dataset, rank_split
    metrics = json.loads((path / "metrics.json").read_text())
    model = metrics["model"].rsplit(".", 1)[-1]
    config, net = load_run(path)
    config = dataclasses.replace(config, retrieval=dataclasses.replace(config.retrieval, mask_history=True,
                                                                       ks=[20, 50]))
    torch.set_num_threads(1)
    key = config.data.path or config.data.build
    if key not in datasets:          # every seed of every model reads the same build: open it once
        datasets[key] = open_dataset(config, build=False, progress=False)
    torch.manual_seed(metrics["seed"])    # MIND's routing logits are random at evaluation too: a fixed draw
    masked = rank_split(net, datasets[key], config, "test")
    data = Path(config.data.build).stem if config.data.build else Path(config.data.path).name
    return {"run": str(path), "model": model, "data": data, "seed": metrics["seed"], "test": masked,
            "test_unmasked": metrics["splits"]["test"],
            "epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
            "samples_per_second": metrics.get("train_samples_per_second"), "dataset": metrics["dataset"],
            "diagnostics": epoch_means(path)}   # DESMIL's logged HSIC / weight spread per epoch ({} for others)


def summarise(runs, baselines: dict) -> dict:
    by_model: dict = {}
    for r in runs:
        by_model.setdefault((r["data"], r["model"]), []).append(r)
    rows = []
    for (data, model), rs in by_model.items():
        row = {"data": data, "model": model, "seeds": sorted(r["seed"] for r in rs),
               "epochs": [r["epochs"] for r in rs], "users": rs[0]["test"].get("users"),
               "best_epochs": [r["best_epoch"] for r in rs],
               "samples_per_second": round(float(np.mean([r["samples_per_second"] or 0 for r in rs])), 1)}
        if all("hsic_uniform" in r["diagnostics"] and "weight_ess" in r["diagnostics"] for r in rs):
            d = [r["diagnostics"] for r in rs]
            row["diagnostics"] = {
                "hsic_first_epoch": [round(min(x["hsic_uniform"][0] for x in d), 4), round(max(x["hsic_uniform"][0] for x in d), 4)],
                "hsic_last_epoch": [round(min(x["hsic_uniform"][-1] for x in d), 4), round(max(x["hsic_uniform"][-1] for x in d), 4)],
                "weight_ess_min": round(min(min(x["weight_ess"]) for x in d), 4),
                "weight_max_max": round(max(max(x["weight_max"]) for x in d), 4)}
        for m in METRICS:
            values = np.array([r["test"][m] for r in rs])
            row[m] = [round(float(values.mean()), 4), round(float(values.std(ddof=1)), 4) if len(values) > 1 else None]
        rows.append(row)
    datas = sorted({r["data"] for r in runs})
    base = [b for b in baselines["rows"] if b["data"] in datas and b["split"] == "test"]
    missing = sorted(set(datas) - {b["data"] for b in base})
    if missing:
        raise SystemExit(f"no baselines for {missing} in bench/results/retrieval_baselines.json: run "
                         "bench/retrieval_baselines.py on their data configs first")
    return {"data": datas, "models": rows, "baselines": base,
            "users": {d: next(r["users"] for r in rows if r["data"] == d) for d in datas}}


def docs_section(result: dict, command: str) -> str:
    users = ", ".join(f"{d} {n}" for d, n in result["users"].items())
    names = {"amazon_beauty_users": "Amazon Beauty", "amazon_toys_users": "Amazon Toys",
             "ml100k_users": "MovieLens 100K"}
    title = ", ".join(names.get(d, d) for d in result["data"])
    lines = [f"## Multi-interest retrieval on the `users` protocol ({title})", "",
             "ComiRec's split (`configs/data/{amazon_beauty,amazon_toys,ml100k}_users.yaml`: users 80 / 10 / 10 by a hash of the "
             "id; an evaluation user's first 80 % of the timeline is the history, the rest the ground truth), full "
             "ranking over every item with the history masked (as the baselines; the configs' own evaluation, in "
             "each run's metrics.json, follows ComiRec's code and does not mask), test users: "
             f"{users}; Recall@K = share of "
             "the user's ground-truth items in the top K, HR@K = share of users with at least one. Configs "
             "`configs/{comirec_sa,comirec_dr,mind,desmil}_{amazon_beauty,amazon_toys,ml100k}.yaml` "
             "and `configs/sasrec_{amazon_beauty,amazon_toys,ml100k}_users.yaml` (all: sampled "
             "softmax over 1 280 popularity "
             "negatives with logQ correction, D = 64), selected on validation Recall@50, one torch thread each, "
             "two jobs on the 2-core box, **15-epoch cap** (`trainer.max_epochs: 15` in the configs; the runs "
             "passed it as `--set trainer.max_epochs=15`; where the best epoch is the last, the cap binds). Baselines from the same build's training samples "
             "(`bench/retrieval_baselines.py`, deterministic). Command: `" + command + "`.", "",
             "| data | model | seeds | best epochs | " + " | ".join(m.replace("recall", "Recall").replace("hr", "HR")
                                                                    .replace("ndcg", "NDCG") for m in METRICS) + " |",
             "|---|---|---|---|" + "---|" * len(METRICS)]
    for data in result["data"]:
        for r in (r for r in result["models"] if r["data"] == data):
            cells = [f"{v[0]:.4f}" + (f" ± {v[1]:.4f}" if v[1] is not None else "") for v in (r[m] for m in METRICS)]
            lines.append(f"| {data} | {r['model']} | {','.join(map(str, r['seeds']))} | {r['best_epochs']} of "
                         f"{r['epochs']} | " + " | ".join(cells) + " |")
        for b in (b for b in result["baselines"] if b["data"] == data):
            lines.append(f"| {data} | {b['baseline']} (baseline) | – | – | "
                         + " | ".join(f"{b[m]:.4f}" for m in METRICS) + " |")
    lines += ["", "Training samples/s (mean over the seeds; one thread on the shared box, indicative): "
              + "; ".join(f"{r['data']} {r['model']} {r['samples_per_second']:,.0f}" for r in result["models"]) + "."]
    weighted = [r for r in result["models"] if "diagnostics" in r]
    if weighted:
        lines += ["", "Sample-weight diagnostics (epoch means of the `train/*` values in each run's "
                  "logs/metrics.csv, range over the seeds): " + "; ".join(
                      f"{r['data']} {r['model']}: HSIC across interests {_span(r['diagnostics']['hsic_first_epoch'])} "
                      f"in the first epoch, {_span(r['diagnostics']['hsic_last_epoch'])} in the last, weights' ESS "
                      f"≥ {r['diagnostics']['weight_ess_min']:.3f} B, B·max w ≤ {r['diagnostics']['weight_max_max']:.3f}"
                      for r in weighted) + "."]
    return "\n".join(lines)


def _span(pair) -> str:
    return f"{pair[0]:.2f}–{pair[1]:.2f}" if f"{pair[0]:.2f}" != f"{pair[1]:.2f}" else f"{pair[0]:.2f}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    datasets: dict = {}
    runs = [_run(Path(p), datasets) for p in args.runs if (Path(p) / "metrics.json").exists()]
    if not runs:
        raise SystemExit("no finished run among --runs")
    baselines = json.loads((ROOT / "bench" / "results" / "retrieval_baselines.json").read_text())
    result = summarise(runs, baselines)
    command = "python bench/users_protocol_results.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["command"] = command
    (ROOT / "bench" / "results" / "users_protocol.json").write_text(json.dumps(result, indent=2))
    if args.update_docs:
        from bench.docs_section import write_section
        write_section(ROOT / "docs" / "results.md", "users-protocol", docs_section(result, command),
                      "bench/users_protocol_results.py", title="# Results")
    for r in result["models"]:
        print(r["data"], r["model"], r["seeds"], {m: r[m] for m in ("recall@20", "hr@20", "recall@50")})
    return result


if __name__ == "__main__":
    main()
