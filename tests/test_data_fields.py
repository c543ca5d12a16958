"""The open feature contract, data side: field declarations → side tables → manifest → loader."""

import hashlib
from pathlib import Path

import pytest

from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource

# sha256 over split_columns/**.npy and flat/*.npy (relative path + bytes, sorted) of the
# builds below, computed at commit 4d8fb40, before side fields existed: configs without
# side fields, and the side fields themselves, must leave the sample columns byte-identical.
PINNED = {
    "din": "ded39b2d8548f5ad0fcb17cd2eddae2e42c40efa9fc77f9be8606dbde163167c",
    "dare": "8cdb174712d417c3c9b626969cb9a1da60b611bed5e022bbe52d6da6125d395e",
}
PROTOCOLS = {
    "din": ProtocolConfig(max_length=20),
    "dare": ProtocolConfig(name="dare", max_length=10, negatives="popularity", n_neg=2, n_train_targets=3),
}


def sample_digest(out: Path) -> str:
    h = hashlib.sha256()
    for sub in ("split_columns", "flat"):
        for f in sorted((Path(out) / sub).rglob("*.npy")):
            h.update(str(f.relative_to(out)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def pinned_config(tmp_path, protocol: str, **extra) -> DataConfig:
    src = SourceConfig(format="synthetic", synthetic=SyntheticSource(n_rows=20_000, n_items=2_000, n_categories=40,
                                                                     mean_events=30.0, min_events=5))
    return DataConfig(output=str(tmp_path / protocol), source=src, protocol=PROTOCOLS[protocol], partitions=3,
                      **extra)


@pytest.mark.parametrize("protocol", sorted(PINNED))
def test_configs_without_side_fields_keep_their_sample_columns(tmp_path, protocol):
    out = build_dataset(pinned_config(tmp_path, protocol), progress=False)
    assert sample_digest(out) == PINNED[protocol]


# ---------------------------------------------------------------- helpers
import gzip  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from recsys.contract import FeatureSpec, FieldSpec, Jagged  # noqa: E402
from recsys.data_pipelines.config import FieldConfig, from_dict, load_data_config  # noqa: E402
from recsys.data_pipelines.dataset import BuiltDataset  # noqa: E402
from recsys.data_pipelines.loader import SampleLoader  # noqa: E402
from recsys.data_pipelines.schema import check_events, event_schema  # noqa: E402
from recsys.data_pipelines.side_tables import context_values  # noqa: E402
from recsys.data_pipelines.synthetic import SyntheticConfig, _Catalogue  # noqa: E402
from recsys.errors import ConfigError, DataError  # noqa: E402
from tests.conftest import REPO, shared_dataset  # noqa: E402

ALL_KINDS = [FieldConfig("price", "number", "item"), FieldConfig("brand", "id", "item"),
             FieldConfig("tags", "ids", "item"), FieldConfig("vec", "dense", "item", frozen=True),
             FieldConfig("age", "number", "user"), FieldConfig("segment", "id", "user"),
             FieldConfig("interests", "ids", "user"), FieldConfig("hour", "id", "context"),
             FieldConfig("weekday", "id", "context"), FieldConfig("behavior_type", "id", "context", column="behavior")]


def side_files(tmp_path, protocol="din", n_users=None):
    """Parquet item/user tables keyed by the synthetic source's raw ids, with every kind."""
    cfg = pinned_config(tmp_path, protocol)
    syn = SyntheticConfig(**vars(cfg.source.synthetic))
    raw_items = _Catalogue(syn).raw_item_id
    rng = np.random.default_rng(5)
    n = len(raw_items)
    tags = [list(rng.integers(0, 30, rng.integers(0, 4))) for _ in range(n)]
    items = pa.table({"item": pa.array(raw_items), "price": pa.array(rng.lognormal(2, 1, n), mask=rng.random(n) < 0.1),
                      "brand": pa.array([f"b{v}" for v in rng.integers(0, 50, n)]),
                      "tags": pa.array(tags, pa.list_(pa.int64())),
                      "vec": pa.array(rng.normal(size=(n, 3)).tolist(), pa.list_(pa.float32()))})
    users = n_users or 500
    profiles = pa.table({"user": pa.array(np.arange(1, users + 1)), "age": pa.array(rng.integers(18, 70, users)),
                         "segment": pa.array([f"s{v}" for v in rng.integers(0, 5, users)]),
                         "interests": pa.array([list(rng.integers(0, 9, rng.integers(0, 3))) for _ in range(users)],
                                               pa.list_(pa.int64()))})
    pq.write_table(items, tmp_path / "items.parquet")
    pq.write_table(profiles, tmp_path / "users.parquet")
    cfg.source.item_file, cfg.source.user_file = str(tmp_path / "items.parquet"), str(tmp_path / "users.parquet")
    cfg.fields = list(ALL_KINDS)
    cfg.__post_init__()
    return cfg, items, profiles


def raw_row(table, key, value):
    keys = table.column(key).to_pylist()
    return {name: table.column(name)[keys.index(value)].as_py() for name in table.column_names} if value in keys else None


# ---------------------------------------------------------------- samples unchanged
@pytest.mark.parametrize("protocol", sorted(PINNED))
def test_side_fields_leave_the_sample_columns_byte_identical(tmp_path, protocol):
    cfg, _, _ = side_files(tmp_path, protocol)
    cfg.output = str(tmp_path / "with_fields")
    assert sample_digest(build_dataset(cfg, progress=False)) == PINNED[protocol]


# ---------------------------------------------------------------- each kind round-trips
def test_every_kind_round_trips_raw_file_to_batch(tmp_path):
    cfg, items, profiles = side_files(tmp_path)
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    spec = ds.feature_spec()
    assert [f.name for f in spec.fields] == ["user", "item", "category", "behavior"] + [f.name for f in ALL_KINDS]
    assert ds.manifest["fields"] == [f.to_dict() for f in spec.fields]      # FieldSpec.to_dict, exactly
    item_vocab, user_vocab = ds.vocabulary("item"), ds.vocabulary("user")
    # item side tables: row = item id, rows 0 and 1 zero, values = the raw file's, encoded
    price, brand, tags, vec = (ds.side_table(n) for n in ("price", "brand", "tags", "vec"))
    assert price.dtype == np.float32 and brand.dtype == np.int64 and tags.dtype == np.int64 and vec.dtype == np.float32
    assert price.shape == (ds.num_items,) and vec.shape == (ds.num_items, 3) == (spec.num_items, spec["vec"].size)
    assert tags.shape == (ds.num_items, spec["tags"].max_values)
    for table in (price, brand, tags, vec):
        assert not np.any(table[:2])
    brand_vocab, tag_vocab = ds.vocabulary("brand"), ds.vocabulary("tags")
    for item_id in (2, 3, ds.num_items // 2, ds.num_items - 1):
        raw = raw_row(items, "item", item_vocab.decode(np.array([item_id]))[0].as_py())
        expect_price = np.nan if raw["price"] is None else np.float32(raw["price"])
        np.testing.assert_equal(price[item_id], expect_price)
        assert brand[item_id] == brand_vocab.encode(pa.array([raw["brand"]]))[0]
        row = tags[item_id][: len(raw["tags"])]
        assert row.tolist() == tag_vocab.encode(pa.array(raw["tags"], pa.int64())).tolist()
        assert not tags[item_id][len(raw["tags"]):].any()                    # right-padded with 0
        np.testing.assert_allclose(vec[item_id], raw["vec"], rtol=1e-6)
    assert spec["vec"].frozen and spec["price"].kind == "number" and np.isfinite(spec["price"].mean)
    # the batch: user fields by the sample's user id, context from the target step's event
    names = [f.name for f in ALL_KINDS]
    loader = SampleLoader(ds, "train", 64, fields=names)
    batch = next(iter(loader))
    assert set(batch.profile) == {"age", "segment", "interests"} and set(batch.context) == {"hour", "weekday",
                                                                                          "behavior_type"}
    seg_vocab, int_vocab = ds.vocabulary("segment"), ds.vocabulary("interests")
    interests = batch.profile["interests"]
    assert isinstance(interests, Jagged) and interests.size == batch.size
    for b in range(batch.size):
        raw_user = user_vocab.decode(batch.user[b:b + 1].numpy())[0].as_py()
        raw = raw_row(profiles, "user", raw_user)
        if raw is None:      # no profile row: unknown id, NaN, empty list (counted)
            assert batch.profile["segment"][b] == 1 and torch.isnan(batch.profile["age"][b])
            continue
        assert batch.profile["age"][b] == raw["age"]
        assert batch.profile["segment"][b] == seg_vocab.encode(pa.array([raw["segment"]]))[0]
        lo, hi = interests.offsets[b], interests.offsets[b + 1]
        assert interests.values[lo:hi].tolist() == int_vocab.encode(pa.array(raw["interests"], pa.int64())).tolist()
    cols = ds.sample_columns("train")
    index = batch.sample_index.numpy()
    event = ds.flat("offsets")[cols["row"][index]] + cols["cut"][index]
    ts = ds.flat("timestamp")[event]
    assert batch.context["hour"].tolist() == ((ts // 3600) % 24 + 2).tolist()
    assert batch.context["weekday"].tolist() == ((ts // 86400 + 3) % 7 + 2).tolist()
    assert batch.context["behavior_type"].tolist() == ds.flat("behavior")[event].tolist()
    # a negative shares its positive's cut, so its context
    labels = batch.label.numpy()
    pairs = np.flatnonzero((labels[:-1] == 1) & (labels[1:] == 0) & (cols["cut"][index][:-1] == cols["cut"][index][1:]))
    assert len(pairs) and all(batch.context["hour"][p] == batch.context["hour"][p + 1] for p in pairs)
    notes = ds.manifest["rejections"]["notes"]
    assert notes["users_without_side_row"] > 0 and notes["tags_empty_list"] > 0 and notes["price_null"] > 0
    raw_users = user_vocab.decode(np.asarray(ds.sample_columns("train")["user"])).to_numpy(zero_copy_only=False)
    no_profile = ~np.isin(raw_users, profiles.column("user").to_numpy())
    assert notes["train_samples_of_users_without_side_row"] == int(no_profile.sum()) > 0
    assert notes["item_side_rows_not_in_vocabulary"] == len(items) - (ds.num_items - 2)


def test_without_fields_the_batch_is_todays(tmp_path):
    cfg, _, _ = side_files(tmp_path)
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    plain, with_items = (next(iter(SampleLoader(ds, "valid", 32, fields=f))) for f in (None, ["price", "tags", "item"]))
    assert plain.profile == {} and plain.context == {} and with_items.profile == {} and with_items.context == {}
    assert torch.equal(plain.hist_item, with_items.hist_item) and torch.equal(plain.label, with_items.label)
    with pytest.raises(ConfigError, match=r"\['colour'\].*available side fields: \['price'"):
        SampleLoader(ds, "train", 8, fields=["colour"])


def test_builds_before_side_fields_give_the_core_feature_spec(tmp_path):
    out = build_dataset(pinned_config(tmp_path, "din"), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("fields", "side_tables", "context_columns"):
        manifest.pop(key)
    (out / "manifest.json").write_text(json.dumps(manifest))
    spec = BuiltDataset(out).feature_spec()
    assert spec == FeatureSpec(num_users=manifest["vocab_sizes"]["user"], num_items=manifest["vocab_sizes"]["item"],
                               num_categories=manifest["vocab_sizes"]["category"], num_behaviors=7, max_length=20)


# ---------------------------------------------------------------- history side fields = item-table lookups
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_history_side_fields_are_the_item_table_lookup_of_the_history(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("s3rec")
    n_items = data.draw(st.integers(3, 12))
    attributes = {str(10 + i): data.draw(st.lists(st.integers(100, 106), max_size=4)) for i in range(n_items)}
    lines = [" ".join([str(u)] + [str(10 + i) for i in data.draw(st.lists(st.integers(0, n_items - 1),
                                                                            min_size=4, max_size=9))])
             for u in range(1, data.draw(st.integers(2, 6)) + 1)]
    (tmp / "X.txt").write_text("\n".join(lines) + "\n")
    (tmp / "X_item2attributes.json").write_text(json.dumps(attributes))
    cfg = from_dict(type(pinned_config(tmp, "din")), {
        "output": str(tmp / "ds"), "partitions": 2,
        "source": {"format": "s3rec", "paths": [str(tmp / "X.txt"), str(tmp / "X_item2attributes.json")]},
        "protocol": {"name": "loo", "max_length": 4},
        "fields": [{"name": "attributes", "kind": "ids", "owner": "item"}]})
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    table, vocab, items = ds.side_table("attributes"), ds.vocabulary("attributes"), ds.vocabulary("item")
    for split in ("train", "valid", "test"):
        for batch in SampleLoader(ds, split, 7, fields=["attributes"]):
            looked_up = torch.from_numpy(table)[batch.hist_item]          # [B, L, max_values]
            for b in range(batch.size):
                for j in range(int(batch.lengths[b])):
                    raw_item = items.decode(batch.hist_item[b, j:j + 1].numpy())[0].as_py()
                    expect = vocab.encode(pa.array(attributes[str(raw_item)], pa.int64())).tolist() \
                        if attributes[str(raw_item)] else []
                    row = looked_up[b, j].tolist()
                    assert row[:len(expect)] == expect and not any(row[len(expect):])
                assert not looked_up[b, int(batch.lengths[b]):].any()     # padding behaviours: row 0
    # the category stays the first attribute
    first = [vocab.raw[int(i) - 2].as_py() if i >= 2 else None for i in table[2:, 0]]
    categories = ds.vocabulary("category")
    assert first == [categories.raw[int(i) - 2].as_py() if i >= 2 else None for i in ds.item_category[2:]]


# ---------------------------------------------------------------- bad input
def test_a_declared_field_absent_from_the_source_names_field_and_file(tmp_path):
    cfg, _, _ = side_files(tmp_path)
    cfg.fields = [FieldConfig("colour", "id", "item")]
    with pytest.raises(DataError, match=r"field 'colour': column 'colour' is absent from the item table of .*items\.parquet"):
        build_dataset(cfg, progress=False)
    cfg.fields = [FieldConfig("tags", "dense", "item")]
    with pytest.raises(DataError, match="cannot be a 'dense' field"):
        build_dataset(cfg, progress=False)
    cfg.source.item_file = ""
    cfg.fields = [FieldConfig("brand", "id", "item")]
    with pytest.raises(DataError, match="has no item side table"):
        build_dataset(cfg, progress=False)


def test_config_errors_name_the_key(tmp_path):
    def load(fields, fmt="synthetic"):
        path = tmp_path / "c.yaml"
        source = {"format": fmt} if fmt == "synthetic" else {"format": fmt, "paths": ["x.txt"]}
        path.write_text(json.dumps({"output": "o", "source": source, "fields": fields}))
        return load_data_config(path)
    with pytest.raises(ConfigError, match="kind must be one of"):
        load([{"name": "g", "kind": "multi", "owner": "item"}])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\]"):
        load([{"name": "g", "kind": "id", "owner": "item", "colour": 1}])
    with pytest.raises(ConfigError, match="duplicate"):
        load([{"name": "g", "kind": "id", "owner": "item"}, {"name": "g", "kind": "ids", "owner": "item"}])
    with pytest.raises(ConfigError, match="core field"):
        load([{"name": "category", "kind": "id", "owner": "item"}])
    with pytest.raises(ConfigError, match="positions, not times.*no hour"):
        load([{"name": "hour", "kind": "id", "owner": "context"}], fmt="s3rec")
    with pytest.raises(ConfigError, match="no weekday"):
        load([{"name": "wd", "kind": "id", "owner": "context", "column": "weekday"}], fmt="multibehavior")
    assert load([{"name": "b", "kind": "id", "owner": "context", "column": "behavior"}], "s3rec").fields[0].table \
        == "behavior"


@pytest.mark.parametrize("bad, message", [([1.0, 2.0], "width 2, expected 3"), ([1.0, float("nan"), 0.0], "NaN")])
def test_bad_dense_vectors_name_the_item(tmp_path, bad, message):
    cfg, items, _ = side_files(tmp_path)
    vectors = items.column("vec").to_pylist()
    vectors[7] = bad
    items = items.set_column(4, "vec", pa.array(vectors, pa.list_(pa.float32())))
    pq.write_table(items, cfg.source.item_file)
    raw = items.column("item")[7].as_py()
    with pytest.raises(DataError, match=rf"field 'vec': item {raw} in .*items\.parquet .*{message}"):
        build_dataset(cfg, progress=False)


def test_side_tables_of_another_vocabulary_are_refused(tmp_path):
    cfg, _, _ = side_files(tmp_path)
    a = BuiltDataset(build_dataset(cfg, progress=False))
    cfg.output = str(tmp_path / "other")
    cfg.source.synthetic.seed = 1          # other items → another item vocabulary
    b = BuiltDataset(build_dataset(cfg, progress=False))
    a.check_side_tables({"item": a.side_table_stamp("item")})
    with pytest.raises(DataError, match="another item vocabulary"):
        b.check_side_tables({"item": a.side_table_stamp("item")})
    np.save(tmp_path / "other" / "side" / "item" / "price.npy", np.zeros(3, np.float32))
    with pytest.raises(DataError, match="has 3 rows but the item vocabulary"):
        b.side_table("price")


def test_the_event_schema_is_enforced_at_the_reader_boundary():
    good = pa.table({"user": pa.array([1]), "item": pa.array([2]), "category": pa.nulls(1, pa.null()),
                     "behavior": pa.array([1], pa.int8()), "timestamp": pa.array([0])})
    assert check_events(good, "r").column("category").type == pa.int64()     # all-null category: item id type
    assert check_events(good, "r").schema.equals(event_schema(pa.int64()))
    with pytest.raises(DataError, match="r: event column 'timestamp' has type int32"):
        check_events(good.set_column(4, "timestamp", pa.array([0], pa.int32())), "r")
    with pytest.raises(DataError, match="columns"):
        check_events(good.drop(["behavior"]), "r")


def test_context_values_by_hand():
    ts = np.array([0, 3599, 3600, 86400 * 4 + 7200])       # 1970-01-01 00:00 (Thu), 00:59, 01:00, Mon 02:00
    assert context_values("hour", ts).tolist() == [0, 0, 1, 2]
    assert context_values("weekday", ts).tolist() == [3, 3, 3, 0]


# ---------------------------------------------------------------- content vectors
def write_movielens(tmp_path):
    inter = tmp_path / "ml.inter"
    rows = [(u, i, 5 - (u + i) % 3, 881250949 + 3600 * k) for u in (1, 2, 3) for k, i in enumerate((10, 11, 12, 13, 14))]
    inter.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    item = tmp_path / "ml.item"
    item.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                    "10\tToy Story\t1995\tAnimation Comedy\n11\tToy Story 2\t1999\tAnimation Comedy\n"
                    "12\tHeat\t1995\tAction Crime\n13\tHeat\t1995\tAction Crime\n14\t\t\t\n")
    user = tmp_path / "ml.user"
    user.write_text("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
                    "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\tT8H1N\n")
    return [str(inter), str(item), str(user)]


def test_embed_text_writes_frozen_lsa_vectors_into_the_item_table(tmp_path):
    from recsys.data_pipelines.text_embedding import embed_item_text
    cfg = from_dict(type(pinned_config(tmp_path, "din")), {
        "output": str(tmp_path / "ds"), "partitions": 1, "source": {"format": "movielens", "paths": write_movielens(tmp_path)},
        "protocol": {"name": "din", "max_length": 3},
        "fields": [{"name": "genres", "kind": "ids", "owner": "item"}, {"name": "gender", "kind": "id", "owner": "user"},
                   {"name": "zip_prefix", "kind": "id", "owner": "user"}, {"name": "age", "kind": "number", "owner": "user"}]})
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    assert ds.manifest["rejections"]["notes"]["users_without_side_row"] == 1        # user 3
    assert ds.vocabulary("zip_prefix").raw.to_pylist() == ["8", "T"]
    summary = embed_item_text(cfg, ["title", "genres"], "text_vec", dim=3)
    ds = BuiltDataset(ds.path)
    vec, items = ds.side_table("text_vec"), ds.vocabulary("item")
    spec = ds.feature_spec()["text_vec"]
    assert spec == FieldSpec("text_vec", "dense", "item", size=3, frozen=True) and vec.shape == (7, 3)
    row = {raw: items.encode(pa.array([raw]))[0] for raw in (10, 11, 12, 13, 14)}
    np.testing.assert_allclose(vec[row[12]], vec[row[13]], atol=1e-6)               # same text, same vector
    assert not vec[row[14]].any() and not vec[:2].any()                             # no text: zeros, counted
    assert summary["items_without_text"] == 1 and summary["method"] == "tfidf+truncated_svd"
    np.testing.assert_allclose(np.linalg.norm(vec[row[10]]), 1.0, rtol=1e-5)
    assert float(vec[row[10]] @ vec[row[11]]) > float(vec[row[10]] @ vec[row[12]])  # Toy Story near Toy Story 2
    assert build_dataset(cfg, progress=False) == ds.path                            # still the same build (reused)


def test_embed_text_command_imports_no_torch(tmp_path):
    paths = write_movielens(tmp_path)
    config = tmp_path / "ml.yaml"
    config.write_text(json.dumps({"output": str(tmp_path / "ds"), "partitions": 1,
                                  "source": {"format": "movielens", "paths": paths}}))
    code = ("import sys; from recsys.cli import main; rc = main(['data', 'build', sys.argv[1], '--quiet']); "
            "rc = rc or main(['data', 'embed-text', sys.argv[1], '--columns', 'title', 'genres', '--dim', '2']); "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'torch imported'; sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "2-d tfidf+truncated_svd vectors" in result.stdout
    assert BuiltDataset(tmp_path / "ds").side_table("text_vec").shape == (7, 2)


# ---------------------------------------------------------------- real files
def test_movielens_100k_side_fields_from_the_shipped_config(tmp_path):
    shared_dataset("movielens_100k")
    cfg = load_data_config(REPO / "configs" / "data" / "ml100k.yaml")
    cfg.output = str(tmp_path / "ml")
    cfg.source.paths = [str(REPO / p) for p in cfg.source.paths]
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    # the digest of this build's sample columns before side fields existed (commit 4d8fb40)
    assert sample_digest(ds.path) == "f250ea36b16ef6d0262193a4de28eccf98648f36609272087d6e8a65ba5e7115"
    items, users = ds.vocabulary("item"), ds.vocabulary("user")
    toy_story, user_1 = items.encode(pa.array([1]))[0], users.encode(pa.array([1]))[0]
    genres = ds.vocabulary("genres").decode(ds.side_table("genres")[toy_story]).to_pylist()
    assert [g for g in genres if g] == ["Animation", "Children's", "Comedy"]
    assert ds.vocabulary("release_year").decode(ds.side_table("release_year")[toy_story:toy_story + 1]).to_pylist() \
        == [1995]
    assert ds.side_table("age")[user_1] == 24
    assert ds.vocabulary("gender").decode(ds.side_table("gender")[user_1:user_1 + 1]).to_pylist() == ["M"]
    assert ds.vocabulary("occupation").decode(ds.side_table("occupation")[user_1:user_1 + 1]).to_pylist() == \
        ["technician"]
    assert ds.manifest["rejections"]["notes"].get("users_without_side_row", 0) == 0
    spec = ds.feature_spec()
    assert spec["genres"].size == 19 + 2 and spec["hour"].size == 26 and spec["behavior_type"].table == "behavior"
    batch = next(iter(SampleLoader(ds, "test", 256, fields=[f.name for f in spec.side_fields])))
    assert set(batch.profile) == {"age", "gender", "occupation", "zip_prefix"}
    assert int(batch.context["hour"].min()) >= 2 and int(batch.context["weekday"].max()) <= 8


def test_s3rec_beauty_keeps_every_attribute(tmp_path):
    shared_dataset("amazon_s3rec_5core")
    cfg = load_data_config(REPO / "configs" / "data" / "amazon_beauty.yaml")
    cfg.output = str(tmp_path / "beauty")
    cfg.source.paths = [str(REPO / p) for p in cfg.source.paths]
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    assert sample_digest(ds.path) == "8e72d267425e423e07fd11929e07b60aa6634883306996ca26586e4e0f8e7bd1"
    with gzip.open(cfg.source.paths[1], "rt") as f:
        raw = json.load(f)
    table, vocab, items = ds.side_table("attributes"), ds.vocabulary("attributes"), ds.vocabulary("item")
    for item_id in (2, 100, ds.num_items - 1):
        raw_item = items.decode(np.array([item_id]))[0].as_py()
        row = vocab.decode(table[item_id]).to_pylist()
        assert [a for a in row if a is not None] == raw[str(raw_item)]
    assert ds.field("attributes")["max_values"] == max(len(v) for v in raw.values() if v)


def test_amazon_metadata_categories_brand_price_become_item_fields(tmp_path):
    reviews = tmp_path / "reviews_Beauty_5.json"
    reviews.write_text("".join(json.dumps({"reviewerID": u, "asin": a, "unixReviewTime": 1300000000 + 86400 * k}) + "\n"
                               for k, (u, a) in enumerate([("A1", "B1"), ("A1", "B2"), ("A1", "B3"), ("A1", "B1"),
                                                           ("A2", "B2"), ("A2", "B1"), ("A2", "B3"), ("A2", "B2")])))
    meta = tmp_path / "meta_Beauty.json.gz"
    records = [{"asin": "B1", "categories": [["Beauty", "Skin Care"], ["Beauty", "Lotion"]], "brand": "Nivea",
                "price": 4.5, "title": "lotion"},
               {"asin": "B2", "categories": [["Beauty", "Hair"]], "price": "$9.50"},
               {"asin": "B3", "categories": [], "brand": "Acme", "price": "n/a"}]
    meta.write_bytes(gzip.compress("".join(repr(r) + "\n" for r in records).encode()))   # 2014: Python literals
    cfg = from_dict(type(pinned_config(tmp_path, "din")), {
        "output": str(tmp_path / "ds"), "partitions": 1,
        "source": {"format": "amazon", "paths": [str(reviews), str(meta)]},
        "protocol": {"name": "loo", "max_length": 3},
        "fields": [{"name": "categories", "kind": "ids", "owner": "item"},
                   {"name": "brand", "kind": "id", "owner": "item"},
                   {"name": "price", "kind": "number", "owner": "item"},
                   {"name": "weekday", "kind": "id", "owner": "context"}]})
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    items, cats, brands = ds.vocabulary("item"), ds.vocabulary("categories"), ds.vocabulary("brand")
    row = {raw: int(items.encode(pa.array([raw]))[0]) for raw in ("B1", "B2", "B3")}
    decoded = [[cats.raw[int(v) - 2].as_py() for v in ds.side_table("categories")[row[k]] if v]
               for k in ("B1", "B2", "B3")]
    assert decoded == [["Beauty", "Skin Care", "Lotion"], ["Beauty", "Hair"], []]
    assert ds.side_table("brand")[row["B2"]] == 1 and brands.raw.to_pylist() == ["Acme", "Nivea"]
    price = ds.side_table("price")
    assert price[row["B1"]] == np.float32(4.5) and price[row["B2"]] == np.float32(9.5) and np.isnan(price[row["B3"]])
    notes = ds.manifest["rejections"]["notes"]
    assert notes["categories_empty_list"] == 1 and notes["brand_null"] == 1 and notes["price_null"] == 1
    # the categories' context: reviews are a day apart, so weekdays advance by one
    batch = next(iter(SampleLoader(ds, "train", 16, fields=["weekday"])))
    ts = ds.flat("timestamp")[ds.flat("offsets")[ds.sample_columns("train")["row"]] + ds.sample_columns("train")["cut"]]
    assert batch.context["weekday"].tolist() == (context_values("weekday", ts) + 2).tolist()


def test_a_misdeclared_field_fails_before_the_events_are_read(tmp_path):
    cfg, _, _ = side_files(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n" * 10)          # reading these rows would stop the build with their rejections
    cfg.source = SourceConfig(format="taobao", paths=[str(bad)], item_file=cfg.source.item_file)
    cfg.fields = [FieldConfig("colour", "id", "item")]
    with pytest.raises(DataError, match="field 'colour'"):
        build_dataset(cfg, progress=False)


def test_fields_naming_one_table_share_its_vocabulary_and_core_tables_are_reused(tmp_path):
    cfg, items, profiles = side_files(tmp_path)
    profiles = profiles.append_column("favourite_brand", pa.array([f"b{v % 60}" for v in range(profiles.num_rows)]))
    items = items.append_column("main_category", pa.array([None] * items.num_rows, pa.int64()))
    pq.write_table(profiles, cfg.source.user_file)
    pq.write_table(items, cfg.source.item_file)
    cfg.fields = [FieldConfig("brand", "id", "item"), FieldConfig("favourite_brand", "id", "user", table="brand"),
                  FieldConfig("price", "number", "item"), FieldConfig("main_category", "id", "item", table="category")]
    ds = BuiltDataset(build_dataset(cfg, progress=False))
    spec = ds.feature_spec()
    assert spec["favourite_brand"].table == "brand" and spec["favourite_brand"].size == spec["brand"].size
    # one vocabulary counted over both fields' rows: b50..b59 occur only as favourite brands
    shared = ds.vocabulary("favourite_brand")
    assert shared.raw.to_pylist() == ds.vocabulary("brand").raw.to_pylist() and "b55" in shared.raw.to_pylist()
    users = ds.vocabulary("user")
    u = int(users.encode(pa.array([56]))[0])          # row 55 of the profile file (users 1..500)
    assert shared.raw[int(ds.side_table("favourite_brand")[u]) - 2].as_py() == "b55"
    assert spec["main_category"].size == spec["category"].size and not (tmp_path / "ds" / "vocab" / "main_category.parquet").exists()
    # number fields carry the side rows' mean and std, for standardising
    price = ds.side_table("price")[2:]
    assert spec["price"].mean == pytest.approx(float(np.nanmean(price)), rel=1e-5)
    assert spec["price"].std == pytest.approx(float(np.nanstd(price)), rel=1e-4)
