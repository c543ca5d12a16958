"""End-to-end throughput of ``recsys recommend`` (users/s) and the rankers' cost per candidate.

``e2e``: ``recommend`` over a users file of ``--users`` raw user ids of the retrieval run's
dataset (evenly spaced over the vocabulary, so heavy and light users alike), for every
variant (retrieval only; + fine over all retrieved; + coarse then fine when a coarse run is
given), ``--threads`` threads; users/s = users / the job's wall time (history gathering,
FAISS, ranking forwards, Parquet parts and the final file included).

``per-candidate``: ``score_candidates`` of each ranking run for ``--batch`` users × M
candidates (M = 100, 500, 2000 random item ids), median over ``--repeats``: µs per
(user, candidate) pair.

    python bench/bench_cascade.py --retrieval runs/cascade/sasrec_beauty_seed0 \\
        --fine runs/sweep11/din_amazon_beauty_seed0 --coarse runs/sweep11/finalmlp_amazon_beauty_seed0
    python bench/bench_cascade.py --docs-only      # rewrite the docs section from the JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULT = ROOT / "bench" / "results" / "cascade_throughput.json"


def e2e(args) -> dict:
    from recsys.cascade import CascadeConfig
    from recsys.data_pipelines.dataset import BuiltDataset
    from recsys.retrieval.recommend import RecommendConfig, recommend
    from recsys.runner import load_config, open_dataset

    dataset = open_dataset(load_config(Path(args.retrieval) / "config.yaml"), build=False)
    raw = dataset.vocabulary("user").raw
    picks = np.linspace(0, len(raw) - 1, min(args.users, len(raw))).astype(np.int64)
    variants = {"retrieval": (None, None, CascadeConfig(retrieve_n=args.retrieve_n)),
                "retrieval+fine": (None, args.fine, CascadeConfig(retrieve_n=args.retrieve_n, fine_n=args.final))}
    if args.coarse:
        variants["retrieval+coarse+fine"] = (args.coarse, args.fine, CascadeConfig(
            retrieve_n=args.retrieve_n, coarse_m=args.coarse_m, fine_n=args.final))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.parquet"
        pq.write_table(pa.table({"user": raw.take(pa.array(picks))}), str(users))
        for name, (coarse, fine, cascade) in variants.items():
            config = RecommendConfig(args.retrieval, coarse, fine, cascade, chunk_users=args.chunk,
                                     threads=args.threads)
            started = time.perf_counter()
            summary = recommend(config, users, Path(tmp) / f"{name}.parquet", progress=False)
            wall = time.perf_counter() - started
            out[name] = {"users": summary["counts"]["users"], "seconds": round(wall, 2),
                         "users_per_second": round(summary["counts"]["users"] / wall, 1),
                         "fallback": summary["counts"]["unknown_users"] + summary["counts"]["no_history"]}
            print(name, out[name], flush=True)
    return out


def per_candidate(args) -> dict:
    from recsys.artifacts import load_model
    from recsys.contract import Batch
    torch.manual_seed(0)
    out = {}
    for stage, run in (("coarse", args.coarse), ("fine", args.fine)):
        if not run:
            continue
        model = load_model(run)
        features = model.features
        b, length = args.batch, features.max_length
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(1, length + 1, (b,), generator=g)
        mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
        items = torch.randint(2, features.num_items, (b, length), generator=g) * mask
        zeros = torch.zeros(b, dtype=torch.long)
        batch = Batch(user=torch.randint(2, features.num_users, (b,), generator=g), label=torch.zeros(b),
                      lengths=lengths, target_item=zeros, target_category=zeros, hist_item=items,
                      hist_category=torch.randint(2, features.num_categories, (b, length), generator=g) * mask,
                      hist_behavior=mask.long())
        row = {"run": str(run), "model": type(model).__name__}
        for m in (100, 500, 2000):
            cand = {"item": torch.randint(2, features.num_items, (b, m), generator=g),
                    "category": torch.randint(2, features.num_categories, (b, m), generator=g)}
            times = []
            with torch.inference_mode():
                model.score_candidates(batch, cand, max_rows=args.max_rows)          # warm-up
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    model.score_candidates(batch, cand, max_rows=args.max_rows)
                    times.append(time.perf_counter() - started)
            row[f"us_per_candidate@{m}"] = round(statistics.median(times) / (b * m) * 1e6, 3)
        out[stage] = row
        print(stage, row, flush=True)
    return out


def docs(result: dict) -> None:
    from bench.docs_section import write_section
    cfg = result["config"]
    lines = ["## The cascade, end to end (`recsys recommend`)", "",
             f"`recsys recommend` over {cfg['users']} Beauty users (evenly spaced over the user vocabulary), "
             f"retrieve_n = {cfg['retrieve_n']}, coarse_m = {cfg['coarse_m']}, final {cfg['final']}, "
             f"{cfg['threads']} thread(s), chunks of {cfg['chunk']} users, on the shared 2-core box "
             f"({result.get('machine_state', 'other jobs running: a lower bound')}). Runs: " +
             ", ".join(f"{k} `{v}`" for k, v in cfg["runs"].items() if v) + ".", "",
             "| cascade | users/s | seconds |", "|---|---|---|"]
    for name, row in result["e2e"].items():
        lines.append(f"| {name} | {row['users_per_second']} | {row['seconds']} |")
    if result.get("per_candidate"):
        lines += ["", f"Ranker cost, `score_candidates` of {cfg['batch']} users × M candidates (median of "
                  f"{cfg['repeats']}, {cfg['threads']} thread, max_rows {cfg['max_rows']}), µs per candidate:", "",
                  "| stage | model | M = 100 | M = 500 | M = 2000 |", "|---|---|---|---|---|"]
        for stage, row in result["per_candidate"].items():
            lines.append(f"| {stage} | {row['model']} | " + " | ".join(
                str(row[f"us_per_candidate@{m}"]) for m in (100, 500, 2000)) + " |")
    lines += ["", f"Command: `{result['command']}` (`bench/results/cascade_throughput.json`)."]
    write_section(ROOT / "docs" / "benchmarks.md", "cascade", "\n".join(lines), "bench/bench_cascade.py")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrieval")
    parser.add_argument("--fine")
    parser.add_argument("--coarse")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--retrieve-n", dest="retrieve_n", type=int, default=500)
    parser.add_argument("--coarse-m", dest="coarse_m", type=int, default=100)
    parser.add_argument("--final", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-rows", dest="max_rows", type=int, default=16384)
    parser.add_argument("--docs-only", action="store_true")
    parser.add_argument("--machine-state", dest="machine_state", default="other jobs running: a lower bound",
                        help="how loaded the box was, for the docs (e.g. 'other jobs suspended')")
    args = parser.parse_args(argv)
    if args.docs_only:
        docs(json.loads(RESULT.read_text()))
        return
    torch.set_num_threads(args.threads)
    result = {"config": {"runs": {"retrieval": args.retrieval, "coarse": args.coarse, "fine": args.fine},
                         **{k: getattr(args, k) for k in ("users", "retrieve_n", "coarse_m", "final", "chunk",
                                                          "threads", "batch", "repeats", "max_rows")}},
              "e2e": e2e(args), "per_candidate": per_candidate(args), "torch": torch.__version__,
              "machine": platform.machine(), "machine_state": args.machine_state,
              "command": "python bench/bench_cascade.py " + " ".join(sys.argv[1:])}
    RESULT.write_text(json.dumps(result, indent=2))
    docs(result)


if __name__ == "__main__":
    main()
