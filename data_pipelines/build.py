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
    user_split.npy         protocol.user_split_file only: the split per internal user id
                           (-1 = by the hash; data_pipelines.user_splits)
    negative_pool/{offsets,items}.npy  negatives: candidates only: each user's pool of candidate
                           negatives (CSR over user ids; data_pipelines.candidate_pools)
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

import contextlib
import json
import multiprocessing
import os
import shutil
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .columns import SAMPLE_COLUMNS, NpyAppender, SplitColumnWriter
from .config import DataConfig, load_data_config, to_dict
from .rejections import DataError, RejectionReport
from . import candidate_pools, user_splits
from .samples import SPLITS, CandidateNegativeSampler, NegativeSampler, build_samples
from .schema import BEHAVIORS, NUM_BEHAVIORS, check_events
from .side_tables import (ContextCounter, SideTableWriter, check_side_fields, context_field_dicts, core_field_dicts,
                          vocabulary_fingerprint)
from .output_dir import (describe_input_change, input_fingerprint, recover_interrupted, same_inputs, swap_into_place,
                         temporary_dir, terminate_as_interrupt)
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


def read_side_tables(config: DataConfig, report: RejectionReport, owners=None) -> "tuple[dict, dict]":
    """({"item": table or None, "user": table or None}, {owner: where it came from}) of the
    configured source, read only for the given owners (default: those of the declared fields)."""
    source = config.source
    owners = {f.owner for f in config.fields} if owners is None else set(owners)
    tables: dict = {}
    where = {owner: f"the {source.format} source {source.paths}" for owner in ("item", "user")}
    side_files = {"movielens": {"item": (".item", "movies.csv"), "user": (".user",)},
                  "s3rec": {"item": ("item2attributes",)}, "amazon": {"item": ("meta",)}}
    for owner in ("item", "user"):
        if owner not in owners or getattr(source, f"{owner}_file"):
            continue
        hints = side_files.get(source.format, {}).get(owner)
        if hints is None:
            continue
        files = [p for p in source.paths if any(h in Path(p).name for h in hints)]
        if files:
            where[owner] = files[0]
        if source.format == "movielens":
            from .sources import movielens
            tables[owner] = movielens.item_side_table(source) if owner == "item" else \
                movielens.user_side_table(source, report)
        elif source.format == "s3rec":
            from .sources.s3rec import item_side_table
            tables[owner] = item_side_table(source)
        else:
            from .sources.amazon import item_side_table
            tables[owner] = item_side_table(source)
    for owner, path in (("item", source.item_file), ("user", source.user_file)):
        if path and owner in owners:
            if not Path(path).is_file():
                raise DataError(f"source.{owner}_file {path} does not exist")
            tables[owner] = pq.read_table(path)
            where[owner] = str(path)
    return tables, where


def build_from_yaml(path: Union[str, Path], overwrite: bool = False, progress: bool = True) -> Path:
    return build_dataset(load_data_config(Path(path)), overwrite=overwrite, progress=progress)


def build_dataset(config: DataConfig, overwrite: bool = False, progress: bool = True,
                  workers: Optional[int] = None) -> Path:
    """Build (or reuse) the dataset described by ``config``; returns the output directory
    (:func:`ensure_dataset` also says whether it was built or reused)."""
    return ensure_dataset(config, overwrite, progress, workers)[0]


def ensure_dataset(config: DataConfig, overwrite: bool = False, progress: bool = True,
                   workers: Optional[int] = None) -> "tuple[Path, str]":
    """(output directory, "built" | "reused").

    ``workers``: processes building pass-2 partitions (None or 1 = in this process). The
    output is byte-identical either way (tested). With 2+ workers, a script calling this
    needs the ``if __name__ == "__main__":`` guard (the workers are forkserver children).

    An existing complete output is reused only when it was built from the same config and
    the same inputs (size and content hash of every input file; :func:`same_inputs`); a different config
    or changed inputs is an error unless ``overwrite``. The build writes into a temporary
    directory that replaces the output atomically when complete, so the output is always
    either the old complete build or the new one; the temporary directory is removed on
    every exit path (SIGINT and SIGTERM included), and those of killed builds are removed
    by the next build of the same output.
    """
    out = Path(config.output)
    recover_interrupted(out)
    manifest_path = out / "manifest.json"
    inputs = input_fingerprint(_input_paths(config))
    if manifest_path.exists() and not overwrite:
        existing = load_manifest(out)
        if existing.get("config") != _comparable(config):
            raise FileExistsError(f"{out} holds a dataset built from a different config; "
                                  "pass overwrite=True (--overwrite) to replace it")
        # a build from before inputs were recorded: only a source without files is known current
        if not same_inputs(existing.get("inputs", None if inputs else []), inputs):
            raise FileExistsError(f"{out} was built from other input files than the config's now: "
                                  f"{describe_input_change(existing.get('inputs'), inputs)}; pass overwrite=True "
                                  "(--overwrite) to rebuild it")
        return out, "reused"
    if out.exists() and not manifest_path.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists but is not a complete dataset (no manifest.json); "
                              "pass overwrite=True (--overwrite) to replace it")
    if config.protocol.negatives == "candidates":
        candidate_pools.check_file(config.protocol.negatives_file)
    if config.protocol.user_split_file:
        user_splits.check_file(config.protocol.user_split_file)
    missing = [d["path"] for d in inputs if d.get("missing")]
    if missing:
        raise DataError(f"{', '.join(missing)}: input file does not exist (source.paths of the data config)")
    tmp = temporary_dir(out)
    if tmp.exists():
        shutil.rmtree(tmp)
    started = time.perf_counter()
    with terminate_as_interrupt():
        try:
            (tmp / "vocab").mkdir(parents=True)
            stats = _build_into(config, tmp, progress, workers)
            _check_trainable(stats, out)
            stats["build_seconds"] = round(time.perf_counter() - started, 3)
            stats["inputs"] = inputs
            stats["vocab_fingerprint"] = vocab_fingerprint(tmp)
            # written last and by rename: a manifest on disk means the directory is complete
            (tmp / "manifest.json.part").write_text(json.dumps(stats, indent=2))
            (tmp / "manifest.json.part").rename(tmp / "manifest.json")
            swap_into_place(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out, "built"


def _input_paths(config: DataConfig) -> list:
    source = config.source
    paths = [] if source.format == "synthetic" else list(source.paths)
    paths += [p for p in (getattr(source, "item_file", ""), getattr(source, "user_file", "")) if p]
    if config.protocol.negatives == "candidates":
        paths.append(config.protocol.negatives_file)
    if config.protocol.user_split_file:
        paths.append(config.protocol.user_split_file)
    return paths


def _check_trainable(stats: dict, out: Path) -> None:
    """A dataset without training samples cannot train anything: an error now, not a
    "finished" run with AUC nan later."""
    train = stats.get("split_samples", {}).get("train", 0)
    if not train:
        raise DataError(f"{out}: the build gives 0 training samples ({stats.get('events', 0)} events, "
                        f"{stats.get('users', 0)} users, samples per split {stats.get('split_samples')}); "
                        f"the {stats.get('protocol')} protocol needs longer user timelines or more data")


def vocab_fingerprint(dataset_dir: Union[str, Path]) -> dict:
    """{vocabulary file: sha256 of its raw values in id order} of a built dataset: two
    builds with equal sizes but different id assignments differ here (checked by evaluate)."""
    vocab_dir = Path(dataset_dir) / "vocab"
    return {str(f.relative_to(vocab_dir)): vocabulary_fingerprint(Vocabulary.load(f))
            for f in sorted(vocab_dir.rglob("*.parquet"))}


def _comparable(config: DataConfig) -> dict:
    d = to_dict(config)
    d.pop("output", None)
    return json.loads(json.dumps(d))


def _build_into(config: DataConfig, tmp: Path, progress: bool, workers: Optional[int] = None) -> dict:
    # pass-2 workers start now, so their interpreter start-up overlaps pass 1
    with _executor(_pass2_workers(config, workers, config.partitions)) as pool:
        return _build_with(config, tmp, progress, pool)


class BackgroundWriter:
    """One I/O thread for pass 2's file writes, in submission order (so the output is
    byte-identical to writing inline). Parquet encoding and ``.npy`` writes release the GIL,
    so on a 2-core machine they overlap the next partition's compute; at most
    ``max_pending`` writes are in flight, which bounds the memory they hold to about one
    partition's outputs. A failed write raises at the next ``submit`` or at ``close``."""

    def __init__(self, max_pending: int = 4) -> None:
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recsys-build-io")
        self._pending: "deque[Future]" = deque()

    def submit(self, fn, *args, **kwargs) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(fn, *args, **kwargs))

    def close(self) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _write_now(fn, *args, **kwargs) -> None:
    fn(*args, **kwargs)


def _build_with(config: DataConfig, tmp: Path, progress: bool, pool) -> dict:
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
    # side tables are small (one row per id): read and checked before the events, so a
    # misdeclared field fails at once
    side_tables, side_where = read_side_tables(config, report) if config.fields else ({}, {})
    check_side_fields(config, side_tables, side_where)
    context = ContextCounter(config.fields)
    where = f"the {config.source.format} reader ({config.source.paths or 'generated'})"
    bar = tqdm(desc="pass 1: read + partition", unit="rows", unit_scale=True, disable=not progress)
    for table in read_source(config, report):
        table = check_events(table, where)
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
        context.update(table.column("timestamp"))
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
    negative_pool = _write_negative_pool(config, vocabs, tmp)
    fixed_split = _write_user_split(config, vocabs, tmp)
    side_fields, users_without_profile = _write_side_fields(config, side_tables, side_where, vocabs, context, report,
                                                            tmp)
    # timeline rows per partition are known now (one per user hashing there), so every
    # partition's global row numbers are too and partitions can be built independently
    users_per_partition = np.bincount(stable_hash(vocabs["user"].raw, P), minlength=P)
    row_bases = np.concatenate([[0], np.cumsum(users_per_partition)[:-1]]).astype(np.int64)
    (tmp / "timelines").mkdir()
    (tmp / "samples").mkdir()
    (tmp / "_parts").mkdir()
    jobs = [(str(tmp), p, int(row_bases[p]), config, pool is None) for p in range(P)
            if (events_dir / f"part-{p:05d}.arrow").exists()]
    split_columns = SplitColumnWriter(tmp / "split_columns", SPLITS)
    flat_writer = FlatWriter(tmp / "flat")
    split_counts = {s: 0 for s in SPLITS}
    split_users = {s: 0 for s in SPLITS}
    rows_per_partition = [0] * P
    bar = tqdm(total=len(jobs), desc="pass 2: timelines + samples", unit="part", disable=not progress)
    # in-process pass 2: file writes go to one background I/O thread (the second core)
    io = BackgroundWriter() if pool is None else None
    write = io.submit if io is not None else _write_now
    negative_counts = dict.fromkeys(CandidateNegativeSampler.COUNTS, 0) if negative_pool else {}
    try:
        n_samples = _merge_partitions(pool, jobs, write, users_per_partition, tmp, flat_writer, split_columns,
                          split_counts, split_users, rows_per_partition, bar, negative_counts)
    finally:
        if io is not None:
            io.close()
        # the in-process cache of this build's vocabularies and sampler must not outlive it
        # (a later build in the same process, e.g. quickstart's, starts clean)
        _PARTITION_STATE.clear()
    bar.close()
    split_columns.close()
    flat_writer.close()
    if users_without_profile is not None and users_without_profile.any():
        for split in SPLITS:   # samples whose user has no profile row: their profile fields are unknown
            users = np.load(tmp / "split_columns" / split / "user.npy", mmap_mode="r")
            report.note(f"{split}_samples_of_users_without_side_row", int(users_without_profile[users].sum()))
    row_base = int(users_per_partition.sum())
    shutil.rmtree(tmp / "_parts")
    shutil.rmtree(events_dir)
    report.save(tmp / "rejections.json")
    if progress or report.has_findings():   # rejections are shown even when quiet
        print(report.summary())
    if negative_pool is not None:
        negative_pool.update(negative_counts)
        if progress:
            print(f"negative pool: {negative_pool}")
    stats = {
        "format_version": FORMAT_VERSION,
        "config": _comparable(config),
        "protocol": config.protocol.name,
        "max_length": config.protocol.max_length,
        "has_labels": has_label,
        "vocab_sizes": {"user": vocabs["user"].size, "item": vocabs["item"].size,
                        "category": vocabs["category"].size, "behavior": NUM_BEHAVIORS},
        "fields": core_field_dicts({"user": vocabs["user"].size, "item": vocabs["item"].size,
                                    "category": vocabs["category"].size, "behavior": NUM_BEHAVIORS}) + side_fields,
        "context_columns": {f.name: f.column for f in config.fields if f.owner == "context"},
        "side_tables": {owner: {"rows": vocabs[owner].size, "vocabulary_sha256": vocabulary_fingerprint(vocabs[owner])}
                        for owner in ("item", "user") if any(f.owner == owner for f in config.fields)},
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
    if negative_pool is not None:
        stats["negative_pool"] = negative_pool
    if fixed_split is not None:
        stats["user_split_file"] = fixed_split
    return stats


def _write_negative_pool(config: DataConfig, vocabs: dict, tmp: Path) -> Optional[dict]:
    """``negatives: candidates``: each user's candidate pool into ``tmp/negative_pool/`` (read
    by every partition's sampler); returns the manifest's ``negative_pool`` counts (None otherwise)."""
    protocol = config.protocol
    if protocol.negatives != "candidates":
        return None
    offsets, items, counts = candidate_pools.read_candidate_pool(protocol.negatives_file, vocabs["user"],
                                                                 vocabs["item"], protocol.negatives_top)
    candidate_pools.save_pool(tmp, offsets, items)
    return {"file": protocol.negatives_file, "negatives_top": protocol.negatives_top, **counts}


def _write_user_split(config: DataConfig, vocabs: dict, tmp: Path) -> Optional[dict]:
    """``protocol.user_split_file``: the split per internal user id into ``tmp/user_split.npy``
    (read by every partition); returns the manifest's ``user_split_file`` counts (None otherwise)."""
    path = config.protocol.user_split_file
    if not path:
        return None
    fixed, counts = user_splits.read_user_split(path, vocabs["user"], SPLITS)
    np.save(tmp / user_splits.ARRAY_FILE, fixed)
    return {"file": path, **counts}


def _write_side_fields(config: DataConfig, tables: dict, where: dict, vocabs: dict, context: ContextCounter,
                       report: RejectionReport, tmp: Path) -> list:
    """Side tables, side vocabularies and context vocabularies; returns (the side fields'
    manifest dicts in config order, [num users] bool of users without a profile row or None)."""
    if not config.fields:
        return [], None
    writer = SideTableWriter(config, tables, where, vocabs, report, tmp)
    specs = {d["name"]: d for d in writer.write()}
    specs.update({d["name"]: d for d in context_field_dicts(config)})
    context_vocabs = context.vocabularies()
    for f in config.fields:
        if f.owner == "context" and f.column in context_vocabs:
            context_vocabs[f.column].save(tmp / "vocab" / f"{f.table}.parquet")
    return [specs[f.name] for f in config.fields], writer.missing_rows("user")


def _merge_partitions(pool, jobs, write, users_per_partition, tmp, flat_writer, split_columns,
                      split_counts, split_users, rows_per_partition, bar, negative_counts) -> int:
    """Build (or collect from the workers) every partition and append its flat arrays and
    split columns, in partition order, and add up the sampler's counts into
    ``negative_counts``; returns the number of samples."""
    n_samples = 0
    # results in partition order, merged one at a time: the merged outputs are appended to
    # disk, so the main process holds at most one partition's arrays (plus, in process, the
    # one the background writer is still writing)
    results = pool.map(_build_partition, jobs) if pool else (_build_partition(job, write) for job in jobs)
    for result in results:
        p = result["partition"]
        if result["users"] != users_per_partition[p]:
            raise RuntimeError(f"partition {p}: {result['users']} timeline rows, expected "
                               f"{users_per_partition[p]} from the user vocabulary")
        arrays = result.pop("arrays", None)
        part_dir = tmp / "_parts" / f"part-{p:05d}"
        if arrays is None:   # built by a worker: its arrays wait on disk
            arrays = {name: np.load(part_dir / f"{name}.npy") for name in result["files"]}
        write(flat_writer.append, {name: arrays[f"flat_{name}"] for name in result["flat"]}, arrays["offsets"])
        write(split_columns.append, {name: arrays[f"sample_{name}"] for name in SAMPLE_COLUMNS}, arrays["split"])
        del arrays
        shutil.rmtree(part_dir, ignore_errors=True)   # a worker's copies; in process there are none
        for name in SPLITS:
            split_counts[name] += result["split_counts"][name]
            split_users[name] += result["split_users"][name]
        rows_per_partition[p] = result["users"]
        for name, n in result["negatives"].items():
            negative_counts[name] = negative_counts.get(name, 0) + n
        n_samples += result["samples"]
        bar.update(1)
    return n_samples


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


class FlatWriter:
    """``flat/*.npy``: the partitions' timeline values appended in partition order, and
    their offsets shifted to global positions (``offsets.npy`` [users + 1])."""

    def __init__(self, flat_dir: Path) -> None:
        self.flat_dir, self.files, self.total = flat_dir, {}, 0
        self.offsets = NpyAppender(flat_dir / "offsets.npy", np.int64)
        self.offsets.append(np.zeros(1, np.int64))

    def append(self, flat: dict, offsets: np.ndarray) -> None:
        for name, values in flat.items():
            if name not in self.files:
                self.files[name] = NpyAppender(self.flat_dir / f"{name}.npy", values.dtype)
            self.files[name].append(values)
        self.offsets.append(offsets[1:].astype(np.int64) + self.total)
        self.total += int(offsets[-1])

    def close(self) -> None:
        self.offsets.close()
        for f in self.files.values():
            f.close()


# ---------------------------------------------------------------- pass 2, one partition
# per worker process: the running build's vocabularies, item categories and sampler, loaded
# once per process instead of once per partition; emptied when the build ends
_PARTITION_STATE: dict = {}


def _partition_state(tmp: Path, config: DataConfig) -> dict:
    key = str(tmp)
    if _PARTITION_STATE.get("key") != key:
        vocabs = {name: Vocabulary.load(tmp / "vocab" / f"{name}.parquet") for name in ("user", "item", "category")}
        _PARTITION_STATE.clear()
        fixed_split = np.load(tmp / user_splits.ARRAY_FILE) if config.protocol.user_split_file else None
        _PARTITION_STATE.update(key=key, vocabs=vocabs, item_category=np.load(tmp / "item_category.npy"),
                                sampler=_negative_sampler(tmp, config, vocabs), fixed_split=fixed_split)
    return _PARTITION_STATE


def _negative_sampler(tmp: Path, config: DataConfig, vocabs: dict) -> NegativeSampler:
    counts = vocabs["item"].id_counts()
    if config.protocol.negatives == "candidates":
        return CandidateNegativeSampler(counts, *candidate_pools.load_pool(tmp))
    return NegativeSampler(counts, config.protocol.negatives)


def _build_partition(job, write=_write_now) -> dict:
    """Timelines + samples of one scratch partition: writes ``timelines/``, ``samples/`` and
    the partition's flat values and split columns under ``_parts/`` (merged by the caller)."""
    tmp, p, row_base, config, inline = job
    tmp = Path(tmp)
    state = _partition_state(tmp, config)
    vocabs = state["vocabs"]
    path = tmp / "_events" / f"part-{p:05d}.arrow"
    # memory-mapped, zero-copy; the map lives as long as arrays reference it
    raw = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    encoded = {name: vocabs[name].encode(raw.column(name)) for name in ("user", "item", "category")}
    columns = {"user": encoded["user"], "item": encoded["item"].astype(np.int32),
               "category": encoded["category"].astype(np.int32),
               "behavior": raw.column("behavior").to_numpy(), "timestamp": raw.column("timestamp").to_numpy()}
    if "label" in raw.column_names:
        columns["label"] = raw.column("label").to_numpy()
    del raw, encoded
    timelines, flat, offsets = build_timelines(pa.table(columns))
    del columns
    write(pq.write_table, timelines, str(tmp / "timelines" / f"part-{p:05d}.parquet"), use_dictionary=False,
          compression="lz4", write_statistics=False)
    user_ids = timelines.column("user").to_numpy()
    del timelines
    negative_counts: dict = {}
    samples = build_samples(offsets, flat["item"], user_ids, state["item_category"], state["sampler"],
                            config.protocol, config.seed, p, labels=flat.get("label"),
                            item_categories=flat["category"], counts=negative_counts,
                            fixed_split=state["fixed_split"])
    split_np = samples.column("split").to_numpy()
    row_np = samples.column("row").to_numpy()     # partition-local row: one per user
    split_counts, split_users = {}, {}
    for name, code in SPLITS.items():
        sel = split_np == code
        split_counts[name] = int(sel.sum())
        split_users[name] = int(np.count_nonzero(np.bincount(row_np[sel], minlength=len(user_ids))))
    samples = samples.set_column(0, "row", pc.add(samples.column("row"), row_base))
    write(pq.write_table, samples, str(tmp / "samples" / f"part-{p:05d}.parquet"), use_dictionary=False,
          compression="lz4", write_statistics=False)
    arrays = {f"flat_{name}": values for name, values in flat.items()}
    arrays.update({"offsets": offsets, "split": split_np},
                  **{f"sample_{name}": samples.column(name).to_numpy() for name in SAMPLE_COLUMNS})
    result = {"partition": p, "users": len(user_ids), "samples": samples.num_rows, "flat": list(flat),
              "negatives": negative_counts, "split_counts": split_counts, "split_users": split_users,
              "files": list(arrays)}
    if inline:
        result["arrays"] = arrays
        return result
    part_dir = tmp / "_parts" / f"part-{p:05d}"
    part_dir.mkdir()
    for name, values in arrays.items():
        np.save(part_dir / f"{name}.npy", values)
    return result


def _pass2_workers(config: DataConfig, workers: Optional[int], jobs: int) -> int:
    workers = 1 if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, min(workers, jobs))


@contextlib.contextmanager
def _executor(workers: int):
    if workers <= 1:
        yield None
        return
    # forkserver: children do not inherit this process's Arrow thread pools (fork is unsafe
    # with them) and start from an already-imported server rather than a fresh interpreter
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["recsys.data_pipelines.build"])
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        for _ in range(workers):
            pool.submit(_warm_up)
        yield pool


def _warm_up() -> None:
    pa.array([0])   # pyarrow's first pa.array() imports pandas (about 0.5 s): pay it during pass 1


def load_manifest(path: Union[str, Path]) -> dict:
    path = Path(path)
    manifest = path / "manifest.json"
    if not manifest.exists():
        raise FileNotFoundError(f"{path} is not a built dataset (no manifest.json); build it with "
                                "`recsys data build CONFIG`")
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{manifest}: not readable JSON ({exc}); the file is corrupted: rebuild the dataset "
                        "with `recsys data build CONFIG --overwrite`") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        data = data if isinstance(data, dict) else {}
        raise DataError(f"{manifest}: format_version {data.get('format_version')} is not {FORMAT_VERSION}; rebuild it")
    return data
