"""Stage-by-stage quality of the recommendation cascade on the ``loo`` test users.

``run``: one retrieval run (trained on the ``loo`` build) and ranking runs (trained on the
``din`` build of the same file, so the same item vocabulary: checked) → HR/NDCG@{10, 20} of
the final list of every cascade variant for the test users of the loo build, the user's
earlier items left out (S3-Rec / ICLRec masking, as the retrieval evaluator does):

* ``retrieval``: the first 20 of the FAISS list (what ``recsys evaluate`` gives the model);
* ``retrieval+fine``: the fine ranker orders all ``retrieve_n`` candidates, top 20 kept;
* ``retrieval+coarse``: the coarse ranker alone orders them (when a coarse run is given);
* ``retrieval+coarse+fine``: the coarse ranker keeps ``coarse_m``, the fine ranker orders those.

Also the candidate recall (HR@retrieve_n, HR@coarse_m: the ceiling of the later stages) and
the time each variant took; the scoring is :func:`recsys.cascade_evaluation.evaluate_cascades`
(shared with ``recsys quickstart``). One JSON per seed (``bench/results/cascade_<name>.json``).

``table``: the JSONs → mean ± std over seeds → the ``cascade`` section of docs/results.md.

    python bench/cascade_results.py run --name beauty_seed0 --retrieval runs/cascade/sasrec_beauty_seed0 \\
        --fine runs/sweep11/din_amazon_beauty_seed0 --coarse runs/sweep11/finalmlp_amazon_beauty_seed0
    python bench/cascade_results.py table bench/results/cascade_beauty_seed*.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from recsys.cascade import Cascade, CascadeConfig, check_same_vocabulary, run_vocabularies
from recsys.cascade_evaluation import evaluate_cascades
from recsys.runner import load_config, open_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
KS = (10, 20)


def _variants(coarse: bool, args) -> dict:
    base = dict(retrieve_n=args.retrieve_n, max_rows=args.max_rows)
    variants = {"retrieval": (CascadeConfig(**base), False, False),
                "retrieval+fine": (CascadeConfig(**base, fine_n=args.final), False, True)}
    if coarse:
        variants["retrieval+coarse"] = (CascadeConfig(**base, coarse_m=args.final), True, False)
        variants["retrieval+coarse+fine"] = (CascadeConfig(**base, coarse_m=args.coarse_m, fine_n=args.final),
                                             True, True)
    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.variants or k == "retrieval"}
    return variants


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    runs = {"retrieval": Path(args.retrieval)}
    if args.coarse:
        runs["coarse"] = Path(args.coarse)
    runs["fine"] = Path(args.fine)
    check_same_vocabulary(runs)                 # one-line error before any work
    dataset = open_dataset(load_config(runs["retrieval"] / "config.yaml"), build=False)
    popularity = dataset.vocabulary("item").id_counts()
    stages = Cascade.from_runs(runs["retrieval"], runs.get("coarse"), runs["fine"],
                               CascadeConfig(retrieve_n=args.retrieve_n, coarse_m=args.coarse_m if args.coarse else None,
                                             fine_n=args.final),
                               item_category=dataset.item_category, popularity=popularity)
    variants = {}
    for name, (config, use_coarse, use_fine) in _variants(bool(args.coarse), args).items():
        variants[name] = Cascade(stages.retrieval_model, stages.index, stages.coarse if use_coarse else None,
                                 stages.fine if use_fine else None, item_category=dataset.item_category,
                                 popularity=popularity, config=config)
    rows = evaluate_cascades(dataset, variants, "test", KS, args.batch_size, args.every)
    users = rows["retrieval"]["users"]
    full = "retrieval+coarse+fine"
    recall = {"hr@retrieve_n": rows["retrieval"]["candidate_recall"][f"retrieval@{args.retrieve_n}"],
              "hr@coarse_m": rows[full]["candidate_recall"][f"coarse@{args.coarse_m}"] if full in rows else None}
    out = {
        "name": args.name, "runs": {k: str(v) for k, v in runs.items()},
        "dataset": str(dataset.path), "split": "test", "users": users, "every": args.every,
        "retrieve_n": args.retrieve_n, "coarse_m": args.coarse_m if args.coarse else None, "final": args.final,
        "models": {stage: _model_class(run) for stage, run in runs.items()},
        "vocabularies": {stage: run_vocabularies(run) for stage, run in runs.items()},
        "metrics": {name: {k: v for k, v in row.items() if k.startswith(("hr@", "ndcg@"))}
                    for name, row in rows.items()},
        "candidate_recall": recall,
        "seconds": {name: round(row["seconds"], 2) for name, row in rows.items()},
        "users_per_second": {name: row["users_per_second"] for name, row in rows.items()},
        "stats": {name: row["stats"] for name, row in rows.items()}, "threads": args.threads,
        "torch": torch.__version__, "machine": platform.machine(),
        "command": "python bench/cascade_results.py " + " ".join(sys.argv[1:]),
    }
    path = ROOT / "bench" / "results" / f"cascade_{args.name}.json"
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("metrics", "candidate_recall", "seconds")}, indent=2))
    return out


def _model_class(run) -> str:
    return json.loads((Path(run) / "model.json").read_text())["class_path"].rsplit(".", 1)[-1]


def _rows(result: dict) -> dict:
    """{row label: variant} of one result, the ranking stages named by their model."""
    models = result.get("models") or {stage: _model_class(run) for stage, run in result["runs"].items()}
    out = {}
    for variant in result["metrics"]:
        stages = [f"retrieval top {result['retrieve_n'] if variant != 'retrieval' else result['final']}"]
        if "coarse" in variant:
            stages.append(f"{models.get('coarse')} top {result['coarse_m'] if 'fine' in variant else result['final']}")
        if "fine" in variant:
            stages.append(f"{models['fine']} top {result['final']}")
        out[" → ".join(stages)] = variant
    return out


def table(paths, docs: Path) -> str:
    """Results of any number of runs → one table per dataset: a row per cascade (ranking
    stages named by model), mean ± std over the seeds that have it (the retrieval row of a
    seed is the same in all its results: taken once)."""
    from bench.docs_section import write_section
    results = [json.loads(Path(p).read_text()) for p in paths]
    groups = {}
    for r in results:
        groups.setdefault(r["dataset"], []).append(r)
    lines = []
    for dataset, rs in groups.items():
        cells, speeds, recall, coarse_recall = {}, {}, {}, {}
        for r in rs:
            seed = r["name"].rsplit("_seed", 1)[-1]
            for label, variant in _rows(r).items():
                cells.setdefault(label, {})[seed] = r["metrics"][variant]
                speeds.setdefault(label, []).append(r["users_per_second"][variant])
            recall[seed] = r["candidate_recall"]["hr@retrieve_n"]
            if r["candidate_recall"].get("hr@coarse_m") is not None:
                model = (r.get("models") or {}).get("coarse") or _model_class(r["runs"]["coarse"])
                coarse_recall.setdefault(model, []).append(r["candidate_recall"]["hr@coarse_m"])
        first = rs[0]
        users = sorted({r["users"] for r in rs})
        retrieval = (first.get("models") or {}).get("retrieval") or _model_class(first["runs"]["retrieval"])
        lines += [f"**{Path(dataset).name}** (retrieval {retrieval} trained "
                  f"on this loo build; rankers on the din build of the same file, same vocabularies): "
                  f"{'/'.join(map(str, users))} test users (every {first['every']}"
                  f"{'nd' if first['every'] == 2 else 'th' if first['every'] > 2 else ''} user), "
                  f"retrieve_n = {first['retrieve_n']}, final list {first['final']}.", "",
                  "| cascade | seeds | HR@10 | NDCG@10 | HR@20 | NDCG@20 | users/s (1 thread) |",
                  "|---|---|---|---|---|---|---|"]
        for label, by_seed in cells.items():
            row = []
            for metric in ("hr@10", "ndcg@10", "hr@20", "ndcg@20"):
                values = np.array([m[metric] for m in by_seed.values()])
                row.append(f"{values.mean():.4f}" + (f" ± {values.std(ddof=1):.4f}" if len(values) > 1 else ""))
            lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(row) + f" | {np.mean(speeds[label]):.0f} |")
        coarse_m = next((r["coarse_m"] for r in rs if r["candidate_recall"].get("hr@coarse_m") is not None), None)
        lines += ["", f"Candidate recall HR@{first['retrieve_n']} of the retrieval list (the ceiling of every "
                  f"ranking stage): {np.mean(list(recall.values())):.4f}" +
                  "".join(f"; HR@{coarse_m} after the {model} coarse stage: {np.mean(v):.4f}"
                          for model, v in coarse_recall.items()) + ".", ""]
    lines += ["users/s: the evaluation loop's, averaged over the runs of a row, each measured when it ran (other "
              "jobs on the box; runs before 2026-12-02 00:00 UTC scored DIN through the per-row path, later ones "
              "through DIN's shared-history `score_candidates`): read it as an order of magnitude; the cascade's "
              "throughput is measured in docs/benchmarks.md (*The cascade, end to end*).", ""]
    lines.append("Commands: " + "; ".join(f"`{r['command']}`" for r in results) +
                 "; then `python bench/cascade_results.py table " + " ".join(str(p) for p in paths) + "`.")
    body = "\n".join(lines)
    write_section(docs, "cascade", "## The cascade, stage by stage (loo test users)\n\n" + body,
                  "bench/cascade_results.py table", title="# Results")
    return body


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("--name", required=True)
    p.add_argument("--retrieval", required=True)
    p.add_argument("--fine", required=True)
    p.add_argument("--coarse")
    p.add_argument("--retrieve-n", dest="retrieve_n", type=int, default=500)
    p.add_argument("--coarse-m", dest="coarse_m", type=int, default=100)
    p.add_argument("--final", type=int, default=20)
    p.add_argument("--every", type=int, default=1, help="evaluate every S-th test user (1 = all)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=256)
    p.add_argument("--max-rows", dest="max_rows", type=int, default=16384)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--variants", nargs="+", help="only these variants (retrieval is always computed)")
    t = sub.add_parser("table")
    t.add_argument("paths", nargs="+")
    t.add_argument("--docs", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args)
    else:
        print(table(args.paths, Path(args.docs)))


if __name__ == "__main__":
    main()
