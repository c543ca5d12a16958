"""FAISS indexes over a retrieval model's item tower: build, save, load, each stamped with
the model and the vocabulary it belongs to.

Three kinds, all over the raw (unnormalised) inner product the models score with:

* ``flat``: exact search (``IndexFlatIP``; ComiRec's evaluation index);
* ``ivf``: ``IVF{nlist},Flat``, k-means cells, ``nprobe`` of them searched;
* ``hnsw``: ``HNSW{m},Flat``, a graph searched with a beam of ``ef_search``. HNSW needs a
  metric, which the inner product is not; the index holds ``[x, sqrt(M − |x|²)]`` (M the
  largest squared item norm) under L2, which orders items as the inner product does
  (Bachrach et al., RecSys 2014), and scores are converted back to inner products.

Only the real item ids ``2 .. N−1`` are indexed (0 is padding, 1 unknown: never
recommended); FAISS label ``j`` is item id ``j + FIRST_ITEM``, so a search never returns
0 or 1 and never wastes a slot on them.

On disk, a run's index ``NAME`` (default: its kind) is two files in ``RUN/index/``::

    NAME.faiss   faiss.write_index of the index
    NAME.json    the stamp: model weights sha256, item-vocabulary fingerprint, item count,
                 dim, metric, factory string, parameters, faiss version, the sha256 of
                 NAME.faiss and of the item vectors it was built from, build time

Each is written to a temporary name and renamed, the ``.faiss`` first and the stamp last;
the stamp holds the sha256 of the ``.faiss`` file, so an index half-replaced by a killed
build, edited, or copied from another run is refused when loaded
(:class:`recsys.errors.CheckpointError`, naming the file and what differs), never used.

This module imports numpy, torch and faiss only (no Lightning, pandas or pyarrow): serving
loads indexes with it (a test checks ``sys.modules``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional, Tuple, Union

import faiss
import numpy as np
import torch

from recsys.errors import CheckpointError, ConfigError, NonFiniteLossError
from recsys.run_fingerprint import read_data_fingerprint

FIRST_ITEM = 2                 # ids 0 (padding) and 1 (unknown) are not indexed
METRIC = "inner_product"
STAMP_VERSION = 1
INDEX_DIR = "index"
KINDS = ("flat", "ivf", "hnsw")
# exact search = one GEMM per (query block, item block) then a top-n scan of its scores; the
# block shape is the fastest of those swept by bench/bench_retrieval.py --exact-blocks (idle
# 2-core box, d = 64, top-200 at 1M items; bench/results/retrieval_exact_blocks.json):
# 512 × 8192 (a 16 MB score block) 342 users/s, FAISS's default 4096 × 1024 295, 1024 × 32768
# (128 MB) 257; docs/benchmarks.md
EXACT_QUERY_BLOCK, EXACT_ITEM_BLOCK = 512, 8192
# the keys each kind takes (a key of another kind is a mistake, not a silent no-op)
KIND_KEYS = {"flat": (), "ivf": ("nlist", "nprobe", "train_size"), "hnsw": ("m", "ef_construction", "ef_search")}


@dataclass(frozen=True)
class IndexConfig:
    """What index to build. ``nlist`` None = ``4·sqrt(items)`` (FAISS's guideline), capped so
    every cell gets at least 39 training points; ``train_size``: at most this many item
    vectors train the IVF quantizer (a seeded sample); ``ef_search``/``nprobe`` are the
    default search parameters, overridable when searching."""

    kind: str = "flat"
    nlist: Optional[int] = None
    nprobe: int = 32
    train_size: int = 262_144
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"index kind {self.kind!r}: expected one of {list(KINDS)}")
        for name in ("nprobe", "train_size", "m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"index.{name} must be a positive integer, got {value!r}")
        if self.nlist is not None and (not isinstance(self.nlist, int) or self.nlist < 1):
            raise ConfigError(f"index.nlist must be a positive integer or null, got {self.nlist!r}")

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<index config>") -> "IndexConfig":
        """Strict: an unknown key, or one that belongs to another kind, is a ConfigError."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: an index config is a mapping (kind: flat|ivf|hnsw, ...), got "
                              f"{type(raw).__name__}")
        kind = raw.get("kind", "flat")
        known = {f.name for f in fields(cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"{source}: unknown index key {key!r}; known: {sorted(known)}")
            if key not in ("kind", "seed") and kind in KIND_KEYS and key not in KIND_KEYS[kind]:
                raise ConfigError(f"{source}: {key!r} does not apply to a {kind!r} index (its keys: "
                                  f"{list(KIND_KEYS[kind]) or 'none'})")
        return cls(**raw)

    def resolved_nlist(self, items: int) -> int:
        nlist = self.nlist if self.nlist is not None else int(round(4 * math.sqrt(items)))
        return max(1, min(nlist, items // 39 if self.nlist is None else nlist))

    def factory(self, items: int) -> str:
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf":
            return f"IVF{self.resolved_nlist(items)},Flat"
        return f"HNSW{self.m},Flat"

    def params(self) -> dict:
        """The parameters of this kind (what the stamp records)."""
        return {k: getattr(self, k) for k in KIND_KEYS[self.kind]}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MB blocks (index stamps, retrieve job keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_array(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values).view(np.uint8).data).hexdigest()


@torch.no_grad()
def item_vectors(model: torch.nn.Module, chunk: int = 65536) -> np.ndarray:
    """The item tower over the whole vocabulary, float32 ``[N, D]`` (row i = item id i).

    Raises NonFiniteLossError naming the first items whose vectors are NaN or infinite."""
    num_items = model.features.num_items
    parts = [model.item_embeddings(torch.arange(s, min(s + chunk, num_items))).float().cpu().numpy()
             for s in range(0, num_items, chunk)]
    vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(vectors[FIRST_ITEM:]).all(axis=1)) + FIRST_ITEM
    if len(bad):
        raise NonFiniteLossError(f"the item tower gives NaN or infinite vectors for {len(bad)} items (ids "
                                 f"{bad[:5].tolist()}{' ...' if len(bad) > 5 else ''}); no index is built from them")
    return vectors


def build_index(vectors: np.ndarray, config: IndexConfig = IndexConfig(), model_sha256: str = "",
                item_vocabulary: Optional[str] = None, model_class: str = "") -> "ItemIndex":
    """An :class:`ItemIndex` over item vectors ``[N, D]`` (row = item id), rows 2.. only,
    stamped with the given model and vocabulary identity."""
    started = time.perf_counter()
    all_vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    vectors = all_vectors[FIRST_ITEM:]
    items, dim = vectors.shape
    if items == 0:
        raise ConfigError("no real items to index (the vocabulary holds only padding and unknown)")
    if not np.isfinite(vectors).all():
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1)) + FIRST_ITEM
        raise NonFiniteLossError(f"item vectors are NaN or infinite for ids {bad[:5].tolist()}; no index built")
    max_norm_sq = None
    if config.kind == "hnsw":
        # HNSW's graph needs a metric: inner product is not one (recall 0.79 vs 0.97 at efSearch 200 on
        # clustered data), so search L2 over x' = [x, sqrt(M − |x|²)] with q' = [q, 0]:
        # |q' − x'|² = |q|² + M − 2<q, x>, the same order as the inner product (Bachrach et al. 2014)
        norms = np.einsum("nd,nd->n", vectors, vectors, dtype=np.float64)
        max_norm_sq = float(norms.max())
        extra = np.sqrt(np.maximum(max_norm_sq - norms, 0.0)).astype(np.float32)[:, None]
        index = faiss.index_factory(dim + 1, config.factory(items), faiss.METRIC_L2)
        index.hnsw.efConstruction = config.ef_construction
        index.add(np.ascontiguousarray(np.hstack([vectors, extra])))
    else:
        index = faiss.index_factory(dim, config.factory(items), faiss.METRIC_INNER_PRODUCT)
        if config.kind == "ivf":
            nlist = config.resolved_nlist(items)
            if items < nlist:
                raise ConfigError(f"index.nlist = {nlist} cells for only {items} items; lower nlist")
            rng = np.random.default_rng(config.seed)
            train = vectors if items <= config.train_size else \
                vectors[np.sort(rng.choice(items, config.train_size, replace=False))]
            faiss.extract_index_ivf(index).cp.seed = config.seed
            index.train(train)
        index.add(vectors)
    set_search_params(index, config.kind, nprobe=config.nprobe, ef_search=config.ef_search)
    stamp = make_stamp(all_vectors, config, model_sha256, item_vocabulary, model_class,
                       time.perf_counter() - started)
    stamp["mips_max_norm_sq"] = max_norm_sq
    return ItemIndex(index, stamp)


def set_search_params(index: faiss.Index, kind: str, nprobe: Optional[int] = None,
                      ef_search: Optional[int] = None) -> None:
    if kind == "ivf" and nprobe is not None:
        faiss.extract_index_ivf(index).nprobe = int(nprobe)
    if kind == "hnsw" and ef_search is not None:
        faiss.downcast_index(index).hnsw.efSearch = int(ef_search)


@contextmanager
def _blas_blocks(query_block: int, item_block: int):
    """FAISS's exact-search block sizes for one search (they are FAISS globals: restored
    after; a concurrent search may see either setting, which changes speed, not results)."""
    previous = faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs
    faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = query_block, item_block
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = previous


class ItemIndex:
    """A loaded (or freshly built) index and its stamp.

    ``search(queries [Q, D], n) -> (scores [Q, n] float32, item ids [Q, n] int64)``, best
    first; slots without a result have id 0 and score −inf (an index holding fewer than n
    items, or an approximate index that found fewer)."""

    def __init__(self, index: faiss.Index, stamp: dict) -> None:
        self.index, self.stamp = index, stamp
        self.kind = stamp["kind"]
        self.max_norm_sq = stamp.get("mips_max_norm_sq")        # HNSW: the inner product → L2 reduction

    @property
    def dim(self) -> int:
        """Width D of the item (and query) vectors."""
        return self.index.d - (1 if self.max_norm_sq is not None else 0)

    @property
    def size(self) -> int:
        """Indexed items (the real ids 2 .. N−1)."""
        return self.index.ntotal

    def set_search_params(self, nprobe: Optional[int] = None, ef_search: Optional[int] = None) -> None:
        set_search_params(self.index, self.kind, nprobe, ef_search)

    def _stored_vectors(self) -> np.ndarray:
        """[ntotal, index.d] view of the HNSW index's flat storage (no copy)."""
        storage = faiss.downcast_index(faiss.downcast_index(self.index).storage)
        return faiss.rev_swig_ptr(storage.get_xb(), storage.ntotal * storage.d).reshape(storage.ntotal, storage.d)

    def search(self, queries: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ConfigError(f"queries of shape {queries.shape} for a {self.dim}-d index")
        if self.kind == "flat":
            with _blas_blocks(EXACT_QUERY_BLOCK, EXACT_ITEM_BLOCK):
                scores, labels = self.index.search(queries, int(n))
        elif self.max_norm_sq is None:
            scores, labels = self.index.search(queries, int(n))
        else:
            padded = np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]))
            _, labels = self.index.search(padded, int(n))
            # the inner products of the found items, from the stored vectors (not |q|² + M − L2:
            # that difference loses float32 digits)
            stored = self._stored_vectors()
            scores = np.einsum("qd,qnd->qn", queries, stored[np.maximum(labels, 0), :self.dim])
        found = labels >= 0
        ids = np.where(found, labels + FIRST_ITEM, 0).astype(np.int64)
        return np.where(found, scores, -np.inf).astype(np.float32), ids


def make_stamp(vectors: np.ndarray, config: IndexConfig, model_sha256: str, item_vocabulary: Optional[str],
               model_class: str = "", seconds: float = 0.0) -> dict:
    items = len(vectors) - FIRST_ITEM
    return {"stamp_version": STAMP_VERSION, "kind": config.kind, "factory": config.factory(items),
            "params": config.params(), "metric": METRIC, "dim": int(vectors.shape[1]), "num_items": len(vectors),
            "first_item": FIRST_ITEM, "model_class": model_class, "model_sha256": model_sha256,
            "item_vocabulary": item_vocabulary, "item_vectors_sha256": _sha256_array(vectors),
            "faiss_version": faiss.__version__, "build_seconds": round(seconds, 3),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def save_index(index: ItemIndex, path: Union[str, Path]) -> Path:
    """Write ``path`` (``.faiss``) and its stamp ``path.with_suffix('.json')``; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(index.index, str(tmp))
        stamp = dict(index.stamp, index_sha256=file_sha256(tmp))
        stamp_tmp = path.with_name(f".{path.stem}.json.{os.getpid()}.tmp")
        stamp_tmp.write_text(json.dumps(stamp, indent=2))
        os.replace(tmp, path)
        os.replace(stamp_tmp, path.with_suffix(".json"))
    finally:
        for leftover in (tmp, path.with_name(f".{path.stem}.json.{os.getpid()}.tmp")):
            leftover.unlink(missing_ok=True)
    index.stamp = stamp
    return path


def read_stamp(path: Union[str, Path]) -> dict:
    stamp_path = Path(path).with_suffix(".json")
    if not stamp_path.exists():
        raise CheckpointError(f"{stamp_path} is missing: {Path(path).name} has no stamp (an interrupted build or a "
                              "file copied alone); rebuild it with `recsys index RUN`")
    try:
        stamp = json.loads(stamp_path.read_text())
        for key in ("kind", "dim", "num_items", "model_sha256", "index_sha256", "metric"):
            stamp[key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{stamp_path}: not an index stamp ({exc!r}); rebuild with `recsys index RUN`") from None
    return stamp


def load_index(path: Union[str, Path], expect: Optional[dict] = None) -> ItemIndex:
    """Load an index file and check it against its stamp (file sha256) and against
    ``expect`` ({stamp key: value}: e.g. the model's sha256 and vocabulary fingerprint).
    Every mismatch is a CheckpointError naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; build it with `recsys index RUN`")
    stamp = read_stamp(path)
    actual = file_sha256(path)
    if actual != stamp["index_sha256"]:
        raise CheckpointError(f"{path}: the index file does not match its stamp {path.with_suffix('.json').name} "
                              f"(sha256 {actual[:12]} vs {str(stamp['index_sha256'])[:12]}): it was modified, "
                              "half-written or belongs to another build; rebuild it with `recsys index RUN`")
    for key, value in (expect or {}).items():
        if stamp.get(key) != value:
            raise CheckpointError(f"{path}: built for another {_what(key)} ({key} {str(stamp.get(key))[:16]!r}, "
                                  f"this run has {str(value)[:16]!r}); rebuild it with `recsys index RUN`")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: FAISS cannot read it ({str(exc).splitlines()[0]})") from None
    width = stamp["dim"] + (1 if stamp.get("mips_max_norm_sq") is not None else 0)
    if index.d != width or index.ntotal != stamp["num_items"] - FIRST_ITEM:
        raise CheckpointError(f"{path}: holds {index.ntotal} {index.d}-d vectors, the stamp says "
                              f"{stamp['num_items'] - FIRST_ITEM} {stamp['dim']}-d")
    kind = stamp["kind"]
    params = stamp.get("params", {})
    set_search_params(index, kind, params.get("nprobe"), params.get("ef_search"))
    return ItemIndex(index, stamp)


def _what(key: str) -> str:
    return {"model_sha256": "model (weights)", "item_vocabulary": "item vocabulary", "num_items": "item count",
            "dim": "vector width", "item_vectors_sha256": "set of item vectors"}.get(key, key)


# ---------------------------------------------------------------- indexes of a run directory
def index_path(run_dir: Union[str, Path], name: str) -> Path:
    return Path(run_dir) / INDEX_DIR / f"{name}.faiss"


def run_identity(run_dir: Union[str, Path]) -> dict:
    """What a run's index must be stamped with: its weights' sha256 and item-vocabulary
    fingerprint (from ``data_fingerprint.json``; None for runs from before that stamp)."""
    run_dir = Path(run_dir)
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{run_dir} is not a finished run: model.safetensors is missing")
    stamp = read_data_fingerprint(run_dir)
    return {"model_sha256": file_sha256(weights),
            "item_vocabulary": None if stamp is None else stamp["vocab_fingerprint"].get("item.parquet")}


def build_run_index(run_dir: Union[str, Path], config: IndexConfig = IndexConfig(), name: Optional[str] = None,
                    threads: Optional[int] = None, model: Optional[torch.nn.Module] = None) -> Path:
    """Build the index of a finished retrieval run from its weights alone and save it as
    ``RUN/index/NAME.faiss`` (+ stamp); returns the path."""
    from recsys.artifacts import load_model, read_model_json   # torch + safetensors only
    run_dir = Path(run_dir)
    identity = run_identity(run_dir)
    if model is None:
        if read_model_json(run_dir).get("family") != "retrieval":
            raise ConfigError(f"{run_dir}: only retrieval models have an item tower to index")
        model = load_model(run_dir)
    if threads:
        faiss.omp_set_num_threads(int(threads))
    index = build_index(item_vectors(model), config, identity["model_sha256"], identity["item_vocabulary"],
                        type(model).__name__)
    return save_index(index, index_path(run_dir, name or config.kind))


def load_run_index(run_dir: Union[str, Path], name: str = "flat") -> ItemIndex:
    """A run's index ``NAME``, checked against the run's weights and item vocabulary."""
    return load_index(index_path(run_dir, name), expect=run_identity(run_dir))
