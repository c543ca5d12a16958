"""Synthetic behaviour logs with planted structure, in the UserBehavior and Amazon layouts.

The generator is the built-in data of the quickstart and of the scale benchmarks. It plants
what target attention is supposed to find:

* items have Zipf popularity, and every item belongs to exactly one category;
* user lengths are long-tailed (log-normal, clipped to ``[min_events, max_events]``);
* every user has ``interests_per_user`` latent interests (categories drawn by category
  popularity) with Dirichlet weights, and draws each event from one of them with
  probability ``interest_prob`` (otherwise from the whole catalogue);
* interests come in sessions: the next event keeps the previous event's interest with
  probability ``stickiness``, so the most recent behaviours of the target's interest are
  the informative ones;
* optionally (``interest_coupling`` set, the distribution-shift mode of DESMIL's claim),
  categories come in fixed pairs of neighbouring popularity, and that share of the users
  draws its interests as whole pairs (both members of K/2 pairs: a dependency between
  interests, as when items retrieved for different interests are exposed together), while
  the other users draw one member of K distinct pairs (independent interests, never a pair).
  :func:`interest_regimes` says which users are coupled and :func:`write_shift_split`
  writes a user split whose test users are all independent (a ``protocol.user_split_file``).
  The regime draw comes first and the rest of the draws do not depend on it, so a user who
  is independent at share c has the same interests and events at every share c' < c: share
  0 with the same split file is the unshifted control of the same test users.

A pooled history blurs several interests into one vector; a target-attention model can
pick the behaviours of the candidate's category, so on this data DIN should beat the
pooled-history baseline.

Everything is deterministic for a seed, and rows are generated in chunks of users so 100M
rows stream in bounded memory. The planted interests are returned by
:func:`planted_interests` (recomputed from the seed, nothing is stored) so analyses can
check which behaviours are relevant to a target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .schema import BEHAVIORS

START_TIME = 1511539200  # 2017-11-25 00:00 UTC, the first day of the public UserBehavior window
# pv, cart, fav, buy shares of the public UserBehavior file (about 89.6% / 5.5% / 2.9% / 2.0%)
BEHAVIOR_MIX = np.array([0.896, 0.055, 0.029, 0.020])
BEHAVIOR_NAMES = np.array(["pv", "cart", "fav", "buy"])


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the generated data (all counts are exact for a seed)."""

    n_rows: int = 1_000_000
    n_items: int = 50_000
    n_categories: int = 500
    mean_events: float = 60.0          # mean user length before clipping
    length_sigma: float = 1.0          # log-normal sigma of user lengths (long tail)
    min_events: int = 5
    max_events: int = 10_000
    interests_per_user: int = 4
    interest_prob: float = 0.9
    stickiness: float = 0.7
    item_zipf: float = 1.1
    category_zipf: float = 1.05
    seed: int = 0
    # share of users whose interests are coupled category pairs (None: no pairs, the default generator)
    interest_coupling: Optional[float] = None

    def __post_init__(self) -> None:
        if self.n_rows < 1 or self.n_items < self.n_categories or self.n_categories < self.interests_per_user:
            raise ValueError("need n_rows >= 1, n_items >= n_categories >= interests_per_user")
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError("need 1 <= min_events <= max_events")
        if self.interest_coupling is None:
            return
        if not 0.0 <= self.interest_coupling <= 1.0:
            raise ValueError(f"interest_coupling is a share of users in [0, 1], got {self.interest_coupling}")
        if self.interests_per_user % 2 or self.n_categories < 2 * self.interests_per_user:
            raise ValueError("interest_coupling needs an even interests_per_user (whole pairs) and "
                             "n_categories >= 2 * interests_per_user (K distinct pairs for an independent user)")


class _Catalogue:
    """Item → category ownership and the popularity of items inside each category."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        rng = np.random.default_rng([cfg.seed, 1])
        ranks = np.arange(1, cfg.n_categories + 1, dtype=np.float64)
        self.category_prob = ranks ** -cfg.category_zipf
        self.category_prob /= self.category_prob.sum()
        # every category owns at least one item; the rest follow category popularity
        extra = rng.multinomial(cfg.n_items - cfg.n_categories, self.category_prob)
        sizes = extra + 1
        self.item_category = np.repeat(np.arange(cfg.n_categories), sizes)       # [n_items]
        self.category_start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.category_size = sizes
        # raw ids are shuffled so that id order says nothing about popularity
        self.raw_item_id = rng.permutation(cfg.n_items).astype(np.int64) * 7 + 1_000_003
        self.raw_category_id = rng.permutation(cfg.n_categories).astype(np.int64) * 13 + 2_000_003
        self.item_zipf = cfg.item_zipf

    def sample_items(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """One item per entry of ``categories``, Zipf-popular within its category."""
        size = self.category_size[categories]
        # inverse-CDF of a truncated Zipf-like law on ranks 1..size (continuous approximation)
        u = rng.random(len(categories))
        a = 1.0 - self.item_zipf
        rank = np.floor(((size ** a - 1.0) * u + 1.0) ** (1.0 / a)).astype(np.int64) - 1
        rank = np.clip(rank, 0, size - 1)
        return self.category_start[categories] + rank


def _user_lengths(cfg: SyntheticConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    mu = np.log(cfg.mean_events) - cfg.length_sigma ** 2 / 2
    return np.clip(np.round(rng.lognormal(mu, cfg.length_sigma, n)), cfg.min_events, cfg.max_events).astype(np.int64)


def _user_interests(cfg: SyntheticConfig, cat: _Catalogue, user_seed: int, n_users: int):
    """(interests [n_users, K] category indices, weights [n_users, K], coupled [n_users] bool)."""
    if cfg.interest_coupling is not None:
        return _paired_interests(cfg, cat, user_seed, n_users)
    rng = np.random.default_rng([cfg.seed, 2, user_seed])
    k = cfg.interests_per_user
    # Gumbel top-k: k distinct categories per user, drawn by category popularity
    keys = np.log(cat.category_prob)[None, :] + rng.gumbel(size=(n_users, cfg.n_categories))
    interests = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    weights = rng.dirichlet(np.ones(k), size=n_users)
    return interests, weights, np.zeros(n_users, bool)


def _paired_interests(cfg: SyntheticConfig, cat: _Catalogue, user_seed: int, n_users: int):
    """The coupling mode: categories 2j and 2j + 1 (neighbours in popularity: category
    indices are in popularity order) form pair j. A coupled user takes both members of K/2
    pairs, [a, a', b, b'], an independent user one random member of K pairs; pairs are
    drawn by their total popularity (Gumbel top-k)."""
    rng = np.random.default_rng([cfg.seed, 8, user_seed])    # its own stream: the default mode is unchanged
    k, n_pairs = cfg.interests_per_user, cfg.n_categories // 2
    coupled = rng.random(n_users) < cfg.interest_coupling
    pair_prob = cat.category_prob[:2 * n_pairs].reshape(n_pairs, 2).sum(1)
    keys = np.log(pair_prob)[None, :] + rng.gumbel(size=(n_users, n_pairs))
    pairs = np.argsort(-keys, axis=1)[:, :k]                                   # [n, K] distinct pairs
    member = rng.integers(0, 2, (n_users, k))
    independent = 2 * pairs + member
    both = np.stack([2 * pairs[:, :k // 2], 2 * pairs[:, :k // 2] + 1], axis=2).reshape(n_users, k)
    interests = np.where(coupled[:, None], both, independent)
    weights = rng.dirichlet(np.ones(k), size=n_users)
    return interests, weights, coupled


def _users_per_chunk(cfg: SyntheticConfig) -> int:
    # bounded memory: the interest draw holds a [users, n_categories] float matrix
    return int(max(1_000, min(20_000, 10_000_000 // cfg.n_categories)))


def _chunks(cfg: SyntheticConfig) -> Iterator[dict]:
    """Yield column dicts of events, users in id order, events in time order per user."""
    cat = _Catalogue(cfg)
    users_per_chunk = _users_per_chunk(cfg)
    remaining, chunk_index, next_user = cfg.n_rows, 0, 1
    while remaining > 0:
        rng = np.random.default_rng([cfg.seed, 3, chunk_index])
        lengths = _user_lengths(cfg, rng, users_per_chunk)
        ends = np.cumsum(lengths)
        keep = int(np.searchsorted(ends, remaining, side="left")) + 1
        lengths = lengths[:keep]
        lengths[-1] -= max(int(lengths.sum()) - remaining, 0)          # exact row count
        lengths = lengths[lengths > 0]
        n_users, total = len(lengths), int(lengths.sum())
        interests, weights, _ = _user_interests(cfg, cat, chunk_index, users_per_chunk)
        interests, weights = interests[:n_users], weights[:n_users]
        owner = np.repeat(np.arange(n_users), lengths)                   # [total] local user
        first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # sticky interest choice: a fresh draw where the session switches, else carry over
        fresh_slot = (rng.random((total, 1)) > np.cumsum(weights[owner], axis=1)).sum(1)
        fresh_slot = np.minimum(fresh_slot, cfg.interests_per_user - 1)
        switch = rng.random(total) >= cfg.stickiness
        switch[first] = True
        last_switch = np.maximum.accumulate(np.where(switch, np.arange(total), 0))
        slot = fresh_slot[last_switch]
        category = interests[owner, slot]
        noise = rng.random(total) >= cfg.interest_prob
        category[noise] = rng.choice(cfg.n_categories, size=int(noise.sum()), p=cat.category_prob)
        item = cat.sample_items(rng, category)
        gaps = rng.exponential(900.0, total).astype(np.int64) + 1
        gaps[first] = rng.integers(0, 3600 * 24, n_users)
        timestamp = START_TIME + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], lengths)
        behavior = rng.choice(4, size=total, p=BEHAVIOR_MIX / BEHAVIOR_MIX.sum())
        yield {
            "user": (next_user + owner).astype(np.int64),
            "item": cat.raw_item_id[item],
            "category": cat.raw_category_id[cat.item_category[item]],
            "behavior": behavior,
            "timestamp": timestamp,
        }
        next_user += n_users
        remaining -= total
        chunk_index += 1


def generate_userbehavior(path: Path, n_rows: int = 1_000_000, seed: int = 0,
                          config: Optional[SyntheticConfig] = None, progress: bool = False) -> Path:
    """Write a UserBehavior-layout CSV (no header; gzip when ``path`` ends in .gz).

    Columns ``user_id,item_id,category_id,behavior_type,timestamp``, exactly ``n_rows`` rows,
    grouped by user like the public file. Returns ``path``.
    """
    cfg = config or SyntheticConfig(n_rows=n_rows, seed=seed)
    if config is not None and (config.n_rows != n_rows and n_rows != 1_000_000):
        raise ValueError("give n_rows either directly or in config, not both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    compression = "gzip" if path.suffix == ".gz" else None
    bar = _progress(cfg.n_rows, progress, f"generating {path.name}")
    with pa.output_stream(str(tmp), compression=compression) as sink:
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        writer = None
        for cols in _chunks(cfg):
            table = pa.table({
                "user_id": cols["user"], "item_id": cols["item"], "category_id": cols["category"],
                "behavior_type": pa.DictionaryArray.from_arrays(pa.array(cols["behavior"].astype(np.int32)),
                                                                pa.array(BEHAVIOR_NAMES)).cast(pa.string()),
                "timestamp": cols["timestamp"],
            })
            if writer is None:
                writer = pacsv.CSVWriter(sink, table.schema, write_options=options)
            writer.write_table(table)
            bar.update(table.num_rows)
        if writer is not None:
            writer.close()
    bar.close()
    tmp.replace(path)
    return path


def generate_amazon(reviews_path: Path, meta_path: Path, n_rows: int = 100_000, seed: int = 0,
                    config: Optional[SyntheticConfig] = None) -> "tuple[Path, Path]":
    """Write the same planted data in the Amazon 2014 layout: JSON-lines reviews
    (``reviewerID, asin, overall, unixReviewTime``) and a metadata file of Python-literal
    lines (``{'asin': ..., 'categories': [[...]]}``) whose last category path ends with the
    item's category, as DIN's preprocessing reads it."""
    import json

    cfg = config or SyntheticConfig(n_rows=n_rows, seed=seed)
    cat = _Catalogue(cfg)
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    with open(reviews_path, "w") as out:
        for cols in _chunks(cfg):
            for u, i, t in zip(cols["user"].tolist(), cols["item"].tolist(), cols["timestamp"].tolist()):
                out.write(json.dumps({"reviewerID": f"U{u:08d}", "asin": f"B{i:09d}", "overall": 5.0,
                                      "unixReviewTime": t}) + "\n")
    with open(meta_path, "w") as out:
        for item in range(cfg.n_items):
            category = int(cat.raw_category_id[cat.item_category[item]])
            record = {"asin": f"B{int(cat.raw_item_id[item]):09d}", "categories": [["Root", f"C{category}"]]}
            out.write(repr(record) + "\n")
    return reviews_path, meta_path


def planted_interests(config: SyntheticConfig) -> "tuple[np.ndarray, np.ndarray]":
    """Raw user ids [U] and raw category ids of each user's planted interests [U, K],
    in the order the generator assigns them (recomputed from the seed)."""
    users, interests, _ = _planted(config)
    return users, interests


def interest_regimes(config: SyntheticConfig) -> "tuple[np.ndarray, np.ndarray]":
    """Raw user ids [U] and whether each user's interests are coupled pairs [U] (all False
    unless ``interest_coupling`` is set and > 0)."""
    users, _, coupled = _planted(config)
    return users, coupled


def _planted(config: SyntheticConfig):
    cat = _Catalogue(config)
    users, interests, coupled = [], [], []
    for chunk_index, cols in enumerate(_chunks(config)):
        first_user = int(cols["user"][0])
        n_users = int(cols["user"][-1]) - first_user + 1
        chosen, _, pairs = _user_interests(config, cat, chunk_index, _users_per_chunk(config))
        users.append(np.arange(first_user, first_user + n_users, dtype=np.int64))
        interests.append(cat.raw_category_id[chosen[:n_users]])
        coupled.append(pairs[:n_users])
    return np.concatenate(users), np.concatenate(interests), np.concatenate(coupled)


def shift_regimes_path(split_path: Path) -> Path:
    """Where :func:`write_shift_split` puts the users' regimes: ``<split stem>_regimes.parquet``."""
    split_path = Path(split_path)
    return split_path.with_name(split_path.stem + "_regimes.parquet")


def _write_atomic(path: Path, table: "pa.Table") -> None:
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(table, str(tmp))
    tmp.replace(path)


def write_shift_split(path: Path, config: SyntheticConfig, test_share: float = 0.1,
                      valid_share: float = 0.1) -> dict:
    """Write a ``protocol.user_split_file`` for the coupling mode: a ``test_share`` of all users,
    drawn from the independent users only, is the test split (the shifted distribution); a
    ``valid_share`` drawn from the others is the validation split (the training
    distribution, so model selection never sees the shift); the rest trains. Parquet columns
    ``user`` (raw id, int64) and ``split`` (train / valid / test); written atomically. Beside it,
    :func:`shift_regimes_path` gets each user's regime (``user``, ``coupled``), so an analysis reads
    which users are coupled instead of regenerating them; it is not a build input. Returns the
    users per (split, regime)."""
    if not config.interest_coupling:
        raise ValueError("write_shift_split needs interest_coupling > 0 (there is no shift without coupled users)")
    users, coupled = interest_regimes(config)
    independent = ~coupled
    if test_share * len(users) > independent.sum():
        raise ValueError(f"test_share {test_share} of {len(users)} users needs {test_share * len(users):.0f} "
                         f"independent users; only {int(independent.sum())} exist (interest_coupling "
                         f"{config.interest_coupling})")
    rng = np.random.default_rng([config.seed, 9])
    split = np.full(len(users), "train", dtype=object)
    n_test = int(round(test_share * len(users)))
    split[rng.choice(np.flatnonzero(independent), n_test, replace=False)] = "test"
    rest = np.flatnonzero(split == "train")
    split[rng.choice(rest, int(round(valid_share * len(users))), replace=False)] = "valid"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, pa.table({"user": pa.array(users), "split": pa.array(split.tolist(), pa.string())}))
    _write_atomic(shift_regimes_path(path), pa.table({"user": pa.array(users), "coupled": pa.array(coupled)}))
    return {f"{name}_{regime}": int(((split == name) & (coupled == c)).sum())
            for name in ("train", "valid", "test") for regime, c in (("coupled", True), ("independent", False))}


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm
    return tqdm(total=total, disable=not enabled, desc=desc, unit="rows", unit_scale=True)


def generate_side_tables(folder: Path, config: Optional[SyntheticConfig] = None, n_users: Optional[int] = None,
                         n_tags: int = 1_000, n_segments: int = 20) -> "tuple[Path, Path]":
    """Write generated item and user side tables (Parquet, keyed by the generator's raw ids)
    for ``source.item_file`` / ``source.user_file``; returns (item path, user path).

    Items: ``price`` (float64, log-normal, 5% null), ``brand`` (int64, one per category
    block), ``tags`` (0 to 4 tag ids, list<int64>). Users 1..``n_users`` (default
    ``n_rows / mean_events``, about the number of users: users beyond it have no profile
    row and profile rows of users that never occur are dropped, both counted by the build): ``age`` (int64), ``segment`` (string), ``interests``
    (list<int64>, 1 to 3 ids).
    """
    cfg = config or SyntheticConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, 7])
    cat = _Catalogue(cfg)
    n = cfg.n_items
    tag_counts = rng.integers(0, 5, n)
    tag_offsets = np.concatenate([[0], np.cumsum(tag_counts)]).astype(np.int32)
    price = rng.lognormal(3.0, 1.0, n)
    items = pa.table({
        "item": pa.array(cat.raw_item_id),
        "price": pa.array(price, mask=rng.random(n) < 0.05),
        "brand": pa.array((cat.item_category * 3 + rng.integers(0, 3, n)).astype(np.int64)),
        "tags": pa.ListArray.from_arrays(pa.array(tag_offsets), pa.array(rng.integers(0, n_tags, int(tag_counts.sum())))),
    })
    users = n_users or max(1, int(cfg.n_rows / cfg.mean_events))
    interest_counts = rng.integers(1, 4, users)
    interest_offsets = np.concatenate([[0], np.cumsum(interest_counts)]).astype(np.int32)
    profiles = pa.table({
        "user": pa.array(np.arange(1, users + 1, dtype=np.int64)),
        "age": pa.array(rng.integers(16, 80, users)),
        "segment": pa.array([f"s{v}" for v in rng.integers(0, n_segments, users)], pa.string()),
        "interests": pa.ListArray.from_arrays(pa.array(interest_offsets),
                                              pa.array(rng.integers(0, cfg.n_categories, int(interest_counts.sum())))),
    })
    item_path, user_path = folder / "items.parquet", folder / "users.parquet"
    pq.write_table(items, str(item_path))
    pq.write_table(profiles, str(user_path))
    return item_path, user_path
