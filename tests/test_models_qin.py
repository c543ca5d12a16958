"""QIN (models/qin.py, models/layers/quadratic.py): ASTA by hand, the QNN row collapse,
gradients, overfitting, empty histories, missing content fields, padding invariance."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.contract import FeatureSpec, FieldSpec, core_fields
from recsys.errors import ConfigError
from recsys.models import MODELS
from recsys.models.layers.quadratic import AdaptiveSparseTargetAttention, QuadraticLayer, QuadraticNeuralNetwork
from recsys.models.qin import QIN

from tests.models_fixtures import random_batch, side_batch, side_spec, side_tables, with_garbage_padding


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core box, 2 threads under load made these small
    forward/backward passes ~100x slower (21 s vs 0.12 s for 10 steps)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def qin_spec(content: bool = True) -> FeatureSpec:
    """Core fields + genres (ids) + a frozen 4-d content vector (optional) + one context field."""
    side = [FieldSpec("genres", "ids", "item", size=6, max_values=3)]
    if content:
        side.append(FieldSpec("text_vec", "dense", "item", size=4, frozen=True))
    side.append(FieldSpec("hour", "id", "context", size=25))
    return FeatureSpec(core_fields(30, 50, 9) + tuple(side), 6)


def qin_tables(spec: FeatureSpec, seed: int = 0) -> dict:
    tables = side_tables(side_spec(), seed)
    return {f.name: tables["genres" if f.name == "genres" else "text"]
            for f in spec.of("item", side_only=True)}


def qin_batch(spec: FeatureSpec, batch: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 7)
    return random_batch(batch, 6, seed, features=spec).replace(
        context={"hour": torch.randint(2, 25, (batch,), generator=g)})


def small_qin(spec: FeatureSpec, **kwargs) -> QIN:
    torch.manual_seed(0)
    model = QIN(spec, embedding_dim=kwargs.pop("embedding_dim", 8), **kwargs)
    model.attach_side_tables(qin_tables(spec))
    return model


# ----------------------------------------------------------------------- ASTA
def identity_attention(output_projection: bool = True) -> AdaptiveSparseTargetAttention:
    attention = AdaptiveSparseTargetAttention(2, 2, output_projection=output_projection)
    with torch.no_grad():
        for linear in (attention.W_q, attention.W_k, attention.W_v) + ((attention.W_o,) if output_projection else ()):
            linear.weight.copy_(torch.eye(2))
    return attention


@pytest.mark.parametrize("output_projection", [True, False])
def test_asta_matches_a_hand_computed_case_with_padding(output_projection):
    # x_t = (1, 0); history (2, 0), (-1, 0) and a padded (5, 5) whose score would be 5/√2.
    # scores /√2: √2, −1/√2 (ReLU → 0), padding → 0; o = √2·(2, 0) + x_t = (2√2 + 1, 0).
    attention = identity_attention(output_projection)
    target = torch.tensor([[1.0, 0.0]])
    history = torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [5.0, 5.0]]])
    mask = torch.tensor([[True, True, False]])
    weights = attention.weights(target, history, mask)
    assert torch.allclose(weights, torch.tensor([[math.sqrt(2), 0.0, 0.0]]))
    out = attention(target, history, mask)
    assert torch.allclose(out, torch.tensor([[2 * math.sqrt(2) + 1, 0.0]]))
    # unmasked, the third behaviour counts: + (5/√2)·(5, 5)
    full = attention(target, history, torch.ones_like(mask))
    assert torch.allclose(full, torch.tensor([[2 * math.sqrt(2) + 1 + 25 / math.sqrt(2), 25 / math.sqrt(2)]]))


def test_asta_without_output_projection_needs_the_item_width():
    with pytest.raises(ValueError, match="attention width must equal the item width"):
        AdaptiveSparseTargetAttention(4, 8, output_projection=False)


# ----------------------------------------------------------------------- QNN
def test_qnn_rows_collapse_to_one_linear_map():
    """Σ_r (W_r z + b_r) = (Σ_r W_r) z + Σ_r b_r: R = 4 rows equal one row with the summed
    weights once dropout is off (eval); with dropout on (training) they differ."""
    torch.manual_seed(0)
    dim, rows = 5, 4
    layer = QuadraticLayer(dim, rows, dropout=0.5)
    single = QuadraticLayer(dim, 1, dropout=0.5)
    with torch.no_grad():
        single.linear.weight.copy_(layer.linear.weight.view(rows, dim, dim).sum(0))
        single.linear.bias.copy_(layer.linear.bias.view(rows, dim).sum(0))
    z = torch.randn(16, dim)
    layer.eval(), single.eval()
    assert torch.allclose(layer(z), single(z), atol=1e-6)
    manual = z * (z @ layer.linear.weight.T + layer.linear.bias).view(16, rows, dim).sum(1)
    assert torch.allclose(layer(z), manual, atol=1e-6)
    layer.train(), single.train()
    torch.manual_seed(1)
    assert not torch.allclose(layer(z), single(z), atol=1e-3)

    # the whole stack: R = 4 and its collapsed R = 1 copy agree in eval
    stack4 = QuadraticNeuralNetwork(dim, 2, rows, 0.1, batch_norm=True)
    stack1 = QuadraticNeuralNetwork(dim, 2, 1, 0.1, batch_norm=True)
    state = stack4.state_dict()
    for i in range(2):
        state[f"layers.{i}.linear.weight"] = state[f"layers.{i}.linear.weight"].view(rows, dim, dim).sum(0)
        state[f"layers.{i}.linear.bias"] = state[f"layers.{i}.linear.bias"].view(rows, dim).sum(0)
    stack1.load_state_dict(state)
    stack4.eval(), stack1.eval()
    assert torch.allclose(stack4(z), stack1(z), atol=1e-5)


def test_qnn_layer_is_the_official_residual_form():
    """z₁ = PReLU(BN(z ⊙ Σ_r g_r)) + z, logit = wᵀz₁ + b, recomputed by hand (eval mode)."""
    torch.manual_seed(0)
    qnn = QuadraticNeuralNetwork(3, 1, 2, 0.0, batch_norm=True).eval()
    with torch.no_grad():
        qnn.norms[0].running_mean.uniform_(-0.5, 0.5)
        qnn.norms[0].running_var.uniform_(0.5, 2.0)
    z = torch.randn(4, 3)
    layer, bn, prelu = qnn.layers[0], qnn.norms[0], qnn.activations[0]
    q = z * (z @ layer.linear.weight.T + layer.linear.bias).view(4, 2, 3).sum(1)
    q = (q - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    z1 = torch.where(q > 0, q, prelu.weight * q) + z
    assert prelu.weight.numel() == 1 and prelu.weight.item() == pytest.approx(0.25)
    assert torch.allclose(qnn(z), (z1 @ qnn.fc.weight.T).squeeze(-1) + qnn.fc.bias, atol=1e-6)


# ----------------------------------------------------------------------- the model
def test_parameter_count_matches_the_official_model():
    """MicroLens_1M_x1 as the official config declares it (item_id 91,718, item_tags 11,740
    (5 per item), item_emb_d128 frozen, likes_level / views_level 11): 31,244,293 parameters."""
    fields = core_fields(10, 91718, 3) + (
        FieldSpec("item_tags", "ids", "item", size=11740, max_values=5),
        FieldSpec("item_emb_d128", "dense", "item", size=128, frozen=True),
        FieldSpec("likes_level", "id", "context", size=11),
        FieldSpec("views_level", "id", "context", size=11))
    model = QIN(FeatureSpec(fields, 64))
    assert model.tower.dim == 384 and model.input_dim == 1024
    assert sum(p.numel() for p in model.parameters()) == 31_244_293
    assert "QIN" in MODELS and MODELS["QIN"] is QIN


def test_gradients_reach_every_learnable_parameter_and_never_the_frozen_content():
    spec = side_spec()
    torch.manual_seed(0)
    model = QIN(spec, embedding_dim=8)
    model.attach_side_tables(side_tables(spec))
    assert "text" in dict(model.named_buffers(prefix="")).keys() or "item_side.text" in dict(model.named_buffers())
    assert not any(name.endswith(".text") for name, _ in model.named_parameters())
    before = model.item_side.text.clone()
    batch = side_batch(spec)
    out = model(batch)
    loss = F.binary_cross_entropy_with_logits(out.logit, batch.label) + model.regularization(batch)
    loss.backward()
    silent = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or
                                                                                   not bool(p.grad.abs().sum() > 0))]
    assert silent == []
    assert model.tower.content["text"].weight.grad.abs().sum() > 0     # the projection P learns
    with torch.no_grad():                                              # one SGD step, lr 1
        for p in model.parameters():
            p -= p.grad
    assert torch.equal(model.item_side.text, before)                   # the vectors themselves do not


def test_overfits_64_samples():
    spec = qin_spec()
    model = small_qin(spec, net_dropout=0.0, embedding_regularizer=0.0)
    batch = qin_batch(spec, batch=64, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(batch).logit, batch.label)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        final = F.binary_cross_entropy_with_logits(model(batch).logit, batch.label)
    assert float(final) < 0.02


def test_an_empty_history_still_scores_and_attends_to_the_target_only():
    spec = qin_spec()
    model = small_qin(spec).eval()
    batch = qin_batch(spec)
    empty = batch.replace(lengths=torch.zeros_like(batch.lengths), hist_item=torch.zeros_like(batch.hist_item),
                          hist_category=torch.zeros_like(batch.hist_category))
    logits = model(empty).logit
    assert logits.shape == (8,) and bool(torch.isfinite(logits).all())
    target, history, mask = model.items(empty)
    assert torch.allclose(model.attention(target, history, mask), target)
    # no history positions at all (L = 0) gives the same scores
    none = empty.replace(hist_item=empty.hist_item[:, :0], hist_category=empty.hist_category[:, :0],
                         hist_behavior=empty.hist_behavior[:, :0])
    assert torch.allclose(model(none).logit, logits, atol=1e-6)


def test_a_content_field_configured_but_absent_is_a_clear_error_at_construction():
    spec = qin_spec(content=False)
    with pytest.raises(ConfigError, match=r"'text_vec' is not in the run's fields.*genres.*embed-text"):
        QIN(spec, embedding_dim=8, item_fields=["genres", "text_vec"])
    with pytest.raises(ConfigError, match=r"'hour' is a context field, not an item side field"):
        QIN(spec, embedding_dim=8, item_fields=["hour"])
    with pytest.raises(ConfigError, match="sample_fields"):
        QIN(spec, embedding_dim=8, sample_fields=["genres"])
    # configured and present: builds, and the tower is id + genres + content
    model = QIN(qin_spec(), embedding_dim=8, item_fields=["genres", "text_vec"])
    assert model.tower.parts == ["item", "genres", "text_vec"] and model.tower.dim == 24


def test_padding_positions_change_nothing_and_jagged_batches_agree():
    spec = side_spec()
    torch.manual_seed(0)
    model = QIN(spec, embedding_dim=8)
    model.attach_side_tables(side_tables(spec))
    batch = side_batch(spec)
    garbage = with_garbage_padding(batch, item=17, category=5)
    assert not torch.equal(garbage.hist_item, batch.hist_item)
    model.train()
    torch.manual_seed(5)
    train_logits = model(batch).logit
    torch.manual_seed(5)
    assert torch.allclose(model(garbage).logit, train_logits, atol=1e-6)
    model.eval()
    logits = model(batch).logit
    assert torch.allclose(model(garbage).logit, logits, atol=1e-6)
    assert torch.allclose(model(batch.to_jagged()).logit, logits, atol=1e-6)


def test_regularizer_is_half_lambda_times_the_full_embedding_tables_and_projection():
    spec = qin_spec()
    model = small_qin(spec, embedding_regularizer=0.5)
    tower = model.tower.embedding
    by_hand = (tower.item.weight.pow(2).sum() + tower.tables["genres"].weight.pow(2).sum()
               + model.tower.content["text_vec"].weight.pow(2).sum()
               + model.fields.tables["hour"].weight.pow(2).sum())
    assert torch.allclose(model.regularization(qin_batch(spec)), 0.25 * by_hand)
    assert float(small_qin(spec, embedding_regularizer=0.0).regularization(qin_batch(spec))) == 0.0


def test_asta_reassociated_order_equals_the_official_order_in_values_and_gradients():
    torch.manual_seed(0)
    fast = AdaptiveSparseTargetAttention(6, 12)
    slow = AdaptiveSparseTargetAttention(6, 12, reassociate=False)
    slow.load_state_dict(fast.state_dict())
    target, history = torch.randn(5, 6), torch.randn(5, 7, 6)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([0, 1, 3, 7, 5]).unsqueeze(1)
    out_fast, out_slow = fast(target, history, mask), slow(target, history, mask)
    assert torch.allclose(out_fast, out_slow, atol=1e-5)
    assert bool((fast.weights(target, history, mask) > 0).any())       # some weights are active
    out_fast.pow(2).sum().backward()
    out_slow.pow(2).sum().backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
