"""Amazon, S3-Rec and MovieLens readers on small files that follow the public schemas,
including their bad-input cases (counted with file, line, field and value)."""

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.rejections import DataError, RejectionReport
from recsys.data_pipelines.schema import BEHAVIORS
from recsys.data_pipelines.sources.amazon import read_amazon, read_metadata, read_ratings_csv
from recsys.data_pipelines.sources.movielens import read_movielens
from recsys.data_pipelines.sources.s3rec import item_attributes, read_s3rec


def read(fn, source, on_error="skip"):
    report = RejectionReport(on_error=on_error, max_reject_rate=1.0)
    tables = list(fn(source, report))
    return (pa.concat_tables(tables) if tables else None), report


# ------------------------------------------------------------------ Amazon
REVIEWS_2014 = [
    {"reviewerID": "A1", "asin": "B001", "reviewerName": "x", "overall": 5.0, "unixReviewTime": 1300000000,
     "reviewTime": "03 13, 2011", "summary": "ok", "reviewText": "fine"},
    {"reviewerID": "A1", "asin": "B002", "overall": 4.0, "unixReviewTime": 1300000100},
    {"reviewerID": "A2", "asin": "B003", "overall": 1.0, "unixReviewTime": 1300000200},   # no metadata
]
META_2014 = [
    {"asin": "B001", "categories": [["Beauty", "Makeup", "Face"], ["Beauty", "Skin Care", "Lotion"]],
     "title": "a 'quoted' title"},
    {"asin": "B002", "categories": [["Beauty", "Hair"]], "price": 9.5},
]


def write_amazon(tmp_path, extra_review_lines=(), extra_meta_lines=()):
    reviews = tmp_path / "reviews_Beauty_5.json"
    reviews.write_text("".join(json.dumps(r) + "\n" for r in REVIEWS_2014) + "".join(extra_review_lines))
    meta = tmp_path / "meta_Beauty.json.gz"       # 2014 metadata: Python literals, gzip as published
    meta.write_bytes(gzip.compress(("".join(repr(m) + "\n" for m in META_2014) + "".join(extra_meta_lines)).encode()))
    return reviews, meta


def test_amazon_2014_reviews_and_literal_metadata(tmp_path):
    reviews, meta = write_amazon(tmp_path)
    table, report = read(read_amazon, SourceConfig(format="amazon", paths=[str(reviews), str(meta)]))
    assert table.column("user").to_pylist() == ["A1", "A1", "A2"]
    assert table.column("item").to_pylist() == ["B001", "B002", "B003"]
    # DIN: the last element of the item's last category path
    assert table.column("category").to_pylist() == ["Lotion", "Hair", None]
    assert table.column("timestamp").to_pylist() == [1300000000, 1300000100, 1300000200]
    assert set(table.column("behavior").to_pylist()) == {BEHAVIORS["review"]}
    assert report.rejected == 0 and report.accepted == 3
    assert report.notes["item_without_metadata_unknown_category"] == 1


def test_amazon_2018_strict_json_metadata(tmp_path):
    meta = tmp_path / "meta_All_Beauty.json"
    meta.write_text(json.dumps({"asin": "B001", "category": ["All Beauty", "Skin", "Toner"], "title": "t"}) + "\n"
                    + json.dumps({"asin": "B002", "category": []}) + "\n")
    categories = read_metadata(meta, RejectionReport())
    assert categories == {"B001": "Toner"}            # an empty category list gives no category


def test_amazon_bad_lines_are_counted_with_line_and_field(tmp_path):
    bad_reviews = ["{not json\n",
                   json.dumps({"reviewerID": "A3", "unixReviewTime": 1}) + "\n",                 # no asin
                   json.dumps({"reviewerID": "A3", "asin": "B1", "unixReviewTime": "soon"}) + "\n"]
    reviews, meta = write_amazon(tmp_path, bad_reviews, ["{'title': 'no asin'}\n", "{'asin': 'B9', broken\n"])
    table, report = read(read_amazon, SourceConfig(format="amazon", paths=[str(reviews), str(meta)]))
    assert table.num_rows == 3
    assert dict(report.counts) == {"bad_json": 1, "missing_field": 1, "bad_timestamp": 1,
                                   "metadata_without_asin": 1, "bad_metadata_line": 1}
    assert report.examples["bad_json"][0].line == 4
    assert report.examples["missing_field"][0].line == 5 and report.examples["missing_field"][0].field == "asin"
    assert report.examples["bad_timestamp"][0].value == "soon"
    assert report.examples["bad_metadata_line"][0].line == 4
    assert report.examples["bad_metadata_line"][0].file.endswith("meta_Beauty.json.gz")
    with pytest.raises(DataError, match=r"reviews_Beauty_5.json, line 4"):
        read(read_amazon, SourceConfig(format="amazon", paths=[str(reviews)]), on_error="raise")


def test_amazon_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="reviews.json: input file does not exist"):
        read(read_amazon, SourceConfig(format="amazon", paths=[str(tmp_path / "reviews.json")]))
    lines = "".join(json.dumps({"reviewerID": f"U{i}", "asin": f"I{i}", "unixReviewTime": i}) + "\n"
                    for i in range(5000)).encode()
    path = tmp_path / "reviews.json.gz"
    path.write_bytes(gzip.compress(lines)[:-100])
    table, report = read(read_amazon, SourceConfig(format="amazon", paths=[str(path)]))
    assert report.counts["truncated_file"] == 1 and 0 < table.num_rows < 5000
    assert table.num_rows + report.rejected == report.lines
    assert report.files[str(path)]["problems"][0]["reason"] == "truncated_file"
    with pytest.raises(DataError, match="exactly one reviews file"):
        read(read_amazon, SourceConfig(format="amazon", paths=[str(path), str(path)]))


def test_amazon_ratings_csv(tmp_path):
    path = tmp_path / "ratings_Beauty.csv"
    path.write_text("A1,B001,5.0,1300000000\nA1,B002,2.0,1300000100\nA2,B001,x,1300000200\nA2,B003,4.0\n")
    table, report = read(read_ratings_csv, SourceConfig(format="ratings_csv", paths=[str(path)]))
    assert table.column("user").to_pylist() == ["A1", "A1"] and table.column("item").to_pylist() == ["B001", "B002"]
    assert table.column("category").null_count == 2
    assert dict(report.counts) == {"bad_rating": 1, "wrong_field_count": 1}
    assert report.examples["bad_rating"][0].line == 3 and report.examples["bad_rating"][0].value == "x"
    assert report.notes["ratings_csv_unknown_category"] == 2


def test_amazon_build_keeps_string_ids_and_encodes_new_data(tmp_path):
    reviews, meta = write_amazon(tmp_path)
    more = [{"reviewerID": "A1", "asin": "B003", "unixReviewTime": 1300000300},
            {"reviewerID": "A2", "asin": "B001", "unixReviewTime": 1300000400},
            {"reviewerID": "A2", "asin": "B002", "unixReviewTime": 1300000500}]
    more += [{"reviewerID": "A3", "asin": f"B00{k}", "unixReviewTime": 1300000600 + k} for k in (4, 5, 6)]
    with open(reviews, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in more))
    config = DataConfig(output=str(tmp_path / "ds"), source=SourceConfig(format="amazon", paths=[str(reviews), str(meta)]),
                        protocol=ProtocolConfig(name="din", max_length=5, validation=False), partitions=2)
    ds = BuiltDataset(build_dataset(config, progress=False))
    items = ds.vocabulary("item")
    assert items.raw.type == pa.string() and ds.num_items == 6 + 2
    assert items.encode(pa.array(["B001", "never-seen"])).tolist()[1] == 1
    assert ds.manifest["users"] == 3 and ds.manifest["events"] == 9
    assert ds.manifest["rejections"]["notes"]["item_without_metadata_unknown_category"] == 5


# ------------------------------------------------------------------ S3-Rec
def write_s3rec(tmp_path, lines, attributes):
    seq = tmp_path / "Beauty.txt"
    seq.write_text("".join(line + "\n" for line in lines))
    attr = tmp_path / "Beauty_item2attributes.json"
    attr.write_text(json.dumps(attributes))
    return seq, attr


def test_s3rec_positions_are_time_and_first_attribute_is_category(tmp_path):
    seq, attr = write_s3rec(tmp_path, ["1 10 11 12", "2 12 10"], {"10": [100, 101], "11": [102], "12": []})
    table, report = read(read_s3rec, SourceConfig(format="s3rec", paths=[str(seq), str(attr)]))
    assert table.column("user").to_pylist() == [1, 1, 1, 2, 2]
    assert table.column("item").to_pylist() == [10, 11, 12, 12, 10]
    assert table.column("timestamp").to_pylist() == [0, 1, 2, 0, 1]
    assert table.column("category").to_pylist() == [100, 102, None, None, 100]
    assert report.notes["item_without_attributes_unknown_category"] == 2
    last, _ = read(read_s3rec, SourceConfig(format="s3rec", paths=[str(seq), str(attr)], category_attribute="last"))
    assert last.column("category").to_pylist()[0] == 101
    assert item_attributes(attr)[10] == [100, 101]       # all attributes stay available


def test_s3rec_bad_lines(tmp_path):
    seq, attr = write_s3rec(tmp_path, ["1 10 11", "", "2 10 x1 11", "3", "4 11 10"], {"10": [1], "11": [2]})
    table, report = read(read_s3rec, SourceConfig(format="s3rec", paths=[str(seq), str(attr)]))
    assert table.column("user").to_pylist() == [1, 1, 4, 4]
    assert dict(report.counts) == {"empty_line": 1, "bad_item": 1, "empty_sequence": 1}
    assert [report.examples[r][0].line for r in ("empty_line", "bad_item", "empty_sequence")] == [2, 3, 4]
    assert report.examples["bad_item"][0].value == "x1"
    with pytest.raises(DataError, match="attribute file does not exist"):
        read(read_s3rec, SourceConfig(format="s3rec", paths=[str(seq), str(tmp_path / "X_item2attributes.json")]))


# ------------------------------------------------------------------ MovieLens
def test_movielens_recbole_atomic_files(tmp_path):
    inter = tmp_path / "ml.inter"
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     "1\t10\t5\t881250949\n1\t11\t3\t881250950\n2\t10\tbad\t881250951\n2\t12\t4\t881250952\n")
    item = tmp_path / "ml.item"
    item.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    "10\tToy Story\t1995\tAnimation Children's Comedy\n11\tHeat\t1995\tAction Crime\n12\tX\t1990\t\n")
    table, report = read(read_movielens, SourceConfig(format="movielens", paths=[str(inter), str(item)]))
    assert table.column("item").to_pylist() == [10, 11, 12]
    assert table.column("label").to_pylist() == [1, 0, 1]          # rating >= 4
    # genre ids by sorted genre name: Action 1, Animation 2, Children's 3, Comedy 4, Crime 5
    assert table.column("category").to_pylist() == [2, 1, None]
    assert dict(report.counts) == {"bad_rating": 1} and report.examples["bad_rating"][0].line == 4
    assert report.notes["movie_without_genre_unknown_category"] == 1


def test_movielens_classic_udata_and_ratings_csv(tmp_path):
    udata = tmp_path / "u.data"
    udata.write_text("196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n22\t242\t4\t878887116\n")
    uitem = tmp_path / "u.item"
    flags = lambda genres: "|".join("1" if i in genres else "0" for i in range(19))   # noqa: E731
    uitem.write_text(f"242|Kolya (1996)|24-Jan-1997||http://x|{flags({5})}\n"
                     f"302|L.A. Confidential (1997)|01-Jan-1997||http://y|{flags({6, 10, 13, 16})}\n")
    table, _ = read(read_movielens, SourceConfig(format="movielens", paths=[str(udata), str(uitem)],
                                                 rating_threshold=3.5))
    assert table.column("label").to_pylist() == [0, 1, 1]
    assert table.column("category").to_pylist()[0] != table.column("category").to_pylist()[1]

    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,2.5,964982224\n")
    movies = tmp_path / "movies.csv"
    movies.write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                      '3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    table, report = read(read_movielens, SourceConfig(format="movielens", paths=[str(ratings), str(movies)]))
    assert table.column("user").to_pylist() == [1, 1, 2] and table.column("label").to_pylist() == [1, 1, 0]
    assert table.column("category").to_pylist() == [1, None, 1]     # Adventure (1), no genre → unknown
    assert report.notes["movie_without_genre_unknown_category"] == 1
    with pytest.raises(DataError, match="exactly one ratings file"):
        read(read_movielens, SourceConfig(format="movielens", paths=[str(movies), str(tmp_path / "x.dat")]))


def test_movielens_labels_flow_into_samples(tmp_path):
    inter = tmp_path / "ml.inter"
    rows = [(u, 10 + (u * 7 + k) % 9, 1 + (u + k) % 5, 1000 + k) for u in range(1, 6) for k in range(6)]
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    config = DataConfig(output=str(tmp_path / "ds"), source=SourceConfig(format="movielens", paths=[str(inter)]),
                        protocol=ProtocolConfig(name="din", max_length=4), partitions=2)
    ds = BuiltDataset(build_dataset(config, progress=False))
    test = ds.samples("test").to_pandas()
    rating = {(u, t - 1000): r for u, _, r, t in rows}
    users = ds.vocabulary("user").decode(test["user"].to_numpy()).to_pylist()
    # every event is one sample with its own label (no sampled negatives): the test row is the last rating
    assert [int(label) for label in test["label"]] == [int(rating[(u, 5)] >= 4) for u in users]
    assert ds.split_counts == {"train": 5 * 3, "valid": 5, "test": 5}


# ------------------------------------------------------------------ Taobao multi-behaviour (CRGCN)
def test_real_taobao_multibehavior_counts_match_source_md(tmp_path):
    from tests.conftest import shared_dataset
    archive = shared_dataset("taobao_multibehavior_crgcn") / "taobao_multibehavior_crgcn.tar.gz"
    config = DataConfig(output=str(tmp_path / "mb"), source=SourceConfig(format="multibehavior", paths=[str(archive)]),
                        protocol=ProtocolConfig(name="loo", max_length=50), partitions=2)
    ds = BuiltDataset(build_dataset(config, progress=False))
    m = ds.manifest
    assert m["events"] == 873_954 + 195_476 + 92_180 + 15_449 + 15_449 and m["rejections"]["rejected"] == 0
    assert m["users"] == 15_449 and ds.split_counts["test"] == 15_449 and ds.split_counts["valid"] == 15_449
    behaviors = ds.flat("behavior")
    assert np.bincount(behaviors, minlength=5)[1:5].tolist() == [873_954, 195_476, 0, 92_180 + 2 * 15_449]
    # the test target of each user is the test.txt purchase (stage 2, last in the timeline)
    offsets, ts = ds.flat("offsets"), ds.flat("timestamp")
    assert np.all(ts[offsets[1:] - 1] == 2) and np.all(ts[offsets[1:] - 2] == 1)


def test_multibehavior_bad_lines(tmp_path):
    from recsys.data_pipelines.sources.multibehavior import read_multibehavior
    folder = tmp_path / "taobao"
    folder.mkdir()
    (folder / "view.txt").write_text("1 2\n1 x\n2 3 4\n2 5\n")
    (folder / "test.txt").write_text("1 9\n2 9\n")
    table, report = read(read_multibehavior, SourceConfig(format="multibehavior", paths=[str(folder)]))
    assert table.column("item").to_pylist() == [2, 5, 9, 9]
    assert table.column("timestamp").to_pylist() == [0, 0, 2, 2]
    assert dict(report.counts) == {"bad_item": 1, "wrong_field_count": 1}
    assert report.examples["bad_item"][0].line == 2 and report.examples["wrong_field_count"][0].line == 3
    with pytest.raises(DataError, match="does not exist"):
        read(read_multibehavior, SourceConfig(format="multibehavior", paths=[str(tmp_path / "nope.tar.gz")]))
    bad = tmp_path / "cut.tar.gz"
    bad.write_bytes((folder / "view.txt").read_bytes())
    with pytest.raises(DataError, match="cannot read the archive"):
        read(read_multibehavior, SourceConfig(format="multibehavior", paths=[str(bad)]))


def test_retrieval_refuses_label_0_samples_and_trains_with_every_rating_an_interaction(tmp_path):
    from recsys.config import parse_config
    from recsys.errors import ConfigError
    from recsys.runner import fit
    inter = tmp_path / "ml.inter"
    rows = [(u, 10 + (u * 7 + k) % 9, 1 + (u + k) % 5, 1000 + k) for u in range(1, 9) for k in range(8)]
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))

    def run(threshold, name):
        data = DataConfig(output=str(tmp_path / name), protocol=ProtocolConfig(name="loo", max_length=4),
                          source=SourceConfig(format="movielens", paths=[str(inter)], rating_threshold=threshold))
        out = build_dataset(data, progress=False)
        config = parse_config({"name": name, "output_dir": str(tmp_path / f"run_{name}"),
                               "model": {"class_path": "ComiRecSA", "init_args": {"embedding_dim": 8}},
                               "data": {"path": str(out), "batch_size": 8},
                               "retrieval": {"negatives": "uniform", "num_negatives": 4, "ks": [5]},
                               "trainer": {"max_epochs": 1, "monitor": "valid/recall@5"}})
        return fit(config, progress=False)

    with pytest.raises(ConfigError, match=r"training samples have label 0 .*rating_threshold: 0"):
        run(4.0, "explicit")
    assert (run(0.0, "implicit") / "metrics.json").exists()
