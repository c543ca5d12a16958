"""Candidate retrieval speed: users/s of the FAISS stage at 1M items, exact vs IVF vs HNSW.

Generated data (no model: the stage only sees vectors): ``--items`` item vectors of width
``--dim`` drawn around 1000 cluster centres with log-normal norms (so maximum inner
product differs from nearest neighbour), and users of ``--interests`` K interest vectors,
each near a random centre. Every index is searched through
:func:`recsys.retrieval.search.multi_interest_search` (K × top-N, merge, de-duplicate), the
path ``recsys retrieve`` takes, in chunks of ``--chunk`` users.

Measured, interleaved with the work so other processes on the machine load both alike:

* ``gemm_gflops``: the machine's float32 GEMM rate (numpy/BLAS, 2048³, best of 3) right
  before each exact measurement, with the same thread count;
* exact search's effective rate ``users · K · items · dim · 2 / s`` against it (the issue's
  goal: at least half), with FAISS's default BLAS blocks and the stage's
  (``EXACT_QUERY_BLOCK`` × ``EXACT_ITEM_BLOCK``);
* users/s of each index and, for IVF and HNSW, recall@N of the merged top-N against the
  exact one over the first ``--recall-users`` users (goal for HNSW: >= 10x exact's users/s
  at recall >= 0.95).

    python bench/bench_retrieval.py --update-docs          # 1M items, K = 4, N = 200

Writes bench/results/retrieval.json (and the ``retrieval`` section of docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.retrieval import index as index_module  # noqa: E402
from recsys.retrieval.index import IndexConfig, build_index  # noqa: E402
from recsys.retrieval.search import multi_interest_search  # noqa: E402


def generate(items: int, dim: int, users: int, k: int, seed: int) -> "tuple[np.ndarray, np.ndarray]":
    """(item vectors [items + 2, dim], interests [users, k, dim]) float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32) / np.sqrt(dim)
    vectors = np.empty((items + 2, dim), np.float32)
    for start in range(0, items + 2, 262_144):          # in blocks: bounded temporaries
        n = min(262_144, items + 2 - start)
        block = centres[rng.integers(0, 1000, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32) / np.sqrt(dim)
        vectors[start:start + n] = block * np.exp(0.25 * rng.normal(size=(n, 1))).astype(np.float32)
    interests = centres[rng.integers(0, 1000, (users, k))] + \
        0.5 * rng.normal(size=(users, k, dim)).astype(np.float32) / np.sqrt(dim)
    return vectors, interests.astype(np.float32)


def gemm_gflops(size: int = 2048, repeat: int = 3) -> float:
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    best = 0.0
    for _ in range(repeat):
        started = time.perf_counter()
        a @ a
        best = max(best, 2 * size ** 3 / (time.perf_counter() - started) / 1e9)
    return best


def run_search(index, interests: np.ndarray, top_n: int, chunk: int,
               per_interest: "int | None" = None) -> "tuple[np.ndarray, float]":
    """(merged top-N items [U, N], seconds)."""
    parts = []
    started = time.perf_counter()
    for s in range(0, len(interests), chunk):
        parts.append(multi_interest_search(index, interests[s:s + chunk], top_n, per_interest).items)
    return np.concatenate(parts), time.perf_counter() - started


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean |approx ∩ exact| / N per user (of the merged top-N lists)."""
    n = exact.shape[1]
    width = int(max(approx.max(), exact.max())) + 1
    rows = np.arange(len(exact))[:, None] * width
    return float(np.isin(approx + rows, exact + rows).sum(axis=1).mean() / n)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--top-n", type=int, default=200)
    parser.add_argument("--exact-users", type=int, default=512, help="users searched exactly (timed)")
    parser.add_argument("--approx-users", type=int, default=4096, help="users searched by IVF / HNSW (timed)")
    parser.add_argument("--recall-users", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=512, help="users per search call")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--nlist", type=int, default=None)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--hnsw-m", type=int, default=IndexConfig().m)
    parser.add_argument("--ef-construction", type=int, default=IndexConfig().ef_construction)
    parser.add_argument("--ef-search", nargs="+", default=["256", "512", "1024"],
                        help="HNSW efSearch values, each optionally EF:PER_INTEREST (items searched per interest; "
                             "default top-n)")
    parser.add_argument("--approx", nargs="*", default=["ivf", "hnsw"], choices=["ivf", "hnsw"],
                        help="approximate indexes to measure (exact is always measured: the reference)")
    parser.add_argument("--exact-blocks", nargs="+", default=["4096:1024", "1024:32768"], metavar="QUERIES:ITEMS",
                        help="FAISS BLAS block sizes to time exact search with (4096:1024 is FAISS's default); "
                             "the stage's own (recsys.retrieval.index.EXACT_*_BLOCK) is always added")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "retrieval.json"))
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--docs-only", nargs="+", metavar="JSON",
                        help="write the docs section from saved result files (one table each), measure nothing")
    args = parser.parse_args(argv)
    if args.docs_only:
        results = [dict(json.loads(Path(p).read_text()), out=str(p)) for p in args.docs_only]
        update_docs(results)
        return results[0]
    faiss.omp_set_num_threads(args.threads)
    users = max(args.exact_users, args.approx_users, args.recall_users)
    started = time.perf_counter()
    vectors, interests = generate(args.items, args.dim, users, args.interests, args.seed)
    print(f"generated {args.items} items, {users} users in {time.perf_counter() - started:.1f} s", flush=True)
    flops_per_user = 2 * args.interests * args.items * args.dim
    result = {"items": args.items, "dim": args.dim, "interests": args.interests, "top_n": args.top_n,
              "threads": args.threads, "chunk_users": args.chunk, "faiss_version": faiss.__version__,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "load_average_at_start": os.getloadavg(), "command": "python bench/bench_retrieval.py " +
              " ".join(sys.argv[1:] if argv is None else argv),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "indexes": []}

    # ---------------------------------------------------------------- exact
    started = time.perf_counter()
    flat = build_index(vectors, IndexConfig("flat"))
    build_seconds = time.perf_counter() - started
    exact_users = interests[:args.exact_users]
    stage_blocks = (index_module.EXACT_QUERY_BLOCK, index_module.EXACT_ITEM_BLOCK)
    block_settings = [tuple(int(x) for x in b.split(":")) for b in args.exact_blocks]
    if stage_blocks not in block_settings:
        block_settings.append(stage_blocks)
    stage_entry = None
    for blocks in block_settings:
        label = "flat" if blocks == stage_blocks else \
            "flat (FAISS default blocks)" if blocks == (4096, 1024) else f"flat (blocks {blocks[0]}x{blocks[1]})"
        saved = index_module.EXACT_QUERY_BLOCK, index_module.EXACT_ITEM_BLOCK
        index_module.EXACT_QUERY_BLOCK, index_module.EXACT_ITEM_BLOCK = blocks
        gemm = gemm_gflops()
        try:
            run_search(flat, exact_users[:16], args.top_n, args.chunk)           # warm-up: buffers, threads
            exact, seconds = run_search(flat, exact_users, args.top_n, args.chunk)
        finally:
            index_module.EXACT_QUERY_BLOCK, index_module.EXACT_ITEM_BLOCK = saved
        gemm_after = gemm_gflops()
        rate = len(exact_users) / seconds
        entry = {"index": label, "factory": "Flat", "blas_blocks": list(blocks), "build_seconds": round(build_seconds, 2),
                 "users": len(exact_users), "seconds": round(seconds, 3), "users_per_second": round(rate, 1),
                 "effective_gflops": round(rate * flops_per_user / 1e9, 2),
                 "gemm_gflops_before": round(gemm, 2), "gemm_gflops_after": round(gemm_after, 2)}
        entry["share_of_gemm"] = round(entry["effective_gflops"] / max(gemm, gemm_after), 3)
        result["indexes"].append(entry)
        print(json.dumps(entry), flush=True)
        if blocks == stage_blocks:
            stage_entry, reference = entry, exact[:args.recall_users]
    exact_rate = stage_entry["users_per_second"]        # the stage's setting: what recsys retrieve runs

    # ---------------------------------------------------------------- approximate
    approx_users = interests[:args.approx_users]
    for config, name, values in [(IndexConfig("ivf", nlist=args.nlist), "nprobe", args.nprobe),
                                 (IndexConfig("hnsw", m=args.hnsw_m, ef_construction=args.ef_construction),
                                  "ef_search", args.ef_search)]:
        if config.kind not in args.approx:
            continue
        started = time.perf_counter()
        index = build_index(vectors, config)
        build_seconds = time.perf_counter() - started
        print(f"built {index.stamp['factory']} in {build_seconds:.1f} s", flush=True)
        for value in values:
            value, _, per_interest = str(value).partition(":")
            value, per_interest = int(value), int(per_interest) if per_interest else args.top_n
            index.set_search_params(**{name: value})
            run_search(index, approx_users[:16], args.top_n, args.chunk, per_interest)
            found, seconds = run_search(index, approx_users, args.top_n, args.chunk, per_interest)
            rate = len(approx_users) / seconds
            entry = {"index": config.kind, "factory": index.stamp["factory"], name: value,
                     "per_interest": per_interest, **({"m": config.m, "ef_construction": config.ef_construction}
                                                      if config.kind == "hnsw" else {}),
                     "build_seconds": round(build_seconds, 2), "users": len(approx_users),
                     "seconds": round(seconds, 3), "users_per_second": round(rate, 1),
                     "speedup_vs_exact": round(rate / exact_rate, 2),
                     f"recall@{args.top_n}_vs_exact": round(recall(found[:args.recall_users], reference), 4)}
            result["indexes"].append(entry)
            print(json.dumps(entry), flush=True)
        del index
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    if args.update_docs:
        update_docs([dict(result, out=args.out)])
    return result


def _table(result: dict) -> list:
    n = result["top_n"]
    lines = [f"`{result['command']}` ({result['date']}, {result['threads']} threads, load average "
             f"{result['load_average_at_start'][0]:.1f} at start; `bench/results/{Path(result['out']).name}`):", "",
             f"| index | parameters | build s | users/s | vs exact | recall@{n} vs exact | effective GFLOP/s | "
             "GEMM GFLOP/s | share of GEMM |", "|---|---|---|---|---|---|---|---|---|"]
    for e in result["indexes"]:
        params = ", ".join(f"{k} {e[k]}" for k in ("nprobe", "ef_search", "per_interest") if k in e) or \
            f"BLAS blocks {e['blas_blocks'][0]}×{e['blas_blocks'][1]}"
        exact = e["index"].startswith("flat")
        gemm = f"{max(e['gemm_gflops_before'], e['gemm_gflops_after']):.1f}" if exact else ""
        lines.append(f"| {e['factory']} ({e['index']}) | {params} | {e['build_seconds']} | {e['users_per_second']} | "
                     f"{e.get('speedup_vs_exact', '')} | {e.get(f'recall@{n}_vs_exact', 1.0)} | "
                     f"{e.get('effective_gflops', '')} | {gemm} | {e.get('share_of_gemm', '')} |")
    return lines + [""]


def _goals(results: list) -> list:
    """The issue's goals, checked against every run's numbers."""
    n = results[0]["top_n"]
    shares = [e["share_of_gemm"] for r in results for e in r["indexes"] if e["index"] == "flat"]
    approx = [(e, r) for r in results for e in r["indexes"] if "speedup_vs_exact" in e]
    defaults = [e["share_of_gemm"] for r in results for e in r["indexes"] if "default" in e["index"]]
    out = ["Goals:", "", f"- Exact search at least half the measured GEMM rate: share {', '.join(map(str, shares))} "
           f"({'met' if min(shares) >= 0.5 else f'met in {sum(x >= 0.5 for x in shares)} of {len(shares)} runs'}" +
           (f"; FAISS's default blocks reach {max(defaults)})." if defaults else ").")]
    for kind in ("hnsw", "ivf"):
        runs = [(e, r) for e, r in approx if e["index"] == kind]
        if not runs:
            continue
        good = [(e, r) for e, r in runs if e[f"recall@{n}_vs_exact"] >= 0.95]
        best = max(good, key=lambda x: x[0]["speedup_vs_exact"])[0] if good else None
        top = max(runs, key=lambda x: x[0][f"recall@{n}_vs_exact"])[0]
        what = (f"fastest setting with recall@{n} >= 0.95: {best['factory']} "
                f"{', '.join(f'{k} {best[k]}' for k in ('nprobe', 'ef_search', 'per_interest') if k in best)}, "
                f"{best['speedup_vs_exact']}x exact") if best else \
            f"no setting reached recall@{n} 0.95 (best {top[f'recall@{n}_vs_exact']} at {top['speedup_vs_exact']}x)"
        met = best is not None and best["speedup_vs_exact"] >= 10
        out.append(f"- {kind.upper()} at least 10x exact with recall@{n} >= 0.95: {'met' if met else 'not met'} ({what}).")
    out += ["", "The share of GEMM moves with the GEMM reading (the larger of the two taken around each exact "
            "measurement; 310-361 GFLOP/s in these runs), so at about 0.5 the exact goal is "
            "borderline: the stage's block shape is the fastest in users/s of the shapes swept "
            "(`--exact-blocks`; `bench/results/retrieval_exact_blocks.json`).",
            "", "Why HNSW misses its goal here: every interest needs its own top 200, and a graph search "
            "returns its best `ef_search` candidates, so `ef_search` must be well above 200 for the tail of "
            "the list (with M 64, recall 0.94 at ef_search 384 and 0.97 at 512), and each of the K x users "
            "queries is a separate walk of the graph. Exact search is one batched GEMM per block at about "
            "half the machine's GEMM rate: 10x exact would be 13,000-14,000 graph searches with ef_search "
            "above 384 a second on 2 cores. Within a cluster this generated data is an isotropic 64-d "
            "Gaussian (the generator's noise, times a per-item norm), so its intrinsic dimension is the full 64; we have not measured "
            "HNSW on lower-dimensional item vectors. IVF's cells follow its planted clusters, which flatters "
            "IVF. On a real item tower, measure with `recsys index` and the same script before choosing."]
    return out


def update_docs(results: list) -> None:
    from docs_section import write_section   # bench/ is the script's folder
    first = results[0]
    n = first["top_n"]
    lines = ["## Candidate retrieval (FAISS stage)", "",
             f"{first['items']:,} generated items (1000 clusters, log-normal norms), d = {first['dim']}, "
             f"K = {first['interests']} interests × top-{n} each, merged to top-{n} "
             "(`recsys.retrieval.search.multi_interest_search`, the path of `recsys retrieve`; users/s include "
             f"the merge), FAISS {first['faiss_version']}, on the shared {first['cpus']}-CPU box. Exact search's "
             "effective rate (`users · K · items · d · 2` flops per second) is held against the float32 GEMM rate "
             "(numpy, 2048³) measured just before and after it; recall is that of the merged top-N against "
             "exact search's, over the first 512 users. HNSW searches the inner product through the L2 "
             "reduction (`docs/retrieval.md`).", ""]
    for result in results:
        lines += _table(result)
    lines += _goals(results)
    write_section(REPO / "docs" / "benchmarks.md", "retrieval", "\n".join(lines), "bench/bench_retrieval.py")


if __name__ == "__main__":
    main()
