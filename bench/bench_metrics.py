"""GAUC speed: recsys.metrics.group_auc (one lexsort, segment sums) vs the per-user loop
over scikit-learn's roc_auc_score that most libraries use.

Writes ``bench/results/metrics.json`` and, with ``--update-docs``, the ``## Metrics``
section of ``docs/benchmarks.md``. Run it under the shared lock:

    python bench/bench_metrics.py --update-docs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.metrics import group_auc  # noqa: E402

SECTION = "## Metrics"


def sklearn_loop(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> float:
    """Per-user roc_auc_score, weighted by the user's sample count (the usual GAUC loop)."""
    from sklearn.metrics import roc_auc_score
    order = np.argsort(g, kind="stable")
    y, s, g = y[order], s[order], g[order]
    bounds = np.flatnonzero(np.diff(g)) + 1
    total = weight = 0.0
    for ys, ss in zip(np.split(y, bounds), np.split(s, bounds)):
        if ys.min() != ys.max():
            total += len(ys) * roc_auc_score(ys, ss)
            weight += len(ys)
    return total / weight


def best_of(fn, repeats: int) -> "tuple[float, float]":
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def case(n_samples: int, n_users: int, repeats: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_users, n_samples)
    y = rng.integers(0, 2, n_samples)
    s = np.round(rng.random(n_samples) + 0.3 * y, 3)          # rounded: realistic ties
    ours_s, ours = best_of(lambda: group_auc(y, s, g).gauc, repeats)
    loop_s, loop = best_of(lambda: sklearn_loop(y, s, g), 1)
    assert abs(ours - loop) < 1e-9, (ours, loop)
    return {"samples": n_samples, "users": n_users, "recsys_seconds": round(ours_s, 4),
            "sklearn_loop_seconds": round(loop_s, 4), "speedup": round(loop_s / ours_s, 1), "gauc": ours}


def update_docs(results: dict, command: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    lines = [SECTION, "",
             f"GAUC over all users at once (`recsys.metrics.group_auc`) vs a per-user loop over "
             f"scikit-learn's `roc_auc_score`, same inputs, equal results (checked to 1e-9). "
             f"{results['date']}, {results['machine']} (shared 2-core CPU box), best of "
             f"{results['repeats']} for ours, one run for the loop. Command: `{command}`.", "",
             "| samples | users | recsys group_auc (s) | sklearn per-user loop (s) | speed-up |", "|---|---|---|---|---|"]
    for r in results["cases"]:
        lines.append(f"| {r['samples']:,} | {r['users']:,} | {r['recsys_seconds']:.3f} | "
                     f"{r['sklearn_loop_seconds']:.3f} | {r['speedup']}× |")
    from docs_section import write_section   # bench/ is the script's folder
    write_section(path, "metrics", "\n".join(lines), "bench/bench_metrics.py --update-docs")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["50000:10000", "1000000:10000"],
                        help="SAMPLES:USERS pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    cases = [case(*map(int, size.split(":")), repeats=args.repeats) for size in args.sizes]
    results = {"date": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "machine": platform.machine(),
               "repeats": args.repeats, "cases": cases}
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    if args.update_docs:
        update_docs(results, "python bench/bench_metrics.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
