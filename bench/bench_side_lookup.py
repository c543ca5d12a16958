"""Item side fields: look them up in the model (``ItemSideTable`` buffers, by item id) or
gather them in the numpy loader and ship them in the batch?

For one training batch (B targets, B × L history behaviours) both ways gather the same
values: genres ids [A], brand id, price, a content vector [d] per item. Measured per batch:

Calls are interleaved round-robin (medians), so load from other processes hits each alike.

* ``model``: ``ItemSideTable.lookup`` of every side field for the target ids [B] and the
  history ids [B, L] (torch indexing of the buffers); the batch carries the ids only.
* ``loader``: numpy fancy indexing of the same tables by the same ids (what
  ``SampleLoader`` would add per batch), then ``torch.from_numpy``; plus ``ship``, one
  copy of the gathered arrays (what a DataLoader worker → main process hand-off, or
  pinning, costs at the least: the bytes must move once more).
* ``bytes_per_batch``: what the batch carries in each design.

Then the full model-side path used in training: ``BehaviorEmbedding`` forward of target
and history with the side fields (lookup + embedding), for scale.

    python bench/bench_side_lookup.py [--quick] [--threads 1]

Writes bench/results/side_lookup_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from recsys.contract import FeatureSpec, FieldSpec, core_fields
from recsys.models.layers.embedding import BehaviorEmbedding
from recsys.models.layers.features import ItemSideTable

REPO = Path(__file__).resolve().parents[1]


def spec(num_items: int, genres: int, dim: int, length: int) -> FeatureSpec:
    side = (FieldSpec("genres", "ids", "item", size=1000, max_values=genres),
            FieldSpec("brand", "id", "item", size=5000),
            FieldSpec("price", "number", "item", mean=10.0, std=5.0),
            FieldSpec("text", "dense", "item", size=dim, frozen=True))
    return FeatureSpec(core_fields(1000, num_items, 100) + side, length)


def tables(features: FeatureSpec, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = features.num_items
    genres = rng.integers(2, 1000, (n, features["genres"].max_values))
    genres[rng.random(genres.shape) < 0.4] = 0
    return {"genres": np.sort(genres, axis=1)[:, ::-1].copy(), "brand": rng.integers(2, 5000, n),
            "price": (rng.random(n) * 20).astype(np.float32),
            "text": rng.standard_normal((n, features["text"].size)).astype(np.float32)}


def median_ms(fns: dict, repeats: int) -> dict:
    """Median milliseconds of each function, calls interleaved round-robin so that load from
    other processes on a shared machine hits every method alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def run(batch: int, length: int, num_items: int, genres: int, dim: int, repeats: int) -> dict:
    features = spec(num_items, genres, dim, length)
    arrays = tables(features)
    side = ItemSideTable(features)
    side.attach({k: torch.from_numpy(v) for k, v in arrays.items()})
    rng = np.random.default_rng(1)
    target_np = rng.integers(2, num_items, batch)
    hist_np = rng.integers(2, num_items, (batch, length))
    target, hist = torch.from_numpy(target_np), torch.from_numpy(hist_np)

    def model_lookup():
        return [side.lookup(name, ids) for name in side.fields for ids in (target, hist)]

    def loader_gather():
        return [torch.from_numpy(arrays[name][ids]) for name in side.fields for ids in (target_np, hist_np)]

    gathered = loader_gather()

    def ship():
        return [t.clone() for t in gathered]

    embedding = BehaviorEmbedding(features, 16, 16, field_dim=16)
    categories = torch.randint(2, 100, hist.shape)

    def model_embed():
        with torch.no_grad():
            embedding(target, categories[:, 0], side)
            embedding(hist, categories, side)

    ids_bytes = target.numel() * 8 + hist.numel() * 8
    side_bytes = sum(t.numel() * t.element_size() for t in gathered)
    ms = median_ms({"model_lookup_ms": model_lookup, "loader_gather_ms": loader_gather,
                    "loader_ship_copy_ms": ship, "model_embed_with_side_fields_ms": model_embed}, repeats)
    return {
        "batch": batch, "length": length, "num_items": num_items, "genres_max_values": genres, "text_dim": dim,
        **ms,
        "bytes_per_batch_model": ids_bytes,
        "bytes_per_batch_loader": ids_bytes + side_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "side_lookup_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [(256, 50, 100_000, 5, 32)] if args.quick else \
        [(1024, 50, 1_000_000, 5, 64), (1024, 200, 1_000_000, 5, 64), (256, 1000, 1_000_000, 5, 64)]
    rows = [run(*case, repeats=3 if args.quick else 15) for case in cases]
    result = {
        "command": "python bench/bench_side_lookup.py" + (" --quick" if args.quick else "")
                   + f" --threads {args.threads}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"numpy {np.__version__}, {args.threads} thread(s)",
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    for row in rows:
        print(f"B={row['batch']} L={row['length']}: model lookup {row['model_lookup_ms']:.2f} ms, loader gather "
              f"{row['loader_gather_ms']:.2f} ms + ship copy {row['loader_ship_copy_ms']:.2f} ms; batch "
              f"{row['bytes_per_batch_model'] / 1e6:.2f} MB (ids) vs {row['bytes_per_batch_loader'] / 1e6:.2f} MB; "
              f"embed with side fields {row['model_embed_with_side_fields_ms']:.2f} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
