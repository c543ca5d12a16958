"""Raw logs → vocabularies → timelines → samples, in two streaming passes.

Pass 1 streams the source once: it counts ids for the vocabularies, records each item's
category, and scatters the raw events into ``partitions`` Arrow IPC scratch files by a stable hash
of the user id. Pass 2 handles one partition at a time (bounded memory; partitions are
independent, so the same function can run on separate workers): encode ids, sort by
(user, time), write the partition's timelines and samples.

Output directory (written under a temporary name and renamed when complete, so a
half-written build never looks finished)::

    manifest.json          config, vocabulary sizes, counts per split, rejection report
    rejections.json        the full rejection report
    vocab/{user,item,category}.parquet
    item_category.npy      [num_items] category id of each item id
    timelines/part-00000.parquet ...   one row per user: user, items, categories, behaviors, timestamps[, labels]
    samples/part-00000.parquet ...     row, user, cut, target_item, target_category, label, split
    split_columns/{train,valid,test}/{row,user,cut,target_item,target_category,label}.npy
                           the same sample rows, one file per split and column (same order as
                           the Parquet rows of that split), memory-mapped by the loader
    flat/{offsets,item,category,behavior,timestamp[,label]}.npy
                           the timelines' Arrow offsets and values, concatenated over partitions,
                           for zero-copy memory-mapped gathers by the loader
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .columns import SAMPLE_COLUMNS, SplitColumnWriter
from .config import DataConfig, load_data_config, to_dict
from .rejections import DataError, RejectionReport
from .samples import SPLITS, NegativeSampler, build_samples
from .schema import BEHAVIORS, NUM_BEHAVIORS
from .timelines import build_timelines
from .vocab import UNKNOWN_ID, VocabCounter, Vocabulary, stable_hash

FORMAT_VERSION = 1


def read_source(config: DataConfig, report: RejectionReport) -> Iterator[pa.Table]:
    """Normalized event tables from the configured source."""
    source = config.source
    block = config.block_size_mb << 20
    if source.format == "synthetic":
        from .sources.synthetic_source import read_synthetic
        yield from read_synthetic(source.synthetic, report)
    elif source.format == "taobao":
        from .sources.taobao import read_userbehavior
        for path in source.paths:
            yield from read_userbehavior(Path(path), report, block_size=block)
    elif source.format == "s3rec":
        from .sources.s3rec import read_s3rec
        yield from read_s3rec(source, report)
    elif source.format == "movielens":
        from .sources.movielens import read_movielens
        yield from read_movielens(source, report)
    elif source.format == "amazon":
        from .sources.amazon import read_amazon
        yield from read_amazon(source, report)
    elif source.format == "ratings_csv":
        from .sources.amazon import read_ratings_csv
        yield from read_ratings_csv(source, report)
    elif source.format == "multibehavior":
        from .sources.multibehavior import read_multibehavior
        yield from read_multibehavior(source, report)
    else:  # config validation makes this unreachable
        raise ValueError(source.format)


def build_from_yaml(path: Union[str, Path], overwrite: bool = False, progress: bool = True) -> Path:
    return build_dataset(load_data_config(Path(path)), overwrite=overwrite, progress=progress)


def build_dataset(config: DataConfig, overwrite: bool = False, progress: bool = True) -> Path:
    """Build (or reuse) the dataset described by ``config``; returns the output directory.

    An existing complete output built from the same config is reused (no-op); one built
    from a different config is an error unless ``overwrite``.
    """
    out = Path(config.output)
    manifest_path = out / "manifest.json"
    if manifest_path.exists() and not overwrite:
        existing = json.loads(manifest_path.read_text())
        if existing.get("config") == _comparable(config):
            return out
        raise FileExistsError(f"{out} holds a dataset built from a different config; "
                              "pass overwrite=True (--overwrite) to replace it")
    if out.exists() and not manifest_path.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists but is not a complete dataset (no manifest.json); "
                              "pass overwrite=True (--overwrite) to replace it")
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "vocab").mkdir(parents=True)
    started = time.perf_counter()
    try:
        stats = _build_into(config, tmp, progress)
        stats["build_seconds"] = round(time.perf_counter() - started, 3)
        (tmp / "manifest.json").write_text(json.dumps(stats, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _comparable(config: DataConfig) -> dict:
    d = to_dict(config)
    d.pop("output", None)
    return json.loads(json.dumps(d))


def _build_into(config: DataConfig, tmp: Path, progress: bool) -> dict:
    from tqdm.auto import tqdm

    report = RejectionReport(on_error=config.on_error, max_reject_rate=config.max_reject_rate)
    P = config.partitions
    counters = {name: VocabCounter() for name in ("user", "item", "category")}
    pairs = []                       # distinct (item, category) per block
    keep_codes = [BEHAVIORS[b] for b in config.source.behaviors] if config.source.behaviors else None
    filtered = 0
    events_dir = tmp / "_events"
    events_dir.mkdir()
    writers: list = [None] * P
    n_events = 0
    has_label = False
    bar = tqdm(desc="pass 1: read + partition", unit="rows", unit_scale=True, disable=not progress)
    for table in read_source(config, report):
        if keep_codes is not None:
            keep = pc.is_in(table.column("behavior"), pa.array(keep_codes, pa.int8()))
            before = table.num_rows
            table = table.filter(keep)
            filtered += before - table.num_rows
        if table.num_rows == 0:
            continue
        has_label = has_label or "label" in table.column_names
        for name, counter in counters.items():
            counter.update(table.column(name))
        pairs.append(table.select(["item", "category"]).group_by(["item", "category"]).aggregate([]))
        part = stable_hash(table.column("user").combine_chunks(), P)
        order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[order], np.arange(P + 1))
        sorted_table = table.take(pa.array(order))
        for p in range(P):
            if bounds[p + 1] > bounds[p]:
                chunk = sorted_table.slice(bounds[p], bounds[p + 1] - bounds[p])
                if writers[p] is None:
                    # Arrow IPC, not Parquet: a scratch file read once, so no encoding cost
                    writers[p] = pa.ipc.new_file(str(events_dir / f"part-{p:05d}.arrow"), chunk.schema)
                writers[p].write_table(chunk)
        n_events += table.num_rows
        bar.update(table.num_rows)
    bar.close()
    for w in writers:
        if w is not None:
            w.close()
    report.check_rate()
    if n_events == 0:
        raise DataError(f"no events read from {config.source.format} source {config.source.paths or ''}:\n"
                        f"{report.summary()}")
    vocabs = {name: counter.finish(config.min_count if name != "user" else 1) for name, counter in counters.items()}
    for name, vocab in vocabs.items():
        vocab.save(tmp / "vocab" / f"{name}.parquet")
    item_category, conflicts = _item_categories(pa.concat_tables(pairs), vocabs)
    np.save(tmp / "item_category.npy", item_category)
    sampler = NegativeSampler(vocabs["item"].id_counts(), config.protocol.negatives)

    (tmp / "timelines").mkdir()
    (tmp / "samples").mkdir()
    split_columns = SplitColumnWriter(tmp / "split_columns", SPLITS)
    flat_parts: dict = {}
    offsets_parts, rows_per_partition = [], []
    split_counts = {s: 0 for s in SPLITS}
    split_users = {s: 0 for s in SPLITS}
    n_samples = 0
    row_base = 0
    for p in tqdm(range(P), desc="pass 2: timelines + samples", unit="part", disable=not progress):
        path = events_dir / f"part-{p:05d}.arrow"
        if not path.exists():
            rows_per_partition.append(0)
            continue
        # memory-mapped, zero-copy; the map lives as long as arrays reference it
        raw = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        encoded = {name: vocabs[name].encode(raw.column(name)) for name in ("user", "item", "category")}
        columns = {"user": encoded["user"], "item": encoded["item"].astype(np.int32),
                   "category": encoded["category"].astype(np.int32),
                   "behavior": raw.column("behavior").to_numpy(), "timestamp": raw.column("timestamp").to_numpy()}
        if "label" in raw.column_names:
            columns["label"] = raw.column("label").to_numpy()
        del raw
        timelines, flat, offsets = build_timelines(pa.table(columns))
        pq.write_table(timelines, str(tmp / "timelines" / f"part-{p:05d}.parquet"), use_dictionary=False,
                       compression="lz4", write_statistics=False)
        user_ids = timelines.column("user").to_numpy()
        samples = build_samples(offsets, flat["item"], user_ids, item_category, sampler, config.protocol,
                                config.seed, p, labels=flat.get("label"), item_categories=flat["category"])
        split_np = samples.column("split").to_numpy()
        row_np = samples.column("row").to_numpy()     # partition-local row: one per user
        for name, code in SPLITS.items():
            sel = split_np == code
            split_counts[name] += int(sel.sum())
            split_users[name] += int(np.count_nonzero(np.bincount(row_np[sel], minlength=len(user_ids))))
        samples = samples.set_column(0, "row", pc.add(samples.column("row"), row_base))
        pq.write_table(samples, str(tmp / "samples" / f"part-{p:05d}.parquet"), use_dictionary=False,
                       compression="lz4", write_statistics=False)
        split_columns.append({name: samples.column(name).to_numpy() for name in SAMPLE_COLUMNS}, split_np)
        n_samples += samples.num_rows
        for name, values in flat.items():
            flat_parts.setdefault(name, []).append(values)
        offsets_parts.append(offsets[1:] + (offsets_parts[-1][-1] if offsets_parts else 0))
        rows_per_partition.append(len(user_ids))
        row_base += len(user_ids)
    split_columns.close()
    shutil.rmtree(events_dir)
    _write_flat(tmp / "flat", flat_parts, offsets_parts)
    report.save(tmp / "rejections.json")
    if progress:
        print(report.summary())
    return {
        "format_version": FORMAT_VERSION,
        "config": _comparable(config),
        "protocol": config.protocol.name,
        "max_length": config.protocol.max_length,
        "has_labels": has_label,
        "vocab_sizes": {"user": vocabs["user"].size, "item": vocabs["item"].size,
                        "category": vocabs["category"].size, "behavior": NUM_BEHAVIORS},
        "rare_mapped_to_unknown": {name: {"values": v.rare_values, "occurrences": v.rare_count}
                                   for name, v in vocabs.items()},
        "items_with_several_categories": conflicts,
        "events": n_events,
        "events_filtered_by_behavior": filtered,
        "users": row_base,
        "rows_per_partition": rows_per_partition,
        "samples": n_samples,
        "split_samples": split_counts,
        "split_users": split_users,
        "rejections": report.to_dict(),
    }


def _item_categories(pairs: pa.Table, vocabs: dict) -> "tuple[np.ndarray, int]":
    """Category id of every item id. An item seen with several categories keeps the most
    frequent one's id (ties: the smallest); the number of such items is reported."""
    pairs = pairs.group_by(["item", "category"]).aggregate([])
    items = vocabs["item"].encode(pairs.column("item"))
    cats = vocabs["category"].encode(pairs.column("category"))
    out = np.full(vocabs["item"].size, UNKNOWN_ID, dtype=np.int32)
    out[0] = 0
    # a smaller category id = a more frequent category; write the largest first so the
    # most frequent one wins
    order = np.lexsort((-cats, items))
    out[items[order]] = cats[order]
    conflicts = int(len(items) - len(np.unique(items)))
    return out, conflicts


def _write_flat(flat_dir: Path, parts: dict, offsets_parts: list) -> None:
    flat_dir.mkdir()
    offsets = np.concatenate([[0]] + offsets_parts).astype(np.int64) if offsets_parts else np.zeros(1, np.int64)
    np.save(flat_dir / "offsets.npy", offsets)
    for name, arrays in parts.items():
        np.save(flat_dir / f"{name}.npy", np.concatenate(arrays))


def load_manifest(path: Union[str, Path]) -> dict:
    path = Path(path)
    manifest = path / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{path} is not a built dataset (no manifest.json); build it with "
                                "`recsys data build CONFIG`")
    data = json.loads(manifest.read_text())
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{manifest}: format_version {data.get('format_version')} is not {FORMAT_VERSION}; rebuild it")
    return data


def default_output(config: DataConfig) -> Optional[Path]:
    return Path(config.output) if config.output else None
