"""Write one of our built datasets in FuxiCTR's format, row for row (runs in OUR venv).

Both libraries must see identical samples, so the rows come from our own
``data_pipelines.loader.SampleLoader`` (unshuffled, padded form) — the same histories,
targets and labels our training and evaluation read — and our vocabulary ids are kept
as they are (0 = padding, 1 = unknown, real ids from 2), so the embedding tables have the
same sizes on both sides.

Output directory (``OUT``)::

    feature_map.json    FuxiCTR's processed-data schema (dataset_id, features, labels)
    train.npz valid.npz test.npz
                        FuxiCTR's in-memory format (``data_format: npz``): one array per
                        column; user_id, item_id, cate_id [N] int64, item_history and
                        cate_history [N, L] int64 right-padded with 0 (FuxiCTR's default
                        ``padding: post``), label [N] float32
    dataset_config.yaml FuxiCTR's dataset config for the raw CSV form below
    {split}.csv         only with ``--csv``: the raw form FuxiCTR's own preprocessing reads,
                        histories as ``^``-joined ids (oldest first)
    export.json         source dataset, protocol, L, row counts per split, vocab sizes

Fields: user_id (categorical), item_id and cate_id (the target), item_history /
cate_history (sequences sharing the item_id / cate_id embedding tables). DIN uses the
four item fields; FinalMLP uses all five (history mean-pooled) — run_fuxictr.py selects.

    python bench/peers/export_fuxictr.py runs/data/amazon_beauty runs/peers/amazon_beauty_fuxictr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:   # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from recsys.data_pipelines.dataset import BuiltDataset  # noqa: E402
from recsys.data_pipelines.loader import SampleLoader  # noqa: E402

SPLITS = ("train", "valid", "test")
SEQUENCE_SEPARATOR = "^"


def split_columns(dataset: BuiltDataset, split: str, max_length: int, chunk: int = 65536) -> Dict[str, np.ndarray]:
    """All rows of one split in our loader's (unshuffled) order as FuxiCTR columns.

    Returns user_id, item_id, cate_id [N]; item_history, cate_history [N, L]; label [N].
    """
    loader = SampleLoader(dataset, split, batch_size=chunk, max_length=max_length, form="padded", shuffle=False)
    parts: Dict[str, list] = {name: [] for name in
                              ("user_id", "item_id", "cate_id", "item_history", "cate_history", "label")}
    for batch in loader:
        parts["user_id"].append(batch.user.numpy())
        parts["item_id"].append(batch.target_item.numpy())
        parts["cate_id"].append(batch.target_category.numpy())
        parts["item_history"].append(batch.hist_item.numpy())
        parts["cate_history"].append(batch.hist_category.numpy())
        parts["label"].append(batch.label.numpy().astype(np.float32))
    if not parts["label"]:
        return {"user_id": np.zeros(0, np.int64), "item_id": np.zeros(0, np.int64), "cate_id": np.zeros(0, np.int64),
                "item_history": np.zeros((0, max_length), np.int64),
                "cate_history": np.zeros((0, max_length), np.int64), "label": np.zeros(0, np.float32)}
    return {name: np.concatenate(values) for name, values in parts.items()}


def feature_map(dataset_id: str, dataset: BuiltDataset, max_length: int) -> dict:
    """FuxiCTR's feature_map.json for our fields (vocab sizes include pad 0 and unknown 1)."""
    def categorical(source: str, vocab: int) -> dict:
        return {"source": source, "type": "categorical", "padding_idx": 0, "vocab_size": vocab}

    def sequence(share: str, vocab: int) -> dict:
        return {"source": "user", "type": "sequence", "feature_encoder": "layers.MaskedAveragePooling()",
                "share_embedding": share, "padding_idx": 0, "vocab_size": vocab, "max_len": max_length}

    features = [
        {"user_id": categorical("user", dataset.num_users)},
        {"item_id": categorical("item", dataset.num_items)},
        {"cate_id": categorical("item", dataset.num_categories)},
        {"item_history": sequence("item_id", dataset.num_items)},
        {"cate_history": sequence("cate_id", dataset.num_categories)},
    ]
    return {"dataset_id": dataset_id, "num_fields": len(features),
            "total_features": dataset.num_users + dataset.num_items + dataset.num_categories,
            "input_length": 3 + 2 * max_length, "labels": ["label"], "features": features}


def dataset_config(dataset_id: str, out: Path, max_length: int) -> str:
    """FuxiCTR's dataset config for the raw CSV files (``--csv``), as YAML text."""
    data = out.resolve()
    return "\n".join([
        f"{dataset_id}:",
        f"    data_root: {data.parent}",
        "    data_format: csv",
        f"    train_data: {data / 'train.csv'}",
        f"    valid_data: {data / 'valid.csv'}",
        f"    test_data: {data / 'test.csv'}",
        "    min_categr_count: 1",
        "    feature_cols:",
        "        - {name: user_id, active: True, dtype: str, type: categorical, source: user}",
        "        - {name: [item_id, cate_id], active: True, dtype: str, type: categorical, source: item}",
        f"        - {{name: item_history, active: True, dtype: str, type: sequence, splitter: '{SEQUENCE_SEPARATOR}',"
        f" max_len: {max_length}, share_embedding: item_id, source: user}}",
        f"        - {{name: cate_history, active: True, dtype: str, type: sequence, splitter: '{SEQUENCE_SEPARATOR}',"
        f" max_len: {max_length}, share_embedding: cate_id, source: user}}",
        "    label_col: {name: label, dtype: float}",
        "",
    ])


def join_history(history: np.ndarray) -> list:
    """[N, L] right-padded ids → N strings of the valid ids joined by ``^`` (oldest first)."""
    out = []
    for row in history:
        valid = row[row != 0]
        out.append(SEQUENCE_SEPARATOR.join(map(str, valid.tolist())))
    return out


def write_csv(columns: Dict[str, np.ndarray], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.table({
        "user_id": columns["user_id"], "item_id": columns["item_id"], "cate_id": columns["cate_id"],
        "item_history": join_history(columns["item_history"]),
        "cate_history": join_history(columns["cate_history"]),
        "label": columns["label"].astype(np.int64),
    })
    pacsv.write_csv(table, str(path))


def export(dataset_path, out, max_length: Optional[int] = None, dataset_id: Optional[str] = None,
           csv: bool = False) -> dict:
    """Write the FuxiCTR files for every split; returns the export.json summary."""
    dataset = BuiltDataset.open(dataset_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    length = max_length or dataset.max_length
    dataset_id = dataset_id or Path(dataset.path).name
    counts = {}
    for split in SPLITS:
        columns = split_columns(dataset, split, length)
        counts[split] = int(len(columns["label"]))
        np.savez(out / f"{split}.npz", **columns)
        if csv:
            write_csv(columns, out / f"{split}.csv")
    (out / "feature_map.json").write_text(json.dumps(feature_map(dataset_id, dataset, length), indent=2))
    (out / "dataset_config.yaml").write_text(dataset_config(dataset_id, out, length))
    summary = {
        "dataset_id": dataset_id, "source": str(Path(dataset.path).resolve()), "protocol": dataset.protocol,
        "max_length": length, "rows": counts,
        "vocab_sizes": {"user": dataset.num_users, "item": dataset.num_items, "category": dataset.num_categories},
        "row_order": "our SampleLoader, unshuffled (sample table order per split)",
    }
    (out / "export.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a built dataset directory (recsys data build)")
    parser.add_argument("out", help="output directory for the FuxiCTR files")
    parser.add_argument("--max-length", type=int, default=None, help="history length L (default: the built L)")
    parser.add_argument("--dataset-id", default=None, help="FuxiCTR dataset_id (default: the dataset folder name)")
    parser.add_argument("--csv", action="store_true", help="also write the raw ^-joined CSV form")
    args = parser.parse_args(argv)
    summary = export(args.dataset, args.out, args.max_length, args.dataset_id, args.csv)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
