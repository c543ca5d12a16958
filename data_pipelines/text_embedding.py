"""Frozen content vectors from item text: ``recsys data embed-text``.

The vectors are **TF-IDF + truncated SVD** (latent semantic analysis, scikit-learn's
``TfidfVectorizer`` and ``TruncatedSVD``), L2-normalised per item, not a neural sentence
encoder: no sentence-embedding package on the index ships its weights inside the package,
and nothing may be downloaded at run time. LSA is deterministic for a seed and fitted on the
dataset's own item texts. Never random vectors: an item without text gets a zero vector
(counted).

The text of an item is its configured text columns of the source's item side table joined
with spaces (list columns, e.g. MovieLens genres, joined too). The vectors go into the built
dataset's item side table as a frozen dense field (``side/item/{name}.npy`` [num_items, d]
float32, rows 0 and 1 zero) and the manifest gains its field spec; a ``--overwrite`` rebuild
drops them (run the command again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.errors import DataError

from .build import load_manifest, read_side_tables
from .config import CORE_FIELDS, DataConfig
from .rejections import RejectionReport
from .side_tables import field_dict, vocabulary_fingerprint
from .vocab import FIRST_ID, Vocabulary

METHOD = "tfidf+truncated_svd"


def item_texts(table: pa.Table, columns: Sequence[str], where: str) -> List[str]:
    """One text per side-table row: the columns' values joined with spaces."""
    parts = []
    for column in columns:
        if column not in table.column_names:
            raise DataError(f"text column {column!r} is absent from the item table of {where}; "
                            f"its columns: {table.column_names[1:]}")
        values = table.column(column).combine_chunks()
        if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            values = pc.binary_join(pc.cast(values, pa.list_(pa.string())), " ")
        parts.append(pc.fill_null(pc.cast(values, pa.string()), "").to_pylist())
    return [" ".join(p for p in row if p).strip() for row in zip(*parts)]


def lsa_vectors(texts: Sequence[str], dim: int, seed: int = 0) -> "tuple[np.ndarray, float]":
    """[len(texts), dim] float32 L2-normalised LSA vectors (empty text → zeros) and the SVD's
    explained variance ratio."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    has_text = np.array([bool(t) for t in texts])
    if not has_text.any():
        raise DataError("no item has any text in the given columns")
    tfidf = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b")
    matrix = tfidf.fit_transform([t for t, ok in zip(texts, has_text) if ok])
    if dim >= matrix.shape[1]:
        raise DataError(f"--dim {dim} must be smaller than the {matrix.shape[1]} distinct terms of the item texts")
    svd = TruncatedSVD(n_components=dim, random_state=seed)
    reduced = svd.fit_transform(matrix).astype(np.float32)
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    reduced /= np.where(norms > 0, norms, 1.0)
    out = np.zeros((len(texts), dim), np.float32)
    out[has_text] = reduced
    return out, float(svd.explained_variance_ratio_.sum())


def embed_item_text(config: DataConfig, columns: Sequence[str], name: str, dim: int = 64, seed: int = 0) -> dict:
    """Write the item text vectors into the build at ``config.output``; returns the summary
    recorded in the manifest under ``text_embeddings[name]``."""
    out = Path(config.output)
    manifest = load_manifest(out)
    if name in CORE_FIELDS:
        raise DataError(f"--name {name!r} is a core field")
    declared = {f["name"]: f for f in manifest.get("fields", [])}
    if name in declared and not (declared[name]["kind"] == "dense" and name in manifest.get("text_embeddings", {})):
        raise DataError(f"{out}: field {name!r} already exists and is not a text embedding; choose another --name")
    if dim < 1:
        raise DataError(f"--dim must be >= 1, got {dim}")
    tables, where = read_side_tables(config, RejectionReport(), owners={"item"})
    table = tables.get("item")
    if table is None:
        raise DataError(f"the {config.source.format} source {config.source.paths} has no item table with text "
                        "(give one with source.item_file)")
    vocab = Vocabulary.load(out / "vocab" / "item.parquet")
    ids = vocab.encode(table.column("item"))
    keep = ids >= FIRST_ID
    texts = item_texts(table.filter(pa.array(keep)), columns, where["item"])
    vectors, explained = lsa_vectors(texts, dim, seed)
    full = np.zeros((vocab.size, dim), np.float32)
    full[ids[keep]] = vectors
    with_text = int(np.count_nonzero(np.abs(full[FIRST_ID:]).sum(axis=1)))
    folder = out / "side" / "item"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.npy.partial"
    with open(tmp, "wb") as f:
        np.save(f, full)
    os.replace(tmp, folder / f"{name}.npy")
    summary = {"method": METHOD, "columns": list(columns), "dim": dim, "seed": seed,
               "explained_variance_ratio": round(explained, 4), "items_with_text": with_text,
               "items_without_text": int(vocab.size - FIRST_ID - with_text),
               "side_rows_not_in_vocabulary": int((~keep).sum())}
    fields = [f for f in manifest.get("fields", []) if f["name"] != name]
    fields.append(field_dict(name, "dense", "item", size=dim, frozen=True))
    manifest["fields"] = fields
    manifest.setdefault("side_tables", {})["item"] = {"rows": vocab.size,
                                                     "vocabulary_sha256": vocabulary_fingerprint(vocab)}
    manifest.setdefault("text_embeddings", {})[name] = summary
    tmp_manifest = out / ".manifest.json.partial"
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, out / "manifest.json")
    return summary
