"""A trained model as files, and its rebuild from them alone (no dataset, no Lightning).

A run directory's model artifact is::

    model.json          {"class_path", "family", "init_args", "features": FeatureSpec.to_dict()}
    model.safetensors   the weights, the item side tables included (the models hold them as
                        persistent buffers); loading never unpickles

:func:`load_model` needs nothing else: the feature spec (field kinds and sizes) comes from
``model.json``, so serving and ``recsys evaluate`` never open, let alone build, a dataset
to rebuild a model. This module imports torch, safetensors and the model registry only.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Dict, Mapping, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import recsys.models  # noqa: F401  (imports every model module, which registers itself)
from recsys.contract import ContractError, FeatureSpec
from recsys.errors import CheckpointError
from recsys.models.registry import MODELS, family

MODEL_JSON, WEIGHTS = "model.json", "model.safetensors"


def model_class(class_path: str) -> type:
    """A registered short name or a full ``module.Class`` path → the model class."""
    if "." not in class_path:
        if class_path not in MODELS:
            raise CheckpointError(f"model {class_path!r} is not registered; known: {sorted(MODELS)}")
        return MODELS[class_path]
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        family(cls)
    except (ImportError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"model class {class_path!r} cannot be loaded: {exc}") from None
    return cls


def export_model(model: nn.Module, class_path: str, init_args: Mapping, features: FeatureSpec,
                 out: Union[str, Path]) -> None:
    """Write model.safetensors and model.json to ``out`` (each complete or absent)."""
    out = Path(out)
    _write_atomic(out / WEIGHTS, lambda path: save_file(_unshared_state(model), str(path)))
    description = {"class_path": class_path, "family": family(type(model)), "init_args": dict(init_args),
                   "features": features.to_dict()}
    _write_atomic(out / MODEL_JSON, lambda path: path.write_text(json.dumps(description, indent=2)))


def _unshared_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict on the CPU with tied tensors (e.g. an input embedding reused as the
    softmax weights) copied apart: safetensors refuses tensors that share memory, and
    loading writes the same values into the one tied parameter twice."""
    state, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        pointer = (value.data_ptr(), value.dtype, tuple(value.shape))
        state[key] = value.clone() if pointer in seen else value
        seen.add(pointer)
    return state


def _write_atomic(path: Path, write) -> None:
    """Write through a temporary name and rename, so a file is complete or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def read_model_json(run_dir: Union[str, Path]) -> dict:
    """The parsed model.json of a run directory, its ``features`` as a FeatureSpec."""
    path = Path(run_dir) / MODEL_JSON
    if not path.exists():
        raise CheckpointError(f"{Path(run_dir)} is not a finished run: {MODEL_JSON} is missing")
    try:
        saved = json.loads(path.read_text())
        saved["features"] = FeatureSpec.from_dict(saved["features"], f"{path}: features")
    except (json.JSONDecodeError, KeyError, TypeError, ContractError) as exc:
        raise CheckpointError(f"{path}: not a recsys model description ({exc})") from None
    for key in ("class_path", "init_args"):
        if key not in saved:
            raise CheckpointError(f"{path}: missing {key!r}")
    return saved


def load_model(run_dir: Union[str, Path]) -> nn.Module:
    """Rebuild a trained model from its run directory: model.json + weights.

    Returns the model in eval mode on the CPU, its ``features`` the spec it was trained
    with. Every problem (missing or corrupted file, foreign weights, changed constructor)
    is a :class:`CheckpointError` naming the file."""
    run_dir = Path(run_dir)
    saved = read_model_json(run_dir)
    if not (run_dir / WEIGHTS).exists():
        raise CheckpointError(f"{run_dir} is not a finished run: {WEIGHTS} is missing")
    cls = model_class(saved["class_path"])
    try:
        model = cls(saved["features"], **saved["init_args"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{run_dir / MODEL_JSON}: cannot build {saved['class_path']}: {exc}") from None
    load_weights(model, run_dir / WEIGHTS)
    return model.eval()


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); the file is corrupted or "
                              "not a recsys model") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights with shape checks and clear errors (never unpickles)."""
    state = _read_safetensors(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not belong to {type(model).__name__} "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)} but the model expects "
                                  f"{tuple(own[key].shape)} (vocabulary or size mismatch)")
    model.load_state_dict(state)


def spec_diff(saved: FeatureSpec, current: FeatureSpec) -> dict:
    """{field: (saved, current)} of the fields that differ (sizes, kinds, presence) and max_length."""
    names = [f.name for f in saved.fields] + [f.name for f in current.fields if f.name not in saved]

    def describe(spec: FeatureSpec, name: str):
        return (spec[name].kind, spec[name].size) if name in spec else None
    diff = {n: (describe(saved, n), describe(current, n)) for n in names if describe(saved, n) != describe(current, n)}
    if saved.max_length != current.max_length:
        diff["max_length"] = (saved.max_length, current.max_length)
    return diff
