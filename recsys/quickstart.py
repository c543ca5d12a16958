"""`recsys quickstart`: the main job end to end on built-in generated data.

Generates a UserBehavior-layout dataset with planted interests, builds DIN-protocol
samples, trains DIN, the pooled-history baseline (DIN's BaseModel) and FinalMLP on CPU,
evaluates them on the held-out test pairs and writes the HTML report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import yaml

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource

from .config import parse_config
from .report import write_report
from .runner import fit

# the pooled baseline comes first: the report's RelaImpr is measured against the first run
MODELS = {
    "pooled_baseline": ("EmbeddingMLP", {"item_dim": 16, "category_dim": 16, "mlp_units": [200, 80]}),
    "din": ("DIN", {"item_dim": 16, "category_dim": 16, "attention_units": [36], "attention_activation": "prelu",
                    "mlp_units": [200, 80]}),
    "finalmlp": ("FinalMLP", {"embedding_dim": 16, "mlp1_units": [400], "mlp2_units": [400], "fs_hidden_units": [64],
                              "num_heads": 10, "l2_embedding": 0.0}),
}


def data_config(out: Path, rows: int) -> DataConfig:
    return DataConfig(
        output=str(out / "data"),
        source=SourceConfig(format="synthetic", synthetic=SyntheticSource(
            n_rows=rows, n_items=20_000, n_categories=200, mean_events=40.0, interests_per_user=4, seed=0)),
        protocol=ProtocolConfig(name="din", max_length=50, validation=True, negatives="uniform", n_neg=1),
        partitions=4, seed=0)


def run_quickstart(out: Path = Path("runs/quickstart"), rows: int = 600_000, epochs: int = 1,
                   models: List[str] = list(MODELS), progress: bool = True) -> Path:
    started = time.perf_counter()
    out = Path(out)
    data_dir = build_dataset(data_config(out, rows), overwrite=False, progress=progress)
    run_dirs = []
    for key in models:
        class_path, init_args = MODELS[key]
        raw = {"name": key, "output_dir": str(out / key), "seed": 0,
               "data": {"path": str(data_dir), "batch_size": 1024, "eval_batch_size": 8192},
               "model": {"class_path": class_path, "init_args": init_args},
               "optimizer": {"name": "adam", "lr": 1e-3},
               "trainer": {"max_epochs": epochs, "gradient_clip_val": 5.0, "val_check_interval": 0.25}}
        (out / f"{key}.yaml").parent.mkdir(parents=True, exist_ok=True)
        (out / f"{key}.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        if progress:
            print(f"\n== training {key} ({class_path}) ==")
        # a second quickstart retrains: its runs replace the previous ones
        run_dirs.append(fit(parse_config(raw, str(out / f"{key}.yaml")), progress=progress, overwrite=True))
    report = write_report(run_dirs, out / "report", title="recsys quickstart: DIN vs pooled history on planted data")
    if progress:
        print(f"\nquickstart finished in {time.perf_counter() - started:.0f} s")
    return report
