"""A fixed users-protocol split (``protocol.user_split_file``) and the generator's coupling
mode that gives it a shifted test split (DESMIL's claim): the generator's pairs, the split
file it writes, real builds with the file (listed, hashed and unknown users, the manifest's
counts, workers), and every bad file named by file, row and field."""

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from recsys.data_pipelines.build import build_dataset, ensure_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource, to_dict
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.data_pipelines.synthetic import (SyntheticConfig, _Catalogue, generate_userbehavior, interest_regimes,
                                             planted_interests, shift_regimes_path, write_shift_split)
from recsys.errors import DataError

SOURCE = SyntheticSource(n_rows=4000, n_items=300, n_categories=12, mean_events=20.0, interests_per_user=2)
COUPLED = SyntheticConfig(n_rows=6000, n_items=400, n_categories=20, mean_events=20.0, interests_per_user=4,
                          interest_coupling=0.7, seed=3)


def category_index(config, raw):
    lookup = {int(r): k for k, r in enumerate(_Catalogue(config).raw_category_id)}
    return np.vectorize(lambda r: lookup[int(r)])(raw)


def test_coupled_users_take_whole_pairs_and_independent_users_never_a_pair():
    users, coupled = interest_regimes(COUPLED)
    _, interests = planted_interests(COUPLED)
    index = category_index(COUPLED, interests)                     # [U, 4], pair of c = c // 2
    assert 0.6 < coupled.mean() < 0.8
    c = index[coupled]
    assert np.all(c[:, 0] // 2 == c[:, 1] // 2) and np.all(c[:, 2] // 2 == c[:, 3] // 2)
    assert np.all(c[:, 0] // 2 != c[:, 2] // 2)
    pairs = np.sort(index[~coupled] // 2, axis=1)
    assert np.all(np.diff(pairs, axis=1) > 0)                      # K distinct pairs: no two partners
    # the default mode is untouched: no coupling, and the same draws as without the key
    plain = SyntheticConfig(n_rows=6000, n_items=400, n_categories=20, mean_events=20.0, seed=3)
    assert not interest_regimes(plain)[1].any()


def test_share_0_is_the_control_an_independent_user_keeps_its_interests_and_events(tmp_path):
    control = dataclasses.replace(COUPLED, interest_coupling=0.0)
    users, coupled = interest_regimes(COUPLED)
    assert not interest_regimes(control)[1].any()
    independent = ~coupled
    assert np.array_equal(planted_interests(COUPLED)[1][independent], planted_interests(control)[1][independent])
    events = {}
    for name, config in (("shifted", COUPLED), ("control", control)):
        path = generate_userbehavior(tmp_path / f"{name}.csv", config.n_rows, config=config)
        events[name] = pacsv.read_csv(path, read_options=pacsv.ReadOptions(column_names=["u", "i", "c", "b", "t"]))
    keep = pa.array(users[independent])
    same = [t.filter(pc.is_in(t.column("u"), keep)) for t in events.values()]
    assert same[0].num_rows > 1000 and same[0].equals(same[1])
    assert not events["shifted"].equals(events["control"])       # the coupled users' events do differ


def test_the_coupling_mode_rejects_impossible_settings():
    with pytest.raises(ValueError, match="interest_coupling is a share"):
        SyntheticConfig(interest_coupling=1.5)
    with pytest.raises(ValueError, match="even interests_per_user"):
        SyntheticConfig(interests_per_user=3, interest_coupling=0.5)
    with pytest.raises(ValueError, match="needs interest_coupling > 0"):
        write_shift_split("x.parquet", SyntheticConfig(n_rows=100))
    with pytest.raises(ValueError, match="needs interest_coupling > 0"):
        write_shift_split("x.parquet", dataclasses.replace(COUPLED, interest_coupling=0.0))
    with pytest.raises(ValueError, match="independent users"):
        write_shift_split("x.parquet", COUPLED, test_share=0.5)


def test_the_shift_split_tests_independent_users_only(tmp_path):
    path = tmp_path / "split.parquet"
    counts = write_shift_split(path, COUPLED, test_share=0.1, valid_share=0.1)
    table = pq.read_table(path)
    users, coupled = interest_regimes(COUPLED)
    assert table.column("user").to_pylist() == users.tolist()
    split = np.array(table.column("split").to_pylist())
    assert not coupled[split == "test"].any()
    assert counts["test_coupled"] == 0 and counts["test_independent"] == round(0.1 * len(users))
    assert counts["valid_coupled"] + counts["valid_independent"] == round(0.1 * len(users))
    regimes = pq.read_table(shift_regimes_path(path))           # the analysis' source of who is coupled
    assert regimes.column("user").to_pylist() == users.tolist()
    assert regimes.column("coupled").to_pylist() == coupled.tolist()
    assert not list(tmp_path.glob("*.partial"))


def users_build(tmp_path, split_file="", name="ds", workers=None, **kw):
    protocol = ProtocolConfig(name="users", max_length=10, user_split_file=str(split_file) if split_file else "")
    config = DataConfig(output=str(tmp_path / name), source=SourceConfig(format="synthetic", synthetic=SOURCE),
                        protocol=protocol, partitions=3, **kw)
    return build_dataset(config, workers=workers) if workers else build_dataset(config)


def split_of_users(ds):
    """{internal user id: split name} of every evaluation or training user of a built dataset."""
    out = {}
    for name in ("train", "valid", "test"):
        for user in np.unique(ds.sample_columns(name)["user"]):
            out[int(user)] = name
    return out


def write_split(path, users, splits):
    pq.write_table(pa.table({"user": pa.array(users, pa.int64()), "split": pa.array(splits, pa.string())}), path)
    return path


def test_listed_users_take_the_file_split_and_the_rest_the_hash(tmp_path):
    plain = BuiltDataset(users_build(tmp_path, name="plain"))
    vocab = plain.vocabulary("user")
    raw = vocab.raw.to_numpy()[2:12]                              # ten users of the log
    wanted = ["test", "valid", "train", "test", "test", "train", "valid", "test", "train", "test"]
    path = write_split(tmp_path / "split.parquet", list(raw) + [999_999_999], wanted + ["train"])
    fixed = BuiltDataset(users_build(tmp_path, path, name="fixed"))
    before, after = split_of_users(plain), split_of_users(fixed)
    ids = fixed.vocabulary("user").encode(pa.array(raw))
    assert [after[int(u)] for u in ids] == wanted
    others = set(before) - set(int(u) for u in ids)
    assert all(after[u] == before[u] for u in others)           # unlisted users: the hash, unchanged
    counts = fixed.manifest["user_split_file"]
    assert counts["rows"] == 11 and counts["unknown_users"] == 1
    assert counts["hashed_users"] == vocab.size - 2 - 10
    assert (counts["train_users"], counts["valid_users"], counts["test_users"]) == (3, 2, 5)
    # an evaluation user still gives one row cut at 80 % of its timeline
    test = fixed.sample_columns("test")
    assert len(test["user"]) == len(np.unique(test["user"]))


def test_workers_give_the_same_split_and_a_changed_file_is_a_changed_input(tmp_path):
    raw = BuiltDataset(users_build(tmp_path, name="plain")).vocabulary("user").raw.to_numpy()[2:40]
    path = write_split(tmp_path / "split.parquet", raw, ["test"] * len(raw))
    one = BuiltDataset(users_build(tmp_path, path, name="one"))
    two = BuiltDataset(users_build(tmp_path, path, name="two", workers=2))
    for split in ("train", "valid", "test"):
        assert np.array_equal(one.sample_columns(split)["user"], two.sample_columns(split)["user"])
    config = DataConfig(output=str(tmp_path / "one"), source=SourceConfig(format="synthetic", synthetic=SOURCE),
                        protocol=ProtocolConfig(name="users", max_length=10, user_split_file=str(path)), partitions=3)
    assert ensure_dataset(config)[1] == "reused"
    write_split(path, raw, ["valid"] * len(raw))
    with pytest.raises(FileExistsError, match="other input files"):
        ensure_dataset(config)


def test_an_unused_split_file_key_keeps_the_old_reuse_key():
    assert "user_split_file" not in to_dict(DataConfig(output="x", protocol=ProtocolConfig(name="users")))["protocol"]
    with pytest.raises(ValueError, match="only to the users protocol"):
        ProtocolConfig(name="loo", user_split_file="s.parquet")


@pytest.mark.parametrize("users, splits, message", [
    ([5, 6], ["train", "holdout"], r"row 1, field 'split': 'holdout' is not one of"),
    ([5, 6, 5], ["train", "test", "valid"], r"row 2, field 'user': user 5 is listed twice \(first in row 0\)"),
    ([5, None], ["train", "test"], r"row 1, field 'user': null"),
    ([5, 6], ["train", None], r"row 1, field 'split': null"),
])
def test_bad_rows_are_named_by_file_row_and_field(tmp_path, users, splits, message):
    path = tmp_path / "split.parquet"
    pq.write_table(pa.table({"user": pa.array(users, pa.int64()), "split": pa.array(splits, pa.string())}), path)
    with pytest.raises(DataError, match=message) as info:
        users_build(tmp_path, path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "ds").exists()                        # output complete or absent


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="user_split_file does not exist"):
        users_build(tmp_path, tmp_path / "absent.parquet")
    no_column = tmp_path / "no_column.parquet"
    pq.write_table(pa.table({"user": [5]}), no_column)
    with pytest.raises(DataError, match=r"no column\(s\) \['split'\]"):
        users_build(tmp_path, no_column)
    good = write_split(tmp_path / "good.parquet", list(range(1, 200)), ["train"] * 199)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        users_build(tmp_path, truncated)
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"user": ["u-five"], "split": ["train"]}), strings)
    with pytest.raises(DataError, match="field 'user' .* cannot be read as the log's user ids"):
        users_build(tmp_path, strings)


def test_the_cli_writes_a_coupled_log_and_its_shift_split(tmp_path):
    from recsys.cli import main
    log, split = tmp_path / "events.csv", tmp_path / "split.parquet"
    main(["data", "generate", str(log), "--rows", "3000", "--items", "300", "--categories", "20",
          "--interest-coupling", "0.7", "--shift-split", str(split)])
    assert log.exists() and pq.read_table(split).num_rows > 0
    config = SyntheticConfig(n_rows=3000, n_items=300, n_categories=20, interest_coupling=0.7)
    reference = tmp_path / "reference.csv"
    generate_userbehavior(reference, 3000, config=config)
    assert log.read_bytes() == reference.read_bytes()
