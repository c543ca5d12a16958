"""Reader for MovieLens ratings: RecBole atomic files, the classic ``u.data`` and ``ratings.csv``.

Layouts (by file name):
    ``*.inter``      RecBole atomic (tab-separated, typed header ``user_id:token item_id:token
                     rating:float timestamp:float``), with ``*.item`` (``class:token_seq`` genres)
    ``u.data``       tab-separated ``user item rating timestamp``, with ``u.item`` (pipe-separated,
                     19 genre flags at the end)
    ``ratings.csv``  ``userId,movieId,rating,timestamp`` with a header, with ``movies.csv``
                     (``movieId,title,genres`` with ``|``-separated genres)

Every rating is an event; its label is ``rating >= rating_threshold`` (default 4, as in DIN's
MovieLens experiment). A movie's category is its first genre; movies without a genre get
the unknown category (counted).

Side tables (:func:`item_side_table`, :func:`user_side_table`; fields declare which columns
they use): items ``item, title, genres (list), release_year``; users (RecBole ``*.user`` or
the classic ``u.user``) ``user, age, gender, occupation, zip_code, zip_prefix`` (the zip
code's first character: the US national area; Canadian codes keep their letter).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import SourceConfig
from ..rejections import DataError, RejectionReport
from ..schema import BEHAVIORS
from .csv_blocks import float_validator, int_validator, read_delimited

UDATA_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                "War", "Western"]


def _name(path: Path) -> str:
    name = Path(path).name
    return name[:-3] if name.endswith(".gz") else name


def _open_text(path: Path):
    return io.TextIOWrapper(gzip.open(path, "rb"), encoding="latin-1") if str(path).endswith(".gz") \
        else open(path, encoding="latin-1")


def item_table(path: Path) -> Dict[str, Tuple[str, List[str]]]:
    """movie id → (title, genres) for any of the three item-file layouts."""
    return {k: (title, genres) for k, (title, genres, _) in _item_rows(path).items()}


YEAR_PATTERN = re.compile(r"\((\d{4})\)\s*$")


def _year(text: str) -> Optional[int]:
    text = (text or "").strip()
    if text.isdigit():
        return int(text)
    match = YEAR_PATTERN.search(text) or re.search(r"(\d{4})$", text)   # "(1995)" in a title, "01-Jan-1995"
    return int(match.group(1)) if match else None


def _item_rows(path: Path) -> Dict[str, Tuple[str, List[str], Optional[int]]]:
    """movie id → (title, genres, release year or None)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: item file does not exist")
    out: Dict[str, Tuple[str, List[str]]] = {}
    name = _name(path)
    with _open_text(path) as f:
        if name.endswith(".item") and not name.startswith("u."):
            header = f.readline().rstrip("\n").split("\t")
            cols = {h.split(":")[0]: i for i, h in enumerate(header)}
            for line in f:
                parts = line.rstrip("\n").split("\t")
                genres = parts[cols["class"]].split() if "class" in cols and len(parts) > cols["class"] else []
                year = _year(parts[cols["release_year"]]) if "release_year" in cols and len(parts) > cols[
                    "release_year"] else None
                out[parts[cols["item_id"]]] = (parts[cols.get("movie_title", 1)], genres, year)
        elif name == "u.item":
            for line in f:
                parts = line.rstrip("\n").split("|")
                flags = parts[-19:]
                out[parts[0]] = (parts[1], [g for g, flag in zip(UDATA_GENRES, flags) if flag == "1"],
                                 _year(parts[2]) if len(parts) > 2 else None)
        else:  # movies.csv
            for row in csv.DictReader(f):
                genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
                out[row["movieId"]] = (row["title"], genres, _year(row["title"]))
    return out


def _split_paths(source: SourceConfig) -> "tuple[Path, Optional[Path], Optional[Path]]":
    """(ratings file, item file or None, user file or None)."""
    paths = [Path(p) for p in source.paths]
    ratings = [p for p in paths if _name(p).endswith((".inter", "u.data", "ratings.csv"))]
    users = [p for p in paths if _name(p).endswith(".user")]
    items = [p for p in paths if p not in ratings and p not in users]
    if len(ratings) != 1:
        raise DataError(f"movielens source needs exactly one ratings file in paths, got {source.paths}")
    return ratings[0], items[0] if items else None, users[0] if users else None


def item_side_table(source: SourceConfig) -> Optional[pa.Table]:
    """``item`` (int64), ``title``, ``genres`` (list<string>), ``release_year`` (int64, null
    when the file has none) of every movie in the item file; None without an item file."""
    _, items, _ = _split_paths(source)
    if items is None:
        return None
    rows = {int(k): v for k, v in _item_rows(items).items() if k.isdigit()}
    keys = sorted(rows)
    return pa.table({"item": pa.array(keys, pa.int64()),
                     "title": pa.array([rows[k][0] for k in keys], pa.string()),
                     "genres": pa.array([rows[k][1] for k in keys], pa.list_(pa.string())),
                     "release_year": pa.array([rows[k][2] for k in keys], pa.int64())})


def user_side_table(source: SourceConfig, report: RejectionReport) -> Optional[pa.Table]:
    """``user, age, gender, occupation, zip_code, zip_prefix`` from a RecBole ``*.user`` file
    (typed header) or ``u.user`` (``id|age|gender|occupation|zip``); None without one."""
    _, _, path = _split_paths(source)
    if path is None:
        return None
    if not path.exists():
        raise DataError(f"{path}: user file does not exist")
    recbole = not _name(path).startswith("u.")
    columns: Dict[str, list] = {k: [] for k in ("user", "age", "gender", "occupation", "zip_code")}
    with _open_text(path) as f:
        if recbole:
            header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
            want = ["user_id", "age", "gender", "occupation", "zip_code"]
            missing = [w for w in want if w not in header]
            if missing:
                raise DataError(f"{path}: user file header {header} lacks {missing}")
            index = [header.index(w) for w in want]
        for number, line in enumerate(f, start=2 if recbole else 1):
            parts = line.rstrip("\n").split("\t" if recbole else "|")
            if not line.strip():
                continue
            values = [parts[i] if i < len(parts) else "" for i in index] if recbole else parts[:5]
            if len(values) < 5 or not values[0].strip().isdigit():
                report.reject("bad_user_row", str(path), line=number, value=line[:80])
                continue
            age = values[1].strip()
            columns["user"].append(int(values[0]))
            columns["age"].append(int(age) if age.isdigit() else None)
            for key, value in zip(("gender", "occupation", "zip_code"), values[2:5]):
                columns[key].append(value.strip() or None)
    table = pa.table({"user": pa.array(columns["user"], pa.int64()), "age": pa.array(columns["age"], pa.int64()),
                      "gender": pa.array(columns["gender"], pa.string()),
                      "occupation": pa.array(columns["occupation"], pa.string()),
                      "zip_code": pa.array(columns["zip_code"], pa.string())})
    return table.append_column("zip_prefix", pc.utf8_slice_codeunits(table.column("zip_code"), 0, 1))


def _layout(path: Path) -> Tuple[str, bool, List[str]]:
    name = _name(path)
    if name.endswith(".inter"):
        return "\t", True, ["user", "item", "rating", "timestamp"]
    if name == "u.data":
        return "\t", False, ["user", "item", "rating", "timestamp"]
    if name.endswith(".csv"):
        return ",", True, ["user", "item", "rating", "timestamp"]
    raise DataError(f"{path}: not a MovieLens ratings file (*.inter, u.data or ratings.csv)")


def read_movielens(source: SourceConfig, report: RejectionReport) -> Iterator[pa.Table]:
    rating_path, item_path, _ = _split_paths(source)
    ratings = [rating_path]
    genres = item_table(item_path) if item_path else {}
    genre_ids = {g: i for i, g in enumerate(sorted({g for _, gs in genres.values() for g in gs}), start=1)}
    first_genre = {int(k): genre_ids[gs[0]] for k, (_, gs) in genres.items() if gs and k.isdigit()}
    delimiter, header, columns = _layout(ratings[0])
    validators = {"user": int_validator, "item": int_validator, "rating": float_validator,
                  "timestamp": float_validator}
    fast = {"user": pa.int64(), "item": pa.int64(), "rating": pa.float64(), "timestamp": pa.float64()}

    def check(parsed):
        bad = np.isnan(parsed["rating"].to_numpy(zero_copy_only=False))
        return {"bad_rating": bad}

    for table in read_delimited(ratings[0], columns, validators, fast, report, delimiter=delimiter, header=header,
                                row_check=check):
        item = table.column("item").to_numpy()
        category = np.array([first_genre.get(int(i), 0) for i in item], dtype=np.int64)
        missing = category == 0
        report.note("movie_without_genre_unknown_category", int(missing.sum()))
        label = pc.greater_equal(table.column("rating"), source.rating_threshold).to_numpy(zero_copy_only=False)
        yield pa.table({
            "user": table.column("user"), "item": table.column("item"),
            "category": pa.array(category, mask=missing),
            "behavior": pa.array(np.full(table.num_rows, BEHAVIORS["rating"], np.int8)),
            "timestamp": pc.cast(table.column("timestamp"), pa.int64()),
            "label": pa.array(label.astype(np.int8)),
        })
