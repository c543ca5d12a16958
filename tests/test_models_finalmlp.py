"""FinalMLP / DualMLP against an independent NumPy forward pass, plus its switches."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from recsys.models.finalmlp import FinalMLP
from tests.models_fixtures import FEATURES, random_batch, with_garbage_padding


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter to N(0, 0.5²) (padding rows of id tables back to 0), so gates are not 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight[0].zero_()


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def linear(layer: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    out = x @ np_(layer.weight).T
    return out + np_(layer.bias) if layer.bias is not None else out


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def field_embeddings(model: FinalMLP, batch) -> np.ndarray:
    """[user, item, category, mean(history items), mean(history categories)] per row."""
    items, cats = np_(model.embedding.item.weight), np_(model.embedding.category.weight)
    rows = []
    for b in range(batch.size):
        n = int(batch.lengths[b])
        hist_i = items[batch.hist_item[b, :n].numpy()].mean(0) if n else np.zeros(items.shape[1])
        hist_c = cats[batch.hist_category[b, :n].numpy()].mean(0) if n else np.zeros(cats.shape[1])
        rows.append(np.concatenate([np_(model.user.weight)[int(batch.user[b])], items[int(batch.target_item[b])],
                                    cats[int(batch.target_category[b])], hist_i, hist_c]))
    return np.stack(rows)


def gate(gate_module, batch) -> np.ndarray:
    if gate_module.global_context is not None:
        context = np.repeat(np_(gate_module.global_context)[None], batch.size, 0)
    else:
        ids = {"user": batch.user, "item": batch.target_item, "category": batch.target_category}
        context = np.concatenate([np_(gate_module.tables.table(name).weight)[ids[name].numpy()]
                                  for name in gate_module.context], axis=1)
    hidden, _, out = gate_module.mlp.net
    return 2 * sigmoid(linear(out, relu(linear(hidden, context))))


def small(**kwargs) -> FinalMLP:
    args = dict(embedding_dim=2, mlp1_units=[4], mlp2_units=[2], mlp1_dropout=0.0, mlp2_dropout=0.0,
                batch_norm=False, fs_hidden_units=[3], num_heads=2, fs1_context=["user"], fs2_context=[])
    args.update(kwargs)
    model = FinalMLP(FEATURES, **args)
    randomise(model)
    return model.eval()


def test_finalmlp_matches_an_independent_numpy_forward():
    model = small()
    batch = random_batch(batch=6, seed=11, empty_rows=(2,))
    e = field_embeddings(model, batch)                                              # [B, 10]
    o1 = relu(linear(model.mlp1.net[0], gate(model.gate1, batch) * e))             # [B, 4]
    o2 = relu(linear(model.mlp2.net[0], gate(model.gate2, batch) * e))             # [B, 2]
    w = np_(model.fusion.weight)                                                    # [2 heads, 2, 1]
    bilinear = sum(np.einsum("bi,ij,bj->b", o1[:, 2 * h:2 * h + 2], w[h], o2[:, h:h + 1]) for h in range(2))
    expected = linear(model.fusion.linear1, o1)[:, 0] + linear(model.fusion.linear2, o2)[:, 0] + bilinear
    assert np.allclose(model(batch).logit.detach().numpy(), expected, atol=1e-5)
    assert np.allclose(model(batch.to_jagged()).logit.detach().numpy(), expected, atol=1e-5)
    assert torch.allclose(model(with_garbage_padding(batch)).logit, model(batch).logit, atol=1e-6)


def test_finalmlp_without_gating_feeds_the_raw_embeddings():
    model = small(use_fs=False)
    assert not hasattr(model, "gate1")
    batch = random_batch(batch=5, seed=12)
    e = field_embeddings(model, batch)
    o1, o2 = relu(linear(model.mlp1.net[0], e)), relu(linear(model.mlp2.net[0], e))
    w = np_(model.fusion.weight)
    expected = (linear(model.fusion.linear1, o1)[:, 0] + linear(model.fusion.linear2, o2)[:, 0]
                + sum(np.einsum("bi,ij,bj->b", o1[:, 2 * h:2 * h + 2], w[h], o2[:, h:h + 1]) for h in range(2)))
    assert np.allclose(model(batch).logit.detach().numpy(), expected, atol=1e-5)


def test_dual_mlp_is_the_sum_of_two_stream_logits():
    model = small(dual_mlp=True)
    assert not hasattr(model, "fusion") and not hasattr(model, "gate1")
    batch = random_batch(batch=5, seed=13)
    e = field_embeddings(model, batch)
    stream = lambda mlp: linear(mlp.net[2], relu(linear(mlp.net[0], e)))[:, 0]  # noqa: E731
    assert np.allclose(model(batch).logit.detach().numpy(), stream(model.mlp1) + stream(model.mlp2), atol=1e-5)


def test_gate_context_fields_use_their_own_tables():
    model = small(fs1_context=["user", "category"], fs2_context=["item"])
    batch = random_batch(batch=4, seed=14)
    assert set(model.gate1.tables.fields) == {"user", "category"} and set(model.gate2.tables.fields) == {"item"}
    assert model.gate1.tables.table("user").weight.data_ptr() != model.user.weight.data_ptr()
    g1 = model.gate1(batch, model.item_side)
    assert g1.shape == (4, 10) and bool(((g1 > 0) & (g1 < 2)).all())
    assert np.allclose(g1.detach().numpy(), gate(model.gate1, batch), atol=1e-6)


def test_finalmlp_regularization_is_half_lambda_times_every_table_norm():
    model = small(l2_embedding=0.2, fs1_context=["user"], fs2_context=["item"])
    batch = random_batch(batch=4, seed=15)
    tables = [model.user, model.embedding.item, model.embedding.category, model.gate1.tables.table("user"),
              model.gate2.tables.table("item")]
    expected = 0.1 * sum(float(np_(t.weight)[1:].__pow__(2).sum()) for t in tables)
    assert model.regularization(batch).item() == pytest.approx(expected, rel=1e-5)


def test_finalmlp_defaults_follow_the_movielens_best_setting():
    model = FinalMLP(FEATURES)
    assert model.embedding.item.embedding_dim == 10 and model.user.embedding_dim == 10
    assert [m.out_features for m in model.mlp1.net if isinstance(m, torch.nn.Linear)] == [400]
    assert [m.out_features for m in model.mlp2.net if isinstance(m, torch.nn.Linear)] == [800]
    dropouts = [m.p for m in model.mlp1.net if isinstance(m, torch.nn.Dropout)] + \
               [m.p for m in model.mlp2.net if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.4, 0.2]
    assert model.fusion.heads == 10 and model.l2_embedding == 0.01
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.mlp1.modules())
    batch = random_batch(batch=4)
    assert torch.allclose(model.eval().gate1(batch), torch.ones(4, 50)), "global gates must start at exactly 1"


@pytest.mark.parametrize("sequence", ["mean", "attention"])
def test_finalmlp_trains_on_empty_histories_in_both_sequence_modes(sequence):
    model = FinalMLP(FEATURES, embedding_dim=4, mlp1_units=[8], mlp2_units=[8], num_heads=2, sequence=sequence,
                     attention_backend="torch").train()
    batch = random_batch(batch=6, empty_rows=range(6))
    for layout in (batch, batch.to_jagged()):
        out = model(layout)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label) + model.regularization(batch)
        assert torch.isfinite(loss)
        loss.backward()
    with pytest.raises(ValueError, match="sequence"):
        FinalMLP(FEATURES, sequence="sum")


def test_finalmlp_attention_field_is_the_din_activation_unit_over_the_history():
    model = FinalMLP(FEATURES, embedding_dim=3, mlp1_units=[4], mlp2_units=[4], num_heads=2, sequence="attention",
                     attention_units=[5, 3], attention_activation="prelu", attention_softmax=True,
                     attention_backend="torch").eval()
    assert [l.out_features for l in model.attention.linears] == [5, 3] and model.attention.use_softmax
    batch = random_batch(batch=5, seed=16)
    target = model.embedding(batch.target_item, batch.target_category)
    history = model.embedding(batch.hist_item, batch.hist_category)
    pooled = model.attention(target, history, lengths=batch.lengths)
    expected = torch.cat([model.user(batch.user), target, pooled], dim=-1)
    assert torch.allclose(model.field_embeddings(batch), expected, atol=1e-6)
    assert torch.allclose(model.field_embeddings(batch.to_jagged()), expected, atol=1e-5)


def test_bilinear_fusion_init_is_xavier_of_the_flat_official_matrix():
    """FuxiCTR's w_xy is [k·(d1/k)·(d2/k), 1], Xavier-normal: std √(2/(n+1)), not the 3-D tensor's fans."""
    torch.manual_seed(0)
    model = FinalMLP(FEATURES, mlp1_units=[400], mlp2_units=[800], num_heads=10)
    weight = model.fusion.weight
    assert tuple(weight.shape) == (10, 40, 80)
    expected = math.sqrt(2.0 / (weight.numel() + 1))
    assert weight.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(weight.mean().item()) < 3 * expected / math.sqrt(weight.numel())
