"""QIN's ASTA: the official evaluation order (K, V = W_k X_b, W_v X_b as [B, L, d_a]) against
the reassociated one (scores X_b (W_kᵀ Q), pooled W_v (aᵀ X_b)), forward + backward of one
training batch. Same parameters, same function (tests/test_models_qin.py).

Calls are interleaved round-robin (medians), so load from other processes hits each alike.

    python bench/bench_qin_attention.py [--batch 1024] [--length 50] [--dim 256] [--threads 1]

Writes bench/results/qin_attention_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from recsys.models.layers.quadratic import AdaptiveSparseTargetAttention


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--dim", type=int, default=256, help="d_i (QIN on Amazon: id + attributes, 2 x 128)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/qin_attention_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fast = AdaptiveSparseTargetAttention(args.dim, 2 * args.dim)
    slow = AdaptiveSparseTargetAttention(args.dim, 2 * args.dim, reassociate=False)
    slow.load_state_dict(fast.state_dict())
    target = torch.randn(args.batch, args.dim, requires_grad=True)
    history = torch.randn(args.batch, args.length, args.dim, requires_grad=True)
    mask = torch.arange(args.length).unsqueeze(0) < torch.randint(0, args.length + 1, (args.batch, 1))
    times = {"official_order": [], "reassociated": []}
    for _ in range(args.repeats):
        for name, module in (("official_order", slow), ("reassociated", fast)):
            start = time.perf_counter()
            module(target, history, mask).sum().backward()
            times[name].append(time.perf_counter() - start)
    result = {"command": "python bench/bench_qin_attention.py " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "repeats")),
              "batch": args.batch, "length": args.length, "dim": args.dim, "attention_dim": 2 * args.dim,
              "threads": args.threads, "repeats": args.repeats,
              "median_ms": {k: round(1000 * statistics.median(v), 2) for k, v in times.items()},
              "machine": platform.processor() or platform.machine(),
              "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    result["speedup"] = round(result["median_ms"]["official_order"] / result["median_ms"]["reassociated"], 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.partial")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
