"""Seeds × run configs → test AUC / GAUC / logloss mean ± std, selected on validation.

Runs ``recsys fit`` for every config and seed (a finished run directory is reused, so an
interrupted sweep resumes), then writes:

- ``bench/results/real_data_results.json``: every run's numbers and the aggregates;
- ``<out>/report/report.html`` + ``report.md``: the `recsys report` of all runs;
- with ``--update-docs``: the table between the ``real-data`` markers of ``docs/results.md``.

Model selection happens inside each run on the validation split (best checkpoint, early
stopping); the test split is scored once per run. std is the sample standard deviation
over seeds (ddof = 1).

    python bench/real_data_results.py \\
        configs/din_ml100k.yaml configs/finalmlp_ml100k.yaml --seeds 0 1 2 --update-docs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))



def run_one(config_path: Path, seed: int, out: Path, overrides: dict) -> Path:
    from recsys.config import load_config
    from recsys.runner import fit
    name = f"{config_path.stem}_seed{seed}"
    run_dir = out / name
    if (run_dir / "metrics.json").exists():
        return run_dir
    config = load_config(config_path, {**overrides, "seed": seed, "output_dir": str(run_dir), "name": name,
                                       "trainer.enable_progress_bar": False})
    return fit(config, progress=False)


def aggregate(runs: dict) -> list:
    rows = []
    for config_name, dirs in runs.items():
        per_seed = [json.loads((d / "metrics.json").read_text()) for d in dirs]
        row = {"config": config_name, "model": per_seed[0]["model"].rsplit(".", 1)[-1],
               "dataset": Path(per_seed[0]["dataset"]).name, "protocol": per_seed[0]["protocol"],
               "seeds": [m["seed"] for m in per_seed], "test_samples": per_seed[0]["splits"]["test"]["samples"],
               "test_users": per_seed[0]["splits"]["test"]["users"]}
        for split, key in [("test", "auc"), ("test", "gauc"), ("test", "logloss"), ("valid", "auc")]:
            values = np.array([m["splits"][split][key] for m in per_seed], dtype=float)
            row[f"{split}_{key}"] = {"mean": float(values.mean()),
                                     "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                     "values": values.tolist()}
        row["epochs"] = [m["epochs"] for m in per_seed]
        row["best_epoch"] = [m["best_epoch"] for m in per_seed]
        row["train_samples_per_second"] = float(np.mean([m["train_samples_per_second"] for m in per_seed]))
        rows.append(row)
    return rows


def markdown(rows: list, command: str) -> str:
    def fmt(d: dict) -> str:   # GAUC is undefined when every test user has one sample (MovieLens din protocol)
        if not np.isfinite(d["mean"]):
            return "n/a"
        return f"{d['mean']:.4f} ± {d['std']:.4f}" if len(d["values"]) > 1 else f"{d['mean']:.4f} (1 seed)"
    lines = [f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} CPU "
             "(a shared 2-core box; samples/s are indicative only). Command:", "", "```", command, "```", "",
             "| config | dataset | seeds | test AUC | test GAUC | test logloss | valid AUC | best epochs | "
             "train samples/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['dataset']} ({r['test_users']} test users) | "
                     f"{','.join(map(str, r['seeds']))} | {fmt(r['test_auc'])} | {fmt(r['test_gauc'])} | "
                     f"{fmt(r['test_logloss'])} | {fmt(r['valid_auc'])} | {r['best_epoch']} | "
                     f"{r['train_samples_per_second']:,.0f} |")
    return "\n".join(lines)


def update_docs(path: Path, table: str) -> None:
    """Rewrite the ``real-data`` section of ``path`` (docs/results.md; bench/docs_section.py)."""
    from docs_section import write_section   # bench/ is the script's folder
    write_section(path, "real-data", table, "bench/real_data_results.py --update-docs", title="# Results")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="run configs (configs/*.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run")
    parser.add_argument("--update-docs", action="store_true", help="rewrite the table in docs/results.md")
    parser.add_argument("--existing-only", action="store_true",
                        help="train nothing: aggregate the finished runs of each config (the seeds that exist)")
    args = parser.parse_args(argv)
    import yaml
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    runs = {}
    for config in args.configs:
        for seed in args.seeds:
            if args.existing_only and not (args.out / f"{config.stem}_seed{seed}" / "metrics.json").exists():
                continue
            run_dir = run_one(config, seed, args.out, overrides)
            runs.setdefault(config.stem, []).append(run_dir)
            print(f"{run_dir}: test AUC {json.loads((run_dir / 'metrics.json').read_text())['splits']['test']['auc']:.4f}",
                  flush=True)
    rows = aggregate(runs)
    command = "python bench/real_data_results.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "real_data_results.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    from recsys.report import write_report
    report = write_report([d for dirs in runs.values() for d in dirs], args.out / "report",
                          title="Ranking models on real data")
    table = markdown(rows, command)
    print(table)
    print(f"report: {report}")
    if args.update_docs:
        update_docs(REPO / "docs" / "results.md", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
