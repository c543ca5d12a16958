"""Run our training (``recsys.runner.fit``) with the training epochs timed apart from validation.

``metrics.json``'s ``train_samples_per_second`` divides by the whole ``trainer.fit`` wall time,
validation included; the peer comparison needs the training epochs alone (FuxiCTR's side
is timed the same way), so a Lightning callback sums the validation time and
``timing.json`` in the run directory records::

    train_seconds             on_train_start → on_train_end minus validation
    validation_seconds        summed validation passes
    train_samples             samples seen by training_step
    train_samples_per_second

    python bench/peers/run_ours.py configs/din_amazon_beauty.yaml --seed 0 --epochs 1 \\
        --threads 1 --output-dir runs/peers/din_seed0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

from recsys import runner  # noqa: E402
from recsys.config import load_config  # noqa: E402


class EpochTimer(L.pytorch.callbacks.Callback):
    """Wall time of training minus the validation passes inside it."""

    def __init__(self) -> None:
        self.train_started = self.train_ended = None
        self.validation = 0.0
        self._val_started = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.train_started = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.train_ended = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_started is not None:
            self.validation += time.perf_counter() - self._val_started
            self._val_started = None

    @property
    def train_seconds(self) -> float:
        return (self.train_ended - self.train_started) - self.validation


def fit_timed(config_path: str, overrides: dict, shuffle_block: "int | None" = None) -> Path:
    timer = EpochTimer()
    if shuffle_block is not None:
        # the loader's two-level block shuffle (default blocks of 65,536 samples) on a
        # user-sorted sample table gives each block of batches a narrow user range; FuxiCTR
        # permutes the whole split, so the comparison can ask for blocks that cover it
        overrides = {**overrides, "data.shuffle_block": shuffle_block}
    base = L.Trainer

    class TimedTrainer(base):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=list(callbacks or []) + [timer], **kwargs)

    L.Trainer = TimedTrainer   # runner.fit builds its Trainer through the lightning module
    try:
        out = runner.fit(load_config(config_path, overrides), progress=False)
    finally:
        L.Trainer = base
    metrics = json.loads((out / "metrics.json").read_text())
    samples = int(metrics["train_samples"])
    timing = {"train_seconds": round(timer.train_seconds, 3), "validation_seconds": round(timer.validation, 3),
              "train_samples": samples,
              "train_samples_per_second": round(samples / max(timer.train_seconds, 1e-9), 1),
              "epochs": metrics.get("epochs"), "torch_threads": metrics.get("torch_threads")}
    (out / "timing.json").write_text(json.dumps(timing, indent=2))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a run config (configs/<model>_<dataset>.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the config's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (trainer.num_threads)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--shuffle-block", type=int, default=None,
                        help="loader shuffle block (default: the loader's); >= the split size = a full permutation")
    args = parser.parse_args(argv)
    overrides = {"seed": args.seed, "output_dir": args.output_dir, "trainer.num_threads": args.threads,
                 "data.num_workers": 0}
    if args.epochs is not None:
        overrides["trainer.max_epochs"] = args.epochs
    out = fit_timed(args.config, overrides, args.shuffle_block)
    print((out / "timing.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
