"""Training-step throughput of the ranking models on CPU, and DIN with the decomposed
attention (ours) against the same DIN with FuxiCTR's naive [B, L, 4D] concatenation.

A training step = forward + BCE + regularization + backward + Adam step, on random ids
(the timing does not depend on the values). Writes bench/results/models_<device>.json and
replaces the "## Models" section of docs/benchmarks.md.

    python bench/bench_models.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from recsys.contract import Batch
from recsys.models.base import FeatureSpec
from recsys.models.din import DIN
from recsys.models.embedding_mlp import EmbeddingMLP
from recsys.models.finalmlp import FinalMLP

REPO = Path(__file__).resolve().parents[1]


def make_batch(features: FeatureSpec, batch: int, length: int, seed: int = 0, min_length: int = 1) -> Batch:
    """Random ids; history lengths uniform in [min_length, L]."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_length, length + 1, (batch,), generator=g)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    items = torch.randint(2, features.num_items, (batch, length), generator=g) * mask
    return Batch(user=torch.randint(2, features.num_users, (batch,), generator=g),
                 target_item=torch.randint(2, features.num_items, (batch,), generator=g),
                 target_category=torch.randint(2, features.num_categories, (batch,), generator=g),
                 label=torch.randint(0, 2, (batch,), generator=g).float(), lengths=lengths,
                 hist_item=items, hist_category=(items % (features.num_categories - 2) + 2) * mask)


def time_steps(model: torch.nn.Module, batch: Batch, steps: int, warmup: int) -> float:
    """Median seconds of one training step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    times: List[float] = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logit, batch.label) + model.regularization(batch)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and steps (a smoke run)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features = FeatureSpec(num_users=10_000, num_items=100_000, num_categories=1_000, max_length=1000)
    steps, warmup = (3, 1) if args.quick else (5, 1)
    shapes = [(256, 100)] if args.quick else [(256, 100), (256, 1000)]
    rows: List[Dict] = []
    for batch_size, length in shapes:
        batch = make_batch(features, batch_size, length)
        din_args = dict(item_dim=16, category_dim=16, attention_units=[36], mlp_units=[200, 80],
                        attention_backend="torch", l2_embedding=1e-5)
        candidates: Dict[str, Callable[[], torch.nn.Module]] = {
            "DIN (decomposed attention, ours)": lambda: DIN(features, **din_args),
            "DIN (naive [B,L,4D] concat, FuxiCTR form)": lambda: naive_din(DIN(features, **din_args)),
            "DIN+Dice (decomposed)": lambda: DIN(features, **{**din_args, "attention_activation": "dice",
                                                              "mlp_activation": "dice"}),
            "EmbeddingMLP (sum pooling)": lambda: EmbeddingMLP(features, item_dim=16, category_dim=16),
            "FinalMLP (paper defaults, D=10)": lambda: FinalMLP(features),
        }
        for name, make in candidates.items():
            torch.manual_seed(0)
            seconds = time_steps(make(), batch, steps, warmup)
            rows.append({"model": name, "batch": batch_size, "L": length, "step_ms": round(seconds * 1e3, 2),
                         "samples_per_s": round(batch_size / seconds)})
            print(json.dumps(rows[-1]), flush=True)
        # sanity: both attention forms give the same logits on identical weights
        torch.manual_seed(0)
        ours = DIN(features, **din_args).eval()
        naive = naive_din(DIN(features, **din_args)).eval()
        naive.load_state_dict(ours.state_dict())
        with torch.no_grad():
            assert torch.allclose(ours(batch).logit, naive(batch).logit, atol=1e-4)
    result = {"device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} threads, "
                        "2-core shared machine",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
              "command": "python bench/bench_models.py" + (" --quick" if args.quick else ""),
              "steps": steps, "warmup": warmup, "rows": rows}
    out = REPO / "bench" / "results" / "models_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_docs(result)
    print(f"wrote {out}")


def naive_din(model: DIN) -> DIN:
    """The same DIN whose attention runs FuxiCTR's concatenation form (the kernels' "naive"
    backend: [B, L, 4D] = [q, k, q − k, q ⊙ k] through the same MLP)."""
    model.attention.backend = "naive"
    return model


def write_docs(result: Dict) -> None:
    path = REPO / "docs" / "benchmarks.md"
    lines = ["## Models", "",
             f"Training-step throughput (forward + BCE + L2 + backward + Adam), median of {result['steps']} steps "
             f"after {result['warmup']} warm-up. Device: {result['device']}; date {result['date']}; torch "
             f"{result['torch']}. Command: `{result['command']}`. Raw: `bench/results/models_cpu.json`. "
             "DIN: 16+16 embeddings, attention [36] PReLU, MLP [200, 80]; the naive row is the same model "
             "with FuxiCTR's [B, L, 4D] concatenation, measured in the same run. CPU only: no GPU numbers. "
             "Tests of other engineers can run outside the benchmark lock on this 2-core box, so single rows "
             "are noisy (medians of few steps); read ratios between rows of the same shape with care.", "",
             "| model | B | L | ms / step | samples / s |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['L']} | {r['step_ms']} | {r['samples_per_s']} |"
              for r in result["rows"]]
    from docs_section import write_section   # bench/ is the script's folder
    write_section(path, "models", "\n".join(lines), "bench/bench_models.py")


if __name__ == "__main__":
    main()
