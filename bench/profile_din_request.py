"""Where the goal request's model time goes: DIN at its defaults, 100 candidates × L = 50, one
thread. Times the activation unit's one GEMM shape on its own ([M, D] × [D, L·H1] per user) and
profiles ``DIN.score_candidates`` over the same requests as bench/bench_serving.py (torch.profiler,
self CPU time per op). Writes bench/results/din_request_profile.json.

    python bench/profile_din_request.py [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_serving import GOAL, make_requests, make_scorer  # noqa: E402


def gemm_ms(m: int, d: int, n: int, repeats: int = 300) -> float:
    """Mean ms of one [1, m, d] × [1, d, n] bmm after a warm-up."""
    a, b = torch.randn(1, m, d), torch.randn(1, d, n)
    for _ in range(20):
        torch.bmm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(a, b)
    return (time.perf_counter() - started) / repeats * 1e3


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "din_request_profile.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from recsys.serving.request import Request
    scorer = make_scorer(GOAL["model"], 100_000, GOAL["history"])
    model = scorer.model
    d = model.embedding.dim
    units = model.attention.linears[0].out_features
    m, length = GOAL["candidates"], GOAL["history"]
    gemm = gemm_ms(m, d, length * units)
    flop = 2 * m * d * length * units
    encoded = [scorer.encoder.encode([Request(h, c, u)], ["request"])
               for h, c, u in make_requests(100_000, length, m, args.requests)]
    from torch.profiler import profile
    with torch.inference_mode():
        for e in encoded[:10]:
            model.score_candidates(e.batch, e.candidates)
        started = time.perf_counter()
        for e in encoded:
            model.score_candidates(e.batch, e.candidates)
        per_request = (time.perf_counter() - started) / len(encoded) * 1e3
        with profile() as prof:
            for e in encoded:
                model.score_candidates(e.batch, e.candidates)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "self_ms_per_request": round(e.self_cpu_time_total / 1e3 / len(encoded), 4),
            "share": round(e.self_cpu_time_total / total, 3), "calls_per_request": e.count // len(encoded)}
           for e in events[:12]]
    result = {"command": "python bench/profile_din_request.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "request": {"candidates": m, "history": length, "D": d, "H1": units}, "threads": 1,
              "gemm": {"shape": f"[{m}, {d}] x [{d}, {length * units}]", "mflop": round(flop / 1e6, 1),
                       "ms": round(gemm, 3), "gflop_per_s": round(flop / gemm / 1e6, 1)},
              "score_candidates_ms_per_request": round(per_request, 3),
              "ops_per_request": sum(e.count for e in events) // len(encoded), "top_ops": ops,
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("gemm", "score_candidates_ms_per_request", "ops_per_request")}))
    for op in ops[:8]:
        print(op)
    return result


if __name__ == "__main__":
    main()
