"""DARE on long histories: training samples/s and peak RSS at L in {200, 1000, 10000} on CPU.

Every configuration runs in its own subprocess (so peak RSS is that configuration's alone):
it draws jagged batches of users with exactly L behaviours (ids from a Zipf-like law over
the vocabulary, one batch generated per step and dropped after it: nothing of size
[dataset, L] is held), runs Adam training steps of ``models.dare.DARE`` through the kernels
path (topk_target_attention + attention_pooling, jagged input), and reports

    samples/s, behaviours/s, peak RSS (ru_maxrss of the subprocess), and the forward time
    of the two-stage search alone (eval mode, no aux head) = "search ms/batch".

Peers in the same run: TWIN (one table set, D_A = D_R), DARE with D_A = D_R/4, and DARE on
the padded layout. Batch sizes shrink with L so that a batch holds a bounded number of
behaviours (see BATCH). Run under the shared lock so timings are not polluted:

    python bench/bench_dare_long.py

Writes bench/results/dare_long.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = (200, 1000, 10000)
BATCH = {200: 256, 1000: 64, 10000: 8}        # ≤ 80k behaviours per batch
NUM_ITEMS, NUM_CATEGORIES = 200_000, 2_000
CONFIGS = {
    "dare": dict(variant="dare"),
    "twin": dict(variant="twin"),
    "dare_da_quarter": dict(variant="dare", attention_item_dim=4, attention_category_dim=4, attention_position_dim=4),
}


def make_batch(batch_size: int, length: int, gen, form: str):
    import torch
    from recsys.contract import Batch
    n = batch_size * length
    items = (torch.rand(n, generator=gen).pow(3) * (NUM_ITEMS - 2)).long() + 2
    cats = items % (NUM_CATEGORIES - 2) + 2
    lengths = torch.full((batch_size,), length, dtype=torch.int64)
    offsets = torch.arange(batch_size + 1, dtype=torch.int64) * length
    target = (torch.rand(batch_size, generator=gen).pow(3) * (NUM_ITEMS - 2)).long() + 2
    batch = Batch(user=torch.arange(batch_size), target_item=target, target_category=target % (NUM_CATEGORIES - 2) + 2,
                  label=(torch.rand(batch_size, generator=gen) < 0.33).float(), lengths=lengths, hist_item=items,
                  hist_category=cats, offsets=offsets)
    return batch if form == "jagged" else batch.to_padded()


def child(name: str, length: int, form: str, steps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F
    from recsys.models.base import FeatureSpec
    from recsys.models.dare import DARE
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    features = FeatureSpec(num_users=1000, num_items=NUM_ITEMS, num_categories=NUM_CATEGORIES, max_length=length)
    model = DARE(features, attention_backend="torch", **CONFIGS[name])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    bsz = BATCH[length]

    def step():
        batch = make_batch(bsz, length, gen, form)
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logit, batch.label) + sum(out.aux_losses.values())
        loss = loss + model.regularization(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step()                                            # warm-up (allocator, first-call costs)
    gen_time = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        make_batch(bsz, length, torch.Generator().manual_seed(1), form)   # batch generation cost, subtracted
        gen_time += time.perf_counter() - t
        step()
    train_s = time.perf_counter() - start - 2 * gen_time   # step() also generates one batch
    model.eval()
    search = []
    with torch.no_grad():
        batch = make_batch(bsz, length, gen, form)
        for _ in range(steps):
            t = time.perf_counter()
            model.search_and_pool(batch)
            search.append(time.perf_counter() - t)
    return {"model": name, "L": length, "form": form, "batch_size": bsz, "steps": steps, "threads": threads,
            "D_A": int(model.embeddings["attention"].dim if "attention" in model.embeddings else
                       model.embeddings["representation"].dim),
            "D_R": int(model.embeddings["representation"].dim),
            "samples_per_s": steps * bsz / train_s, "behaviours_per_s": steps * bsz * length / train_s,
            "search_ms_per_batch": 1000 * sorted(search)[len(search) // 2],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--models", nargs="+", default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--padded", action="store_true", help="also run DARE on the padded layout")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dare_long.json"))
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "L", "FORM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2], args.steps, args.threads)))
        return
    runs = [(m, L, "jagged") for L in args.lengths for m in args.models]
    if args.padded:
        runs += [("dare", L, "padded") for L in args.lengths]
    rows = []
    for model, length, form in runs:
        cmd = [sys.executable, __file__, "--child", model, str(length), form, "--steps", str(args.steps),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            rows.append({"model": model, "L": length, "form": form, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores shared, no GPU",
              "command": "python bench/bench_dare_long.py " + " ".join(sys.argv[1:]),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| model | layout | L | batch | D_A / D_R | train samples/s | behaviours/s | search ms/batch | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['form']} | {r['L']} | | | error: {r['error']} | | | |")
            continue
        print(f"| {r['model']} | {r['form']} | {r['L']} | {r['batch_size']} | {r['D_A']} / {r['D_R']} | "
              f"{r['samples_per_s']:.1f} | {r['behaviours_per_s']:.0f} | {r['search_ms_per_batch']:.1f} | "
              f"{r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
