"""Reader for MovieLens ratings: RecBole atomic files, the classic ``u.data`` and ``ratings.csv``.

Layouts (by file name):
    ``*.inter``      RecBole atomic (tab-separated, typed header ``user_id:token item_id:token
                     rating:float timestamp:float``), with ``*.item`` (``class:token_seq`` genres)
    ``u.data``       tab-separated ``user item rating timestamp``, with ``u.item`` (pipe-separated,
                     19 genre flags at the end)
    ``ratings.csv``  ``userId,movieId,rating,timestamp`` with a header, with ``movies.csv``
                     (``movieId,title,genres`` with ``|``-separated genres)

Every rating is an event; its label is ``rating >= rating_threshold`` (default 4, as in DIN's
MovieLens experiment). A movie's category is its first genre (all genres are kept in the
item side table with the title); movies without a genre get the unknown category (counted).
"""

from __future__ import annotations

import csv
import gzip
import io
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
                out[parts[cols["item_id"]]] = (parts[cols.get("movie_title", 1)], genres)
        elif name == "u.item":
            for line in f:
                parts = line.rstrip("\n").split("|")
                flags = parts[-19:]
                out[parts[0]] = (parts[1], [g for g, flag in zip(UDATA_GENRES, flags) if flag == "1"])
        else:  # movies.csv
            for row in csv.DictReader(f):
                genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
                out[row["movieId"]] = (row["title"], genres)
    return out


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
    ratings = [Path(p) for p in source.paths if _name(Path(p)).endswith((".inter", "u.data", "ratings.csv"))]
    items = [Path(p) for p in source.paths if Path(p) not in ratings]
    if len(ratings) != 1:
        raise DataError(f"movielens source needs exactly one ratings file in paths, got {source.paths}")
    genres = item_table(items[0]) if items else {}
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
