"""Training-step cost of DESMIL against its ComiRec-SA backbone (issue 13).

One training step = ``RetrievalTask.training_step`` (interests, DESMIL's inner weight
optimisation, sampled softmax over shared popularity negatives with logQ) + backward +
Adam, on random batches of the configs' shape (B = 128, L = 20, D = 64, K = 4, 1280
negatives, Beauty's 12,103 item ids). Variants are timed round-robin (one step of each per
round, so load on a shared machine hits them alike) and the median per-step time is
reported; DESMIL's weights are also summarised (effective sample size 1 / Σ w² as a share
of B, B · max w, and the weighted HSIC of the last batch's interests, averaged over 20 fixed
Fourier draws, at uniform and at learned weights) to show how far they move from uniform.

    python bench/bench_desmil_cost.py [--threads 1] [--steps 40] [--out bench/results/desmil_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from recsys.config import OptimizerSection, RetrievalSection
from recsys.contract import Batch, FeatureSpec
from recsys.models import MODELS
from recsys.models.layers.stable_weights import fourier_draws
from recsys.retrieval_task import ItemProposal, RetrievalTask

VARIANTS = {
    "ComiRecSA": ("ComiRecSA", {}),
    "DESMIL": ("DESMIL", {}),
    "DESMIL_no_memory": ("DESMIL", {"memory": 0}),
    "DESMIL_pairs_all": ("DESMIL", {"pairs": "all"}),
    "DESMIL_5_inner_steps": ("DESMIL", {"inner_steps": 5}),
    "DESMIL_stablenet_rff": ("DESMIL", {"standardize": False}),
    "DESMIL_lambda_p_0.1": ("DESMIL", {"lambda_p": 0.1}),
    "DESMIL_lambda_p_0.01": ("DESMIL", {"lambda_p": 0.01}),
}


def random_batch(features: FeatureSpec, batch: int, generator: torch.Generator) -> Batch:
    length = features.max_length
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    items = torch.randint(2, features.num_items, (batch, length), generator=generator) * mask
    return Batch(user=torch.arange(batch), label=torch.ones(batch), lengths=lengths,
                 target={"item": torch.randint(2, features.num_items, (batch,), generator=generator),
                         "category": torch.full((batch,), 2)},
                 history={"item": items, "category": mask.long() * 2, "behavior": mask.long()},
                 sample_index=torch.arange(batch))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--interests", type=int, default=4)
    parser.add_argument("--items", type=int, default=12103)
    parser.add_argument("--negatives", type=int, default=1280)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/desmil_cost.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = FeatureSpec(num_users=args.batch + 2, num_items=args.items, num_categories=3, max_length=args.length)
    counts = np.random.default_rng(0).zipf(1.3, args.items).clip(max=10_000)
    proposal = ItemProposal("popularity", args.items, counts)
    retrieval = RetrievalSection(negatives="popularity", num_negatives=args.negatives, logq_correction=True)
    runs = {}
    for name, (cls, extra) in VARIANTS.items():
        model = MODELS[cls](features, embedding_dim=args.dim, num_interests=args.interests, **extra)
        task = RetrievalTask(model, OptimizerSection(lr=1e-3), retrieval, proposal)
        runs[name] = {"model": model, "task": task, "optimizer": torch.optim.Adam(model.parameters(), lr=1e-3),
                      "times": [], "losses": []}
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(features, args.batch, generator) for _ in range(8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                  # self.log outside a Trainer
        for step in range(args.warmup + args.steps):
            batch = batches[step % len(batches)]
            for run in runs.values():
                started = time.perf_counter()
                run["optimizer"].zero_grad()
                loss = run["task"].training_step(batch, step)
                loss.backward()
                run["optimizer"].step()
                if step >= args.warmup:
                    run["times"].append(time.perf_counter() - started)
                run["losses"].append(float(loss.detach()))
    base = statistics.median(runs["ComiRecSA"]["times"])
    results = {}
    for name, run in runs.items():
        median = statistics.median(run["times"])
        entry = {"median_step_ms": round(1000 * median, 2), "p90_step_ms": round(1000 * float(np.quantile(run["times"], 0.9)), 2),
                 "vs_ComiRecSA": round(median / base, 2), "last_loss": round(run["losses"][-1], 4)}
        model = run["model"]
        if hasattr(model, "reweighter"):
            model.train()
            with torch.no_grad():
                interests = model.extractor(*model.history(batches[0]))
            features = interests.reshape(args.batch, -1)
            uniform = torch.full((args.batch,), 1.0 / args.batch)
            draws = [fourier_draws(features.shape[1], model.reweighter.num_fourier,
                                   generator=torch.Generator().manual_seed(s)) for s in range(20)]

            def mean_hsic(w):   # over 20 fixed draws: one draw is too noisy to compare
                return float(np.mean([float(model.reweighter.hsic(features, w, d)) for d in draws]))

            entry["hsic_uniform_weights"] = mean_hsic(uniform)
            weights = model.reweighter(features)
            entry["hsic_learned_weights"] = mean_hsic(weights)
            entry["weights_effective_share"] = round(float(1.0 / weights.pow(2).sum() / args.batch), 4)
            entry["weights_max_times_B"] = round(float(weights.max() * args.batch), 4)
        results[name] = entry
    report = {
        "bench": "desmil_cost", "command": "python bench/bench_desmil_cost.py " + " ".join(argv or sys.argv[1:]),
        "config": {k: getattr(args, k) for k in ("batch", "length", "dim", "interests", "items", "negatives", "steps",
                                                  "warmup", "threads")},
        "torch": torch.__version__, "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2), "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
