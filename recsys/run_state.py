"""A run directory's state: finished, resumable, or empty (issue 16).

A run is *finished* when ``metrics.json`` exists: ``fit`` writes it last, through a
temporary name, after the weights, the predictions and the curves of the same training.
``fit`` into a directory that holds a run (finished or not) refuses unless told:

* ``overwrite``: the old run's files are removed first, ``metrics.json`` before anything
  else, so an interrupted fit can never leave the old run's metrics beside the new run's
  curves;
* ``resume``: training continues from ``checkpoints/last.ckpt`` (model, optimizer, epoch,
  early-stopping and best-checkpoint state, saved at every validation), provided the
  config is the one the run started with (``config.yaml`` is written when training starts).

An interrupted fit (SIGINT, SIGTERM) raises :class:`FitInterrupted`, one line that says
where it stopped and how to resume; the CLI prints it even under ``--quiet``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import yaml

from recsys.errors import CheckpointError, ConfigError, RecsysError
from recsys.run_fingerprint import DATA_FINGERPRINT, read_data_fingerprint

LAST_CHECKPOINT = "last"
# what fit writes into a run directory (removed by overwrite, metrics first)
RUN_FILES = ("metrics.json", "predictions", "model.safetensors", "model.json", "logs", "tensorboard",
             "checkpoints", "config.yaml")


class FitInterrupted(RecsysError):
    """Training was stopped by a signal; the run directory is resumable or empty."""


def last_checkpoint(out: Path) -> Path:
    return Path(out) / "checkpoints" / f"{LAST_CHECKPOINT}.ckpt"


def is_finished(out: Path) -> bool:
    return (Path(out) / "metrics.json").exists()


def holds_a_run(out: Path) -> bool:
    """Anything worth protecting: results, weights or a checkpoint (a fit that failed
    before its first checkpoint left only its config and logs, which a new fit replaces)."""
    out = Path(out)
    checkpoints = out / "checkpoints"
    return (is_finished(out) or (out / "model.safetensors").exists()
            or (checkpoints.is_dir() and any(checkpoints.iterdir())))


def prepare(out: Path, resolved_config: dict, overwrite: bool = False, resume: bool = False) -> Optional[Path]:
    """Make ``out`` ready for a fit; returns the checkpoint to resume from (or None).

    ``resolved_config`` is the run's config with every default filled in (what
    ``config.yaml`` holds)."""
    out = Path(out)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume exclude each other: overwrite starts the run over")
    if resume:
        return _resume_point(out, resolved_config)
    if holds_a_run(out) or any((out / name).exists() for name in RUN_FILES):
        if holds_a_run(out) and not overwrite:
            state = "a finished run" if is_finished(out) else (
                "an interrupted run (resume it with `recsys fit --resume " + str(out) + "`)"
                if last_checkpoint(out).exists() else "an unfinished run without a checkpoint")
            raise ConfigError(f"{out} already holds {state}; pass --overwrite to replace it "
                              "(or --output-dir for a new run)")
        for name in RUN_FILES:          # metrics.json first: never old metrics beside new curves
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, resolved_config)
    return None


def _resume_point(out: Path, resolved_config: dict) -> Path:
    if not (out / "config.yaml").exists():
        raise ConfigError(f"{out} holds no run to resume (no config.yaml)")
    if is_finished(out):
        raise ConfigError(f"{out} holds a finished run: nothing to resume (--overwrite trains it again)")
    try:
        saved = yaml.safe_load((out / "config.yaml").read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{out / 'config.yaml'}: not valid YAML ({exc})") from None
    # the run directory itself may be spelled differently (`--resume RUN`): it is the same run
    diff = {k: v for k, v in config_diff(saved or {}, _plain(resolved_config)).items() if k != "output_dir"}
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:5])
        raise ConfigError(f"--resume {out}: the config differs from the one the run started with ({shown}); "
                          "resume with the same config, or start over with --overwrite")
    ckpt = last_checkpoint(out)
    if not ckpt.exists():
        raise CheckpointError(f"{out}: no checkpoint to resume from ({ckpt} is missing: the run stopped before "
                              "its first validation); start over with --overwrite")
    check_resumable(ckpt)
    return ckpt


def config_diff(a: dict, b: dict, prefix: str = "") -> dict:
    """{dotted key: (a's value, b's value)} of the leaves that differ."""
    out = {}
    for key in sorted(set(a) | set(b), key=str):
        va, vb = a.get(key), b.get(key)
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(config_diff(va, vb, name + "."))
        elif va != vb:
            out[name] = (va, vb)
    return out


def _plain(config: dict) -> dict:
    """The config as config.yaml holds it (tuples as lists, ...)."""
    return yaml.safe_load(yaml.safe_dump(config, sort_keys=False))


def _write_config(out: Path, resolved_config: dict) -> None:
    tmp = out / ".config.yaml.tmp"
    tmp.write_text(yaml.safe_dump(resolved_config, sort_keys=False))
    tmp.replace(out / "config.yaml")


def describe_interrupt(out: Path, exc: BaseException, epoch: Optional[int] = None,
                       step: Optional[int] = None) -> FitInterrupted:
    """The one-line error of a fit stopped by a signal (during training: at ``epoch`` and
    ``step``; before or after it: None)."""
    chain, e = [], exc
    while e is not None and len(chain) < 5:
        chain.append(e)
        e = e.__context__
    sigterm = any(type(e).__name__ == "SIGTERMException" or "SIGTERM" in str(e) for e in chain)
    signal_name = "SIGTERM" if sigterm else "SIGINT"
    where = f"at epoch {epoch}, step {step}" if epoch is not None else "outside training (setup or final evaluation)"
    if is_finished(out):
        return FitInterrupted(f"fit of {out} interrupted by {signal_name} after it finished writing metrics.json")
    if last_checkpoint(out).exists():
        then = f"resume it with `recsys fit --resume {out}` (continues from {last_checkpoint(out)})"
    else:
        then = "no checkpoint was written yet (none before the first validation): start over with --overwrite"
    return FitInterrupted(f"fit of {out} interrupted by {signal_name} {where}; "
                          f"the run is not finished (no metrics.json); {then}")


# ---------------------------------------------------------------- which data a run was trained on


def _dataset_fingerprint(dataset) -> dict:
    from recsys.data_pipelines.build import vocab_fingerprint
    return dataset.manifest.get("vocab_fingerprint") or vocab_fingerprint(dataset.path)


def record_dataset(out: Path, dataset) -> None:
    """Stamp the run with the vocabularies of the dataset it is trained on."""
    import json
    tmp = Path(out) / f".{DATA_FINGERPRINT}.tmp"
    tmp.write_text(json.dumps({"dataset": str(dataset.path), "vocab_fingerprint": _dataset_fingerprint(dataset)},
                              indent=2))
    tmp.replace(Path(out) / DATA_FINGERPRINT)


def check_same_vocabulary(run_dir: Path, dataset) -> None:
    """A dataset rebuilt since training can have the same sizes but other id assignments:
    scoring the model on it would report numbers of another model. Runs from before the
    stamp existed are not checked (only their sizes are)."""
    stamp = read_data_fingerprint(run_dir)
    if stamp is None:
        return
    saved = stamp["vocab_fingerprint"]
    current = _dataset_fingerprint(dataset)
    differ = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if differ:
        raise CheckpointError(f"{run_dir}: {dataset.path} is not the data the run was trained on: its vocabularies "
                              f"{', '.join(differ)} assign other ids (rebuilt since training, or another dataset; "
                              "vocabulary fingerprint); evaluate on the dataset the run was trained on, or retrain")


# ---------------------------------------------------------------- signals and checkpoint files
def atomic_checkpoint_io():
    """A Lightning CheckpointIO that writes each checkpoint to a temporary name and renames
    it, so ``last.ckpt`` (and the best checkpoint) is complete or absent, whatever moment a
    SIGINT lands."""
    import os
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            path = str(path)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)

    return AtomicCheckpointIO()


class lightning_handles_sigterm:
    """While Lightning trains, SIGTERM is Lightning's own (a flag checked after each batch,
    then a clean stop); outside, :func:`recsys.data_pipelines.output_dir.terminate_as_interrupt`
    turns it into an exception. This restores the default handler for the duration so
    Lightning does not compose ours into its own (which would stop mid-step)."""

    def __enter__(self):
        import signal
        import threading
        self._saved = None
        if threading.current_thread() is threading.main_thread():
            self._saved = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return self

    def __exit__(self, *exc):
        import signal
        if self._saved is not None:
            signal.signal(signal.SIGTERM, self._saved)
        return False


def check_resumable(ckpt: Path) -> None:
    """A checkpoint that does not load (a foreign or damaged file) is a one-line error."""
    import torch
    try:
        state = torch.load(str(ckpt), map_location="cpu", weights_only=False)
    except Exception as exc:   # torch raises many types for a damaged file
        raise CheckpointError(f"{ckpt}: not a readable Lightning checkpoint ({type(exc).__name__}: {exc}); "
                              "start over with --overwrite") from None
    if not isinstance(state, dict) or "state_dict" not in state or "loops" not in state:
        raise CheckpointError(f"{ckpt}: not a full Lightning training checkpoint (no loop state); "
                              "start over with --overwrite")
