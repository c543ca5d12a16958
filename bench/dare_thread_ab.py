"""Per-step training time of DARE at 1 vs 2 torch threads, steps interleaved on the same batches.

Run it beside the machine's usual load (not under the benchmark lock): it shows what a
2-thread intra-op pool costs on an oversubscribed 2-core box, the cause of session 1's slow
DARE runs (docs/results.md § DARE).

Usage: python bench/dare_thread_ab.py [--data runs/data/dare_synthetic] [--steps 24]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.loader import SampleLoader
from recsys.models.base import FeatureSpec
from recsys.models.dare import DARE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/data/dare_synthetic")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    dataset = BuiltDataset.open(args.data)
    features = FeatureSpec(num_users=dataset.num_users, num_items=dataset.num_items,
                           num_categories=dataset.num_categories, num_behaviors=dataset.num_behaviors,
                           max_length=dataset.max_length)
    batches = []
    for batch in SampleLoader(dataset, "train", args.batch, max_length=dataset.max_length, shuffle=True, seed=0,
                              drop_last=True):
        batches.append(batch)
        if len(batches) >= args.steps:
            break
    torch.manual_seed(0)
    model = DARE(features, variant="dare")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    times = {1: [], 2: []}
    for i, batch in enumerate(batches):
        for threads in ((1, 2) if i % 2 else (2, 1)):   # alternate the order: same drift for both
            torch.set_num_threads(threads)
            start = time.perf_counter()
            out = model(batch)
            loss = (F.binary_cross_entropy_with_logits(out.logit, batch.label) + sum(out.aux_losses.values())
                    + model.regularization(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i >= 4:   # warm-up
                times[threads].append(time.perf_counter() - start)
    for threads, values in times.items():
        median = statistics.median(values)
        print(f"threads {threads}: {1000 * median:.1f} ms/step median of {len(values)} (max {1000 * max(values):.0f}), "
              f"{args.batch / median:.0f} samples/s")


if __name__ == "__main__":
    main()
