"""Search time of DARE per attention width D_A, measured apart from training.

One batch of test samples of a built dataset (default: the full-size generated data,
L = 200), eval mode, no gradients, ``torch.set_num_threads`` threads (default 1). For each
model it reports the median over ``--repeats`` of

    score+top-k ms   stage 1 and 2 alone (``kernels.topk_target_attention`` on embeddings
                     already gathered): the [B, L, D_A] x [B, D_A] scores, top-k, softmax
                     over k and the [B, k, D_R] pooling;
    gather ms        the embedding gathers of q, K, v_t, V (what the search reads);
    search ms        both, as ``DARE.search_and_pool`` runs them.

Run it under the benchmark lock on an otherwise idle machine:
    flock <bench lock file> python bench/dare_search_timing.py --json bench/results/dare_search_timing.json
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

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.models.base import FeatureSpec
from recsys.models.dare import DARE

MODELS = {   # name: constructor arguments (widths 16 per field, D_R = 48)
    "dare (D_A = D_R = 48)": {"variant": "dare"},
    "dare (D_A = 24 = ½ D_R)": {"variant": "dare", "attention_item_dim": 8, "attention_category_dim": 8,
                                "attention_position_dim": 8},
    "dare (D_A = 12 = ¼ D_R)": {"variant": "dare", "attention_item_dim": 4, "attention_category_dim": 4,
                                "attention_position_dim": 4},
    "twin (48)": {"variant": "twin"},
}


def median_ms(fn, repeats: int) -> float:
    fn()   # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/data/dare_synthetic")
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dataset = BuiltDataset.open(args.data)
    features = FeatureSpec(num_users=dataset.num_users, num_items=dataset.num_items,
                           num_categories=dataset.num_categories, num_behaviors=dataset.num_behaviors,
                           max_length=dataset.max_length)
    batch = next(iter(SampleLoader(dataset, "test", args.batch, max_length=dataset.max_length)))
    rows = []
    with torch.no_grad():
        for name, kwargs in MODELS.items():
            model = DARE(features, attention_backend="torch", **kwargs).eval()
            q, keys, _, values = model._embed(batch)
            q = model._scaled_query(q)
            rows.append({
                "model": name, "d_a": keys.shape[-1], "d_r": values.shape[-1],
                "score_topk_ms": median_ms(lambda: model._two_stage(q, keys, values, batch), args.repeats),
                "gather_ms": median_ms(lambda: model._embed(batch), args.repeats),
                "search_ms": median_ms(lambda: model.search_and_pool(batch), args.repeats),
            })
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "threads": args.threads, "batch": int(batch.size), "L": int(batch.hist_item.shape[1]),
            "repeats": args.repeats, "data": args.data, "torch": torch.__version__}
    print(json.dumps(meta))
    print("| model | D_A / D_R | score + top-k + pool ms | embedding gathers ms | search_and_pool ms |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['d_a']} / {r['d_r']} | {r['score_topk_ms']:.1f} | {r['gather_ms']:.1f} | "
              f"{r['search_ms']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
