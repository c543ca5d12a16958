"""A users file for `recsys retrieve` whose histories are each user's *training* part: the
timeline of a built dataset without its last ``--drop-last`` items (2 = the validation and test
items of the loo / din protocols), in raw ids. Used to retrieve the candidates that
`protocol.negatives: candidates` draws negatives from, so the held-out items never shape the
pool (configs/data/amazon_beauty_candneg.yaml).

    python bench/train_history_users.py runs/data/amazon_beauty_loo runs/cascade/users_beauty_train.parquet
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.data_pipelines.dataset import BuiltDataset


def write_users(dataset_dir: str, out: str, drop_last: int = 2) -> dict:
    dataset = BuiltDataset.open(dataset_dir)
    timelines = dataset.timelines()
    users = dataset.vocabulary("user").decode(timelines.column("user").to_numpy())
    items = timelines.column("items").combine_chunks()
    lengths = np.diff(items.offsets.to_numpy())
    keep = np.maximum(lengths - drop_last, 0)
    offsets = np.concatenate([[0], np.cumsum(keep)]).astype(np.int64)
    # the first keep[u] values of every list, in one gather: output position j of user u reads
    # input position starts[u] + (j - offsets[u])
    shift = np.repeat(items.offsets.to_numpy()[:-1].astype(np.int64) - offsets[:-1], keep)
    index = np.arange(int(offsets[-1]), dtype=np.int64) + shift
    raw_items = dataset.vocabulary("item").decode(items.values.to_numpy()[index].astype(np.int64))
    offsets = offsets.astype(np.int32)
    history = pa.ListArray.from_arrays(pa.array(offsets), raw_items)
    table = pa.table({"user": users, "history": history})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    pq.write_table(table, str(tmp))
    tmp.replace(out)
    return {"users": table.num_rows, "history_items": int(keep.sum()), "empty_histories": int((keep == 0).sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="a built dataset folder (runs/data/NAME)")
    parser.add_argument("out", help="the users Parquet to write")
    parser.add_argument("--drop-last", type=int, default=2, help="held-out items at the end of each timeline")
    args = parser.parse_args(argv)
    print(write_users(args.dataset, args.out, args.drop_last))


if __name__ == "__main__":
    main()
