"""The non-learned retrieval baselines: counts from the training split only, scores against a
loop over the timelines, and the popularity metrics equal to the model path's full ranking."""

from pathlib import Path

import numpy as np
import pytest

from recsys.config import parse_config
from recsys.data_pipelines.build import build_dataset
from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
from recsys.data_pipelines.dataset import BuiltDataset
from recsys.errors import ConfigError
from recsys.full_ranking import SplitTruth
from recsys.retrieval.baselines import baseline_scores, evaluate_baselines, training_counts
from recsys.runner import rank_split
from tests.test_recsys_retrieval import Popularity


@pytest.fixture(scope="module")
def loo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baselines")
    return build_dataset(DataConfig(output=str(root / "loo"), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(n_rows=12_000, n_items=300, n_categories=15, mean_events=30.0,
                                                      interests_per_user=2)),
        protocol=ProtocolConfig(name="loo", max_length=20)), progress=False)


def test_counts_use_training_samples_only_and_match_a_loop_over_the_timelines(loo):
    dataset = BuiltDataset.open(loo)
    popularity, counts = training_counts(dataset, window=2)
    offsets = np.asarray(dataset.flat("offsets"))
    items = np.asarray(dataset.flat("item"))
    expected_pop = np.zeros_like(popularity)
    expected = {}
    for u in range(len(offsets) - 1):
        timeline = items[offsets[u]:offsets[u + 1]]
        for cut in range(1, len(timeline) - 2):           # loo: the last two are valid / test targets
            target = timeline[cut]
            expected_pop[target] += 1
            for j in (1, 2):
                if cut - j >= 0 and timeline[cut - j] >= 2:
                    expected[(timeline[cut - j], target)] = expected.get((timeline[cut - j], target), 0) + 1
    np.testing.assert_array_equal(popularity, expected_pop)
    coo = counts.tocoo()
    assert dict(zip(zip(coo.row.tolist(), coo.col.tolist()), coo.data.tolist())) == expected


def test_cooccurrence_scores_by_hand():
    popularity = np.array([0, 0, 5, 1, 2, 0], dtype=float)
    from scipy import sparse
    counts = sparse.csr_matrix(np.array([[0] * 6, [0] * 6, [0, 0, 0, 3, 1, 0], [0, 0, 2, 0, 0, 4],
                                         [0] * 6, [0] * 6], dtype=float))
    history = np.array([[3, 2], [0, 0], [2, 0]])            # most recent first, 0 = no behaviour
    scores = baseline_scores("cooccurrence", history, popularity, counts, decay=0.5)
    tie = popularity * 1e-9
    np.testing.assert_allclose(scores[0], np.array([0, 0, 2, 0 + 0.5 * 3, 0.5 * 1, 4]) + tie)
    np.testing.assert_allclose(scores[1], tie)
    np.testing.assert_allclose(scores[2], np.array([0, 0, 0, 3, 1, 0]) + tie)
    np.testing.assert_array_equal(baseline_scores("popularity", history, popularity, counts)[1], popularity)
    with pytest.raises(ConfigError, match="unknown baseline"):
        baseline_scores("random", history, popularity, counts)


def test_popularity_equals_the_model_path_and_cooccurrence_beats_it_on_planted_interests(loo, tmp_path):
    dataset = BuiltDataset.open(loo)
    result = evaluate_baselines(dataset, "test", ks=(5, 10, 20))
    assert result["popularity"]["users"] == dataset.split_counts["test"]
    popularity, _ = training_counts(dataset)
    model = Popularity(dataset.feature_spec(), popularity)
    config = parse_config({"name": "p", "output_dir": str(tmp_path / "p"),
                           "data": {"path": str(loo), "batch_size": 64, "eval_batch_size": 256},
                           "model": {"class_path": "YouTubeDNN", "init_args": {}},
                           "retrieval": {"ks": [5, 10, 20]}}, "<test>")
    via_model = rank_split(model, dataset, config, "test")
    for key in ("hr@5", "hr@10", "hr@20", "ndcg@20"):   # equal up to the order among tied counts
        assert result["popularity"][key] == pytest.approx(via_model[key], abs=0.01), key
    # the planted interests are categories: the items following a user's last items predict better
    assert result["cooccurrence"]["hr@20"] > result["popularity"]["hr@20"] + 0.05, result
    assert SplitTruth(dataset, "test").protocol == "loo"
    with pytest.raises(ConfigError, match="window"):
        training_counts(dataset, window=0)
