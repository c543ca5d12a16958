"""The exported serving artifact: its layout, its manifest, and loading it safely.

``recsys export RUN --out DIR`` (:mod:`recsys.serving.export`) writes a self-contained
directory; ``serving`` reads nothing else (no run directory, no built dataset)::

    manifest.json                 format name + version, package version, components, and the
                                  sha256 + size of every other file (the only file not hashed)
    features.json                 the context columns (hour | weekday | behavior) and the
                                  behaviour codes the request encoder needs
    <role>/model.json             typed model config + FeatureSpec (recsys.artifacts format)
    <role>/model.safetensors      the weights, item side tables included
    <role>/index/flat.faiss/.json the FAISS index + stamp (retrieval components only)
    vocab/<table>.parquet         raw id → id of the user, item, category tables and of every
                                  id / ids field the components read (built dataset's files)
    item_category.npy             [num_items] int64 category id of each item id
    side/user/<field>.npy         user side tables the components read (``.values.npy`` +
                                  ``.offsets.npy`` for multi-valued ids)

``<role>`` is ``ranker`` (a ranking run exported alone), or ``retrieval`` / ``coarse`` /
``fine`` for a Recommender bundle. :func:`open_artifact` checks, before anything is used:
the format name; a format version newer than this code reads (refused); every listed file
present, of the listed size (a truncated file) and sha256 (a tampered or replaced file).
Loading never executes code from the artifact: weights are safetensors (a pickle in their
place is refused), arrays are ``np.load(allow_pickle=False)``, tables are Parquet, and a
model class must be one registered in ``recsys.models`` (a ``class_path`` naming another
module is refused rather than imported). Files in the directory that the manifest does not
list are never opened. Every problem is a :class:`recsys.errors.CheckpointError` naming
the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from torch import nn

from recsys.artifacts import MODEL_JSON, WEIGHTS, load_weights, model_class, read_model_json
from recsys.errors import CheckpointError
from recsys.retrieval.index import file_sha256

FORMAT = "recsys-serving-artifact"
FORMAT_VERSION = 1
MANIFEST, FEATURES = "manifest.json", "features.json"
ROLES = ("ranker", "retrieval", "coarse", "fine")
MODEL_PACKAGE = "recsys.models."


def read_json(path: Path, what: str) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: {path.parent} is not a complete recsys serving artifact "
                              f"({what}); export it with `recsys export RUN --out DIR`")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc}); the artifact is damaged, export it again") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def check_manifest(root: Path, manifest: dict) -> None:
    """Format, version, and every listed file's presence, size and sha256."""
    where = root / MANIFEST
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a recsys serving artifact (format {manifest.get('format')!r}, "
                              f"expected {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{where}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: artifact format version {version} was written by a newer recsys "
                              f"({manifest.get('recsys_version')}); this one reads versions up to {FORMAT_VERSION}: "
                              "upgrade recsys or export the run again with this version")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{where}: no 'files' table of sha256 hashes")
    for name, entry in files.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{where}: file entry {name!r} points outside the artifact")
        if not isinstance(entry, dict) or not {"sha256", "bytes"} <= set(entry):
            raise CheckpointError(f"{where}: entry of {name!r} lacks sha256/bytes")
        if not path.is_file():
            raise CheckpointError(f"{path} is missing (listed in {MANIFEST}); the artifact is incomplete")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path}: {size} bytes, the manifest lists {entry['bytes']} "
                                  f"({'truncated' if size < entry['bytes'] else 'changed'}); export the run again")
        if file_sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: sha256 differs from the manifest's (the file was modified or replaced "
                                  "after export); refusing to load it")


def safe_model_class(class_path: str, where: Path) -> type:
    """The model class of a registered short name or a ``recsys.models.*`` path; any other
    path is refused before it is imported (loading never runs code the artifact names)."""
    if "." in class_path and not class_path.startswith(MODEL_PACKAGE):
        raise CheckpointError(f"{where}: class_path {class_path!r} is not a recsys model (serving only builds "
                              f"models registered in recsys.models); refusing to import it")
    return model_class(class_path)


@dataclass
class Component:
    """One model of an artifact: its role, directory and description (model.json)."""

    role: str
    path: Path
    description: dict

    @property
    def family(self) -> str:
        return self.description.get("family", "ranking")

    @property
    def features(self):
        return self.description["features"]

    def build(self) -> nn.Module:
        """The model rebuilt from model.json + safetensors, eval mode, on the CPU."""
        where = self.path / MODEL_JSON
        cls = safe_model_class(self.description["class_path"], where)
        try:
            model = cls(self.features, **self.description["init_args"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: cannot build {self.description['class_path']}: {exc}") from None
        load_weights(model, self.path / WEIGHTS)
        return model.eval()


class Artifact:
    """A verified artifact directory: manifest, components and the shared tables."""

    def __init__(self, root: Path, manifest: dict, features: dict, components: Dict[str, Component]) -> None:
        self.root, self.manifest, self.features, self.components = root, manifest, features, components

    def component(self, role: Optional[str] = None) -> Component:
        """The component of ``role``; None = the ranking model (``ranker``, else ``fine``)."""
        if role is None:
            role = next((r for r in ("ranker", "fine") if r in self.components), None)
            if role is None:
                raise CheckpointError(f"{self.root}: no ranking model in this artifact (components: "
                                      f"{sorted(self.components)})")
        if role not in self.components:
            raise CheckpointError(f"{self.root}: no {role!r} model in this artifact (components: "
                                  f"{sorted(self.components)})")
        return self.components[role]

    def vocabulary(self, table: str) -> pa.Array:
        """Raw values of a table's vocabulary in id order (row k = id k + 2)."""
        path = self.root / "vocab" / f"{table}.parquet"
        try:
            t = pq.read_table(str(path), columns=["raw", "id"])
        except (pa.ArrowInvalid, OSError, KeyError) as exc:
            raise CheckpointError(f"{path}: not a readable vocabulary ({exc})") from None
        ids = t.column("id").to_numpy()
        if len(ids) and not np.array_equal(ids, np.arange(2, 2 + len(ids))):
            raise CheckpointError(f"{path}: vocabulary ids are not 2..{len(ids) + 1} in order")
        return t.column("raw").combine_chunks()

    def array(self, name: str) -> np.ndarray:
        """A listed ``.npy`` file (never unpickled)."""
        path = self.root / name
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable .npy array ({exc})") from None

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]


def open_artifact(path: Union[str, Path]) -> Artifact:
    """Verify and open an artifact directory (see the module docstring for the checks)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such artifact directory; export one with `recsys export RUN --out DIR`")
    manifest = read_json(root / MANIFEST, "the manifest")
    check_manifest(root, manifest)
    features = read_json(root / FEATURES, "the feature description")
    listed = manifest["files"]
    components = {}
    for role, entry in (manifest.get("components") or {}).items():
        if role not in ROLES:
            raise CheckpointError(f"{root / MANIFEST}: unknown component {role!r}; known: {list(ROLES)}")
        folder = root / role
        for name in (MODEL_JSON, WEIGHTS):
            if f"{role}/{name}" not in listed:
                raise CheckpointError(f"{root / MANIFEST}: component {role!r} has no {name} listed")
        components[role] = Component(role, folder, read_model_json(folder))
    if not components:
        raise CheckpointError(f"{root / MANIFEST}: the artifact holds no model")
    return Artifact(root, manifest, features, components)
