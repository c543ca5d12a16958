"""DiffuMIN and QIN beside DIN on CPU: training samples/s, inference ms per 1 000 candidates, and
the share of DiffuMIN's training step spent in its C·(1 + T′) denoiser passes, at L = 50 and 1 000.

A training step = forward + BCE + the auxiliary losses + backward + Adam step on random ids
(timings do not depend on the values). Inference = eval-mode forward under no_grad of 1 000
candidate rows (each with its own history of length L), scored in chunks. Every model at its
paper defaults (DIN 64 + 64, [36] PReLU, MLP 200-80; DiffuMIN 8 + 8, C = 4, T′ = 10, DNN
1024-512-256 Dice; QIN the official QIN_variety_v9 sizes: embedding 128, 4 QNN layers × 4 rows,
BN, dropout 0.1). The denoiser share is measured twice: the wall time inside the denoiser's
forward calls (hooks) over the step, and 1 − step(use_dmig=False) / step (forward + backward of
DMIG and CMIC together). Writes bench/results/diffumin_cpu.json; ``--update-docs`` rewrites
the ``diffumin-qin-speed`` section of docs/benchmarks.md.

    python bench/bench_diffumin.py [--threads 1] [--batch 64] [--steps 5] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from bench_models import make_batch as random_batch   # bench/ is the script's folder
from recsys.contract import Batch
from recsys.models.base import FeatureSpec
from recsys.models.diffumin import DiffuMIN
from recsys.models.din import DIN
from recsys.models.qin import QIN

REPO = Path(__file__).resolve().parents[1]


def make_batch(features: FeatureSpec, batch: int, length: int, seed: int = 0) -> Batch:
    """bench_models' random batch with lengths uniform in [L/2, L] (long histories are mostly full)."""
    return random_batch(features, batch, length, seed, min_length=max(1, length // 2))


class DenoiserClock:
    """Wall seconds spent inside ``module``'s forward calls (forward hooks), and their count."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start
        self.calls += 1

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def train_steps(model: torch.nn.Module, batch: Batch, steps: int, warmup: int,
                clock: DenoiserClock = None) -> Tuple[float, float, int]:
    """(median step seconds, median denoiser-forward seconds per step, denoiser calls per step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    times, inside, calls = [], [], 0
    for i in range(warmup + steps):
        if clock is not None:
            clock.reset()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out.logit, batch.label) + sum(out.aux_losses.values())
        loss = loss + model.regularization(batch)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            if clock is not None:
                inside.append(clock.seconds)
                calls = clock.calls
    median = lambda xs: sorted(xs)[len(xs) // 2] if xs else 0.0   # noqa: E731
    return median(times), median(inside), calls


@torch.no_grad()
def inference_ms_per_1000(model: torch.nn.Module, batch: Batch, chunk: int, repeats: int,
                          clock: DenoiserClock = None) -> Tuple[float, float]:
    """(median ms to score 1 000 candidates, the denoiser's share of that time); ``batch`` has
    1 000 rows, scored ``chunk`` rows per forward."""
    model.eval()
    model(batch.slice(0, chunk))                       # warm-up
    runs = []
    for _ in range(repeats):
        if clock is not None:
            clock.reset()
        start = time.perf_counter()
        for a in range(0, batch.size, chunk):
            model(batch.slice(a, min(a + chunk, batch.size)))
        seconds = time.perf_counter() - start
        runs.append((seconds, clock.seconds / seconds if clock is not None else 0.0))
    seconds, share = sorted(runs)[len(runs) // 2]
    return seconds * 1e3 * 1000 / batch.size, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="training batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 1000])
    parser.add_argument("--update-docs", action="store_true", help="rewrite the section of docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    features = FeatureSpec(num_users=10_000, num_items=100_000, num_categories=1_000, max_length=max(args.lengths))
    makers = {
        "DIN (paper defaults)": lambda: DIN(features, attention_backend="torch"),
        "DiffuMIN (paper defaults)": lambda: DiffuMIN(features),
        "DiffuMIN use_dmig=False": lambda: DiffuMIN(features, use_dmig=False),
        "QIN (official sizes)": lambda: QIN(features, embedding_dim=128, num_layers=4, num_row=4, net_dropout=0.1,
                                            batch_norm=True, embedding_regularizer=0.0002),
    }
    rows: List[Dict] = []
    for length in args.lengths:
        train_batch = make_batch(features, args.batch, length)
        candidates = make_batch(features, 1000, length, seed=1)
        chunk = 250 if length <= 200 else 100
        step_of: Dict[str, float] = {}
        for name, make in makers.items():
            torch.manual_seed(0)
            model = make()
            clock = DenoiserClock(model.denoiser) if getattr(model, "use_dmig", False) else None
            step, inside, calls = train_steps(model, train_batch, args.steps, 1, clock)
            step_of[name] = step
            infer_ms, infer_share = inference_ms_per_1000(model, candidates, chunk, 3, clock)
            row = {"model": name, "L": length, "train_batch": args.batch, "step_ms": round(step * 1e3, 1),
                   "train_samples_per_s": round(args.batch / step), "inference_ms_per_1000": round(infer_ms, 1),
                   "parameters": sum(p.numel() for p in model.parameters())}
            if clock is not None:
                row.update(denoiser_calls_per_step=calls, denoiser_rows_per_call=model.num_channels * args.batch,
                           denoiser_forward_ms=round(inside * 1e3, 1),
                           denoiser_forward_share_of_step=round(inside / step, 3),
                           denoiser_share_of_inference=round(infer_share, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
        full, ablated = step_of["DiffuMIN (paper defaults)"], step_of["DiffuMIN use_dmig=False"]
        rows.append({"model": "DiffuMIN DMIG+CMIC share of the step (1 - no_dmig/full)", "L": length,
                     "share": round(1 - ablated / full, 3)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s), "
                        "2-core machine shared with other jobs",
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
              "command": "python bench/bench_diffumin.py " + " ".join(
                  f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
                  if k != "update_docs"),
              "steps": args.steps, "warmup": 1, "rows": rows}
    out = REPO / "bench" / "results" / "diffumin_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    if args.update_docs:
        from docs_section import write_section   # bench/ is the script's folder
        write_section(REPO / "docs" / "benchmarks.md", "diffumin-qin-speed", markdown(result),
                      "bench/bench_diffumin.py --update-docs")


def markdown(result: Dict) -> str:
    """The docs/benchmarks.md section: one table of every model row, then the DMIG shares."""
    lines = ["## DiffuMIN and QIN beside DIN (training and inference speed)", "",
             f"Device: {result['device']}; {result['date']}; torch {result['torch']}. Command:", "",
             f"```\n{result['command']} --update-docs\n```", "",
             "Random ids (timings do not depend on the values); training step = forward + BCE + auxiliary "
             "losses + backward + Adam, median of the steps; inference = eval-mode forward of 1 000 candidate "
             "rows, each with its own history. One thread on a shared 2-core box: indicative, compare rows "
             "of the same run only.", "",
             "| model | L | train samples/s | ms per 1 000 candidates | parameters | denoiser share (train fwd / inference) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "share" in r:
            continue
        share = (f"{r['denoiser_forward_share_of_step']:.0%} / {r['denoiser_share_of_inference']:.0%}"
                 if "denoiser_forward_share_of_step" in r else "")
        lines.append(f"| {r['model']} | {r['L']} | {r['train_samples_per_s']:,} | {r['inference_ms_per_1000']:,.1f} | "
                     f"{r['parameters']:,} | {share} |")
    shares = [r for r in result["rows"] if "share" in r]
    if shares:
        lines += ["", "DMIG + CMIC share of DiffuMIN's whole training step (forward and backward; "
                  "1 − step without DMIG / full step): " +
                  ", ".join(f"L = {r['L']}: {r['share']:.0%}" for r in shares) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
