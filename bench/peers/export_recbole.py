"""Write one of our leave-one-out builds as RecBole atomic files (runs in OUR venv).

RecBole's sequential pipeline sorts each user's interactions by timestamp, makes every
prefix a sample (``SequentialDataset.data_augmentation``: ``<i1> | i2``, ``<i1, i2> | i3``,
..., the history cut to its last ``MAX_ITEM_LIST_LENGTH`` items) and, with
``eval_args: {split: {LS: valid_and_test}, order: TO, group_by: user}``, gives each user's
last sample to test, the one before to validation and the rest to training. That is our
``loo`` protocol exactly when the ``.inter`` file holds each user's whole timeline with
``timestamp`` = the event's position in our timeline. Tokens are OUR internal ids (user and
item, as decimal strings), so RecBole's predictions map back to our ids without a lookup
table (RecBole re-indexes tokens internally; ``dataset.token2id`` undoes it).

:func:`export` checks, before writing, that this rule applied to the file it writes gives
our split user for user: the validation item, the test item and the number of training
samples (targets at positions 1 .. n-3) of every user, from our sample tables. A build
whose split is not that (another protocol, a user without a validation or test sample,
events after the test cut) stops with a :class:`recsys.errors.DataError` naming the user.
``run_recbole.py`` repeats the check on RecBole's own split at run time.

Output directory (``OUT``)::

    <name>/<name>.inter   user_id:token, item_id:token, timestamp:float (tab-separated,
                          one line per event, users in our timeline order)
    truth.npz             our split per timeline row: user [U], n_events [U], n_train [U],
                          valid_item [U], test_item [U]; and valid_user / test_user [S]:
                          the user of each of our valid / test samples, in our sample order;
                          offsets [U + 1] and items [E]: our timelines (flat), for the run-time
                          check of RecBole's split
    export.json           source dataset, name, counts, vocabulary sizes

    python bench/peers/export_recbole.py runs/data/amazon_beauty_loo runs/peers/amazon_beauty_loo_recbole
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:   # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from recsys.data_pipelines.dataset import BuiltDataset  # noqa: E402
from recsys.errors import DataError  # noqa: E402

INTER_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def our_truth(dataset: BuiltDataset) -> Dict[str, np.ndarray]:
    """Our loo split per timeline row, read from the sample tables.

    Returns user, n_events, n_train, valid_item, test_item [U] (one per timeline row; valid /
    test item -1 where a row has none) and valid_user / test_user [S] (per sample, our order).
    Raises DataError where a row's samples are not the leave-one-out shape RecBole produces.
    """
    if dataset.protocol != "loo":
        raise DataError(f"{dataset.path}: protocol {dataset.protocol!r}; the RecBole export reproduces "
                        "the leave-one-out split only (protocol: loo)")
    offsets = np.asarray(dataset.flat("offsets"), dtype=np.int64)
    rows = len(offsets) - 1
    n_events = np.diff(offsets)
    users = np.asarray(dataset.timelines().column("user").to_numpy(), dtype=np.int64)
    if len(users) != rows:
        raise DataError(f"{dataset.path}: {len(users)} timelines but {rows} rows in flat/offsets.npy")
    out = {"user": users, "n_events": n_events, "n_train": np.zeros(rows, np.int64)}
    items = np.asarray(dataset.flat("item"), dtype=np.int64)
    for split in ("train", "valid", "test"):
        columns = dataset.sample_columns(split)
        row = np.asarray(columns["row"], dtype=np.int64)
        cut = np.asarray(columns["cut"], dtype=np.int64)
        target = np.asarray(columns["target_item"], dtype=np.int64)
        user = np.asarray(columns["user"], dtype=np.int64)
        bad = np.flatnonzero(users[row] != user)
        if len(bad):
            i = bad[0]
            raise DataError(f"{dataset.path}: {split} sample {i} has user {user[i]} but timeline row {row[i]} "
                            f"belongs to user {users[row[i]]}")
        bad = np.flatnonzero(items[offsets[row] + cut] != target)
        if len(bad):
            i = bad[0]
            raise DataError(f"{dataset.path}: {split} sample {i} (user {user[i]}): target {target[i]} is not "
                            f"the item at position {cut[i]} of the timeline")
        if split == "train":
            np.add.at(out["n_train"], row, 1)
            # training targets must be exactly positions 1 .. n_train of each row, once each
            order = np.lexsort((cut, row))
            row_sorted, cut_sorted = row[order], cut[order]
            first = np.r_[0, np.flatnonzero(np.diff(row_sorted)) + 1]
            starts = np.repeat(first, np.diff(np.r_[first, len(row_sorted)]))
            expected = np.arange(len(row_sorted)) - starts + 1
            bad = np.flatnonzero(cut_sorted != expected)
            if len(bad):
                i = order[bad[0]]
                raise DataError(f"{dataset.path}: user {user[i]}'s training samples are not the prefixes at "
                                f"positions 1, 2, ... (sample {i} has cut {cut[i]}, expected "
                                f"{expected[bad[0]]}); RecBole makes every prefix a sample")
            continue
        seen = np.zeros(rows, np.int64)
        np.add.at(seen, row, 1)
        if (seen > 1).any():
            r = int(np.flatnonzero(seen > 1)[0])
            raise DataError(f"{dataset.path}: user {users[r]} has {seen[r]} {split} samples; leave-one-out has one")
        cut_expected = n_events[row] - (2 if split == "valid" else 1)
        bad = np.flatnonzero(cut != cut_expected)
        if len(bad):
            i = bad[0]
            raise DataError(f"{dataset.path}: {split} sample of user {user[i]} targets position {cut[i]} of "
                            f"{n_events[row[i]]} events; RecBole's LS split takes position {cut_expected[i]}")
        item = np.full(rows, -1, np.int64)
        item[row] = target
        out[f"{split}_item"] = item
        out[f"{split}_user"] = user
    return out


def check_recbole_rule(truth: Dict[str, np.ndarray]) -> None:
    """RecBole's rule on a timeline of n events: n-1 prefix samples, the last to test, the
    one before to validation, n-3 to training. Raises DataError at the first user whose
    split in our build differs."""
    n = truth["n_events"]
    problems = [
        ("fewer than 3 events (RecBole's LS split needs a training, a validation and a test sample)", n < 3),
        ("no validation sample", truth["valid_item"] < 0),
        ("no test sample", truth["test_item"] < 0),
        ("training samples != n_events - 3", truth["n_train"] != n - 3),
    ]
    for reason, mask in problems:
        if mask.any():
            r = int(np.flatnonzero(mask)[0])
            raise DataError(f"user {truth['user'][r]} (timeline row {r}, {n[r]} events, {truth['n_train'][r]} "
                            f"training samples): {reason}; {int(mask.sum())} users in all. RecBole's "
                            "time-ordered leave-one-out would not reproduce our split")


def write_inter(dataset: BuiltDataset, users: np.ndarray, path: Path) -> int:
    """The .inter file: one line per event, timestamp = position in the user's timeline."""
    offsets = np.asarray(dataset.flat("offsets"), dtype=np.int64)
    items = np.asarray(dataset.flat("item"), dtype=np.int64)
    lengths = np.diff(offsets)
    user_column = np.repeat(users, lengths)
    position = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(INTER_HEADER)
        # one formatted block per million events keeps memory flat on large builds
        for start in range(0, len(items), 1 << 20):
            stop = start + (1 << 20)
            block = np.stack([user_column[start:stop], items[start:stop], position[start:stop]], axis=1)
            np.savetxt(handle, block, fmt="%d", delimiter="\t")
    os.replace(tmp, path)
    return int(len(items))


def export(dataset_path, out, name: Optional[str] = None) -> dict:
    """Check our split against RecBole's rule, then write the atomic file, truth.npz and export.json."""
    dataset = BuiltDataset.open(dataset_path)
    truth = our_truth(dataset)
    check_recbole_rule(truth)
    out = Path(out)
    name = name or Path(dataset.path).name
    (out / name).mkdir(parents=True, exist_ok=True)
    events = write_inter(dataset, truth["user"], out / name / f"{name}.inter")
    items = np.asarray(dataset.flat("item"), dtype=np.int64)
    offsets = np.asarray(dataset.flat("offsets"), dtype=np.int64)
    np.savez(out / "truth.npz", **truth, offsets=offsets, items=items)
    summary = {
        "name": name, "source": str(Path(dataset.path).resolve()), "protocol": dataset.protocol,
        "events": events, "users": int(len(truth["user"])), "distinct_items": int(len(np.unique(items))),
        "splits": {"train": int(truth["n_train"].sum()), "valid": int(len(truth["valid_user"])),
                   "test": int(len(truth["test_user"]))},
        "vocab_sizes": {"user": dataset.num_users, "item": dataset.num_items},
        "max_length": dataset.max_length,
        "tokens": "our internal ids (user, item) as decimal strings; timestamp = position in our timeline",
    }
    tmp = out / "export.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "export.json")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a built loo dataset directory (recsys data build)")
    parser.add_argument("out", help="output directory for the RecBole files")
    parser.add_argument("--name", default=None, help="RecBole dataset name (default: the dataset folder name)")
    args = parser.parse_args(argv)
    print(json.dumps(export(args.dataset, args.out, args.name), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
