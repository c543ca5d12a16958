"""The request-side vocabulary map: raw ids ↔ ids for int and string vocabularies, unknowns
to 1, wrong types refused (property tests against a dict built by hand)."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from recsys.serving.ids import IdMap, RequestError

ints = st.lists(st.integers(-2**62, 2**62), min_size=0, max_size=60, unique=True)
strings = st.lists(st.text(max_size=6), min_size=0, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(vocab=ints, queries=st.lists(st.integers(-2**62, 2**62), max_size=40))
def test_int_ids_match_a_hand_built_dict(vocab, queries):
    table = {raw: i + 2 for i, raw in enumerate(vocab)}
    ids = IdMap("item", pa.array(vocab, pa.int64()))
    probe = queries + vocab[:5]
    assert ids.encode(probe, "q").tolist() == [table.get(q, 1) for q in probe]
    assert ids.encode(np.asarray(probe, np.int64), "q").tolist() == [table.get(q, 1) for q in probe]
    assert ids.decode(np.array([0, 1] + [table[v] for v in vocab])) == [None, None] + vocab


@settings(max_examples=60, deadline=None)
@given(vocab=strings, queries=st.lists(st.text(max_size=6), max_size=40))
def test_string_ids_match_a_hand_built_dict(vocab, queries):
    table = {raw: i + 2 for i, raw in enumerate(vocab)}
    ids = IdMap("item", pa.array(vocab, pa.string()))
    probe = queries + vocab[:5]
    assert ids.encode(probe, "q").tolist() == [table.get(q, 1) for q in probe]
    assert ids.decode(np.array([table[v] for v in vocab])) == vocab


def test_wrong_types_are_named_with_their_position():
    ints_map, str_map = IdMap("item", pa.array([5, 9])), IdMap("brand", pa.array(["a", "b"]))
    for bad, pattern in (([5, "9"], r"q\[1\]: '9' \(str\)"), ([5, 9.0], r"q\[1\]: 9.0 \(float\)"),
                         ([np.bool_(True)], r"q\[0\]: .*bool"), ([None], r"q\[0\]: None")):
        with pytest.raises(RequestError, match=pattern):
            ints_map.encode(bad, "q")
    with pytest.raises(RequestError, match=r"q: a numpy array of dtype float64"):
        ints_map.encode(np.array([5.0]), "q")
    with pytest.raises(RequestError, match=r"q\[0\]: 5 \(int\).*holds strings"):
        str_map.encode([5], "q")
    assert ints_map.encode([np.int32(9), 7], "q").tolist() == [3, 1]
    assert IdMap("empty", pa.array([], pa.int64())).encode([4], "q").tolist() == [1]
