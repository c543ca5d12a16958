"""DIN and its pooled-history baseline (EmbeddingMLP): hand-computed forward passes, MBA L2
through ``regularization(batch)``, Dice train/eval behaviour, layouts, backends."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.contract import Batch
from recsys.kernels.din_attention import backend_for, din_attention
from recsys.models.base import FeatureSpec
from recsys.models.din import DIN
from recsys.models.embedding_mlp import EmbeddingMLP
from tests.models_fixtures import FEATURES, random_batch, rows, with_garbage_padding

TINY = FeatureSpec(num_users=4, num_items=8, num_categories=6, max_length=2)
ATT_W = [0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8]      # rows for [q(2), k(2), q-k(2), q*k(2)]
ATT_B, OUT_W, OUT_B = 0.05, 1.5, -0.2
MLP_W, MLP_B, PRELU, LAST_W, LAST_B = [0.3, -0.6, 0.9, 0.2], 0.1, 0.25, 2.0, -0.3


def tiny_batch() -> Batch:
    # row 0: target (3, 2), history items [4, 5] with categories [2, 3]; row 1: target (6, 4), no history
    return Batch(user=torch.tensor([2, 3]), target_item=torch.tensor([3, 6]), target_category=torch.tensor([2, 4]),
                 label=torch.tensor([1.0, 0.0]), lengths=torch.tensor([2, 0]),
                 hist_item=torch.tensor([[4, 5], [0, 0]]), hist_category=torch.tensor([[2, 3], [0, 0]]))


def emb(item: int, category: int) -> list:
    return [item / 10, -category / 10]


def set_tiny_weights(model) -> None:
    """item row i = i/10, category row c = -c/10 (D = 2); main MLP Linear(4→1) → PReLU → Linear(1→1)."""
    with torch.no_grad():
        model.embedding.item.weight.copy_(torch.arange(8.0).unsqueeze(1) / 10)
        model.embedding.category.weight.copy_(-torch.arange(6.0).unsqueeze(1) / 10)
        first, act, last = model.mlp.net
        first.weight.copy_(torch.tensor([MLP_W]))
        first.bias.fill_(MLP_B)
        act.weight.fill_(PRELU)
        last.weight.fill_(LAST_W)
        last.bias.fill_(LAST_B)
        if hasattr(model, "attention"):
            model.attention.linears[0].weight.copy_(torch.tensor([ATT_W]))
            model.attention.linears[0].bias.fill_(ATT_B)
            model.attention.out.weight.fill_(OUT_W)
            model.attention.out.bias.fill_(OUT_B)


def main_mlp(pooled: list, target: list) -> float:
    z = sum(w * x for w, x in zip(MLP_W, pooled + target)) + MLP_B
    return LAST_W * (z if z >= 0 else PRELU * z) + LAST_B


def activation_unit(q: list, k: list) -> float:
    """Score through the explicit concatenation [q, k, q − k, q ⊙ k] (no decomposition)."""
    x = q + k + [a - b for a, b in zip(q, k)] + [a * b for a, b in zip(q, k)]
    pre = sum(w * v for w, v in zip(ATT_W, x)) + ATT_B
    return OUT_W / (1 + math.exp(-pre)) + OUT_B


def din_tiny(use_softmax: bool, **kwargs) -> DIN:
    model = DIN(TINY, item_dim=1, category_dim=1, attention_units=[1], attention_activation="sigmoid",
                use_softmax=use_softmax, mlp_units=[1], mlp_activation="prelu", attention_backend="torch", **kwargs)
    set_tiny_weights(model)
    return model.eval()


@pytest.mark.parametrize("use_softmax", [False, True])
def test_din_hand_computed(use_softmax):
    target0, history0 = emb(3, 2), [emb(4, 2), emb(5, 3)]
    scores = [activation_unit(target0, h) for h in history0]
    if use_softmax:
        scores = [math.exp(s) / sum(math.exp(t) for t in scores) for s in scores]
    pooled0 = [sum(s * h[d] for s, h in zip(scores, history0)) for d in range(2)]
    expected = [main_mlp(pooled0, target0), main_mlp([0.0, 0.0], emb(6, 4))]   # empty history pools to 0
    model = din_tiny(use_softmax)
    batch = tiny_batch()
    assert model(batch).logit.tolist() == pytest.approx(expected, rel=1e-5)
    assert model(batch.to_jagged()).logit.tolist() == pytest.approx(expected, rel=1e-5)


def test_din_concat_product_interaction_feeds_the_product_to_the_mlp():
    torch.manual_seed(0)
    model = DIN(FEATURES, item_dim=3, category_dim=2, attention_units=[4], mlp_units=[6],
                interaction="concat_product", attention_backend="torch").eval()
    batch = random_batch(batch=5, seed=7)
    interest, target = model.user_interest(batch)
    expected = model.mlp(torch.cat([interest, target, interest * target], dim=-1)).squeeze(-1)
    assert model.mlp.net[0].in_features == 15
    assert torch.allclose(model(batch).logit, expected, atol=1e-6)
    with pytest.raises(ValueError, match="interaction"):
        DIN(FEATURES, interaction="sum")


def test_embedding_mlp_hand_computed_sum_and_mean():
    model = EmbeddingMLP(TINY, item_dim=1, category_dim=1, mlp_units=[1], mlp_activation="prelu")
    set_tiny_weights(model)
    model.eval()
    history0 = [emb(4, 2), emb(5, 3)]
    summed = [history0[0][d] + history0[1][d] for d in range(2)]
    expected = [main_mlp(summed, emb(3, 2)), main_mlp([0.0, 0.0], emb(6, 4))]
    batch = tiny_batch()
    assert model(batch).logit.tolist() == pytest.approx(expected, rel=1e-5)
    assert model(batch.to_jagged()).logit.tolist() == pytest.approx(expected, rel=1e-5)
    model.pooling = "mean"
    assert model(batch).logit[0].item() == pytest.approx(main_mlp([v / 2 for v in summed], emb(3, 2)), rel=1e-5)


def test_din_mba_l2_through_regularization_is_hand_computed_and_sparse():
    model = din_tiny(False, l2_embedding=0.5, l2_mode="mba").train()
    item_counts = torch.tensor([0, 0, 1, 2, 4, 5, 7, 9.0])
    category_counts = torch.tensor([0, 0, 3, 6, 8, 1.0])
    model.set_id_frequencies(item_counts, category_counts)
    batch = tiny_batch()
    # ids present (targets ∪ histories, padding excluded): items {3, 4, 5, 6}, categories {2, 3, 4}
    expected = 0.5 * (sum((i / 10) ** 2 / item_counts[i].item() for i in (3, 4, 5, 6))
                      + sum((c / 10) ** 2 / category_counts[c].item() for c in (2, 3, 4)))
    penalty = model.regularization(batch)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    assert model.regularization(batch.to_jagged()).item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    touched = model.embedding.item.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [3, 4, 5, 6]
    assert model.embedding.category.weight.grad.abs().sum(1).nonzero().flatten().tolist() == [2, 3, 4]
    for mode, items, cats in (("batch", (3, 4, 5, 6), (2, 3, 4)), ("full", range(1, 8), range(1, 6))):
        model.l2_mode = mode
        full = 0.5 * (sum((i / 10) ** 2 for i in items) + sum((c / 10) ** 2 for c in cats))
        assert model.regularization(batch).item() == pytest.approx(full, rel=1e-5)
    model.l2_embedding = 0.0
    assert model.regularization(batch).item() == 0.0


def dice_din(**kwargs) -> DIN:
    torch.manual_seed(0)
    return DIN(FEATURES, item_dim=4, category_dim=4, attention_units=[8, 4], attention_activation="dice",
               mlp_units=[8, 4], mlp_activation="dice", attention_backend="torch", **kwargs)


def test_din_dice_uses_batch_statistics_in_training_and_running_ones_in_eval():
    model = dice_din()
    batch = random_batch(batch=16, seed=1)
    attention_dice = model.attention.acts[0].norm
    before = attention_dice.running_mean.clone()
    model.train()
    with torch.no_grad():
        in_batch = model(batch).logit
        alone = model(rows(batch, 3, 5)).logit
    # training: a row's logit depends on the rest of the batch through the Dice statistics
    assert not torch.allclose(in_batch[3:5], alone, atol=1e-6)
    assert not torch.equal(attention_dice.running_mean, before), "training did not update the running statistics"
    model.eval()
    with torch.no_grad():
        frozen = attention_dice.running_mean.clone()
        in_batch = model(batch).logit
        alone = model(rows(batch, 3, 5)).logit
    assert torch.allclose(in_batch[3:5], alone, atol=1e-6), "inference depends on the batch composition"
    assert torch.equal(attention_dice.running_mean, frozen), "inference moved the running statistics"


def test_din_dice_statistics_ignore_padding_in_training():
    batch = random_batch(batch=16, seed=2)
    results = []
    for candidate in (batch, with_garbage_padding(batch), batch.to_jagged()):
        model = dice_din().train()
        with torch.no_grad():
            logit = model(candidate).logit
        results.append((logit, model.attention.acts[0].norm.running_mean.clone(),
                        model.attention.acts[0].norm.running_var.clone()))
    for logit, mean, var in results[1:]:
        assert torch.allclose(logit, results[0][0], atol=1e-5)
        assert torch.allclose(mean, results[0][1], atol=1e-6) and torch.allclose(var, results[0][2], atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(batch=st.integers(1, 6), length=st.integers(1, 7), seed=st.integers(0, 10_000),
       use_softmax=st.booleans(), activation=st.sampled_from(["prelu", "dice", "sigmoid"]),
       empty=st.lists(st.integers(0, 5), max_size=3))
def test_din_padding_invariance_and_layouts_property(batch, length, seed, use_softmax, activation, empty):
    torch.manual_seed(seed)
    model = DIN(FEATURES, item_dim=3, category_dim=2, attention_units=[5], attention_activation=activation,
                use_softmax=use_softmax, mlp_units=[6], attention_backend="torch").eval()
    data = random_batch(batch=batch, length=length, seed=seed, empty_rows=[r for r in empty if r < batch])
    with torch.no_grad():
        base = model(data).logit
        assert torch.allclose(model(with_garbage_padding(data)).logit, base, atol=1e-6)
        assert torch.allclose(model(data.to_jagged()).logit, base, atol=1e-5)
        longer = data.replace(hist_item=torch.nn.functional.pad(data.hist_item, (0, 3), value=5),
                         hist_category=torch.nn.functional.pad(data.hist_category, (0, 3), value=2))
        assert torch.allclose(model(longer).logit, base, atol=1e-6), "extra padded columns changed the output"


@pytest.mark.parametrize("make", [lambda: dice_din(use_softmax=True), lambda: EmbeddingMLP(FEATURES, item_dim=4, category_dim=4)])
def test_all_empty_histories_train_and_score(make):
    model = make().train()
    batch = random_batch(batch=4, empty_rows=range(4))
    for layout in (batch, batch.to_jagged()):
        out = model(layout)
        assert torch.isfinite(out.logit).all()
        out.logit.sum().backward()


def test_padding_rows_stay_zero_after_training_steps():
    model = dice_din(l2_embedding=1e-2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    batch = random_batch(batch=16, seed=3)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label) + model.regularization(batch)
        loss.backward()
        optimizer.step()
    assert torch.all(model.embedding.item.weight[0] == 0) and torch.all(model.embedding.category.weight[0] == 0)
    assert model.embedding.item.weight[2:].abs().sum() > 0


def test_attention_backends_agree_with_the_dispatcher():
    model = dice_din(use_softmax=True).eval()
    batch = random_batch(batch=8, seed=4)
    reference = model(batch).logit
    model.attention.backend = "auto"
    assert torch.equal(model(batch).logit, reference)
    emb_target = model.embedding(batch.target_item, batch.target_category)
    emb_history = model.embedding(batch.hist_item, batch.hist_category)
    assert backend_for(emb_target, emb_history, hidden=model.attention.hidden_layers()) == "reference", \
        "auto must run the PyTorch path for CPU tensors"
    # the module's attention equals a direct dispatcher call with the same parameters
    direct = din_attention(emb_target, emb_history, batch.lengths, hidden=model.attention.hidden_layers(),
                           out_weight=model.attention.out.weight[0], out_bias=model.attention.out.bias[0],
                           use_softmax=True, backend="torch")
    interest, _ = model.user_interest(batch)
    assert torch.equal(interest, direct)
    with pytest.raises(ValueError, match="attention_backend"):
        DIN(FEATURES, attention_backend="cuda")


@pytest.mark.skipif(importlib.util.find_spec("recsys.kernels.triton.din_attention") is None,
                    reason="the Triton DIN-attention kernel (kernels/triton/din_attention.py) has not landed")
@pytest.mark.parametrize("activation, use_softmax, training", [
    ("sigmoid", False, False), ("prelu", True, False), ("dice", False, False), ("dice", True, True)])
@pytest.mark.parametrize("jagged", [False, True])
def test_triton_backend_matches_torch_in_din(activation, use_softmax, training, jagged):
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"   # CPU runs under TRITON_INTERPRET=1 (conftest)
    model = DIN(FEATURES, item_dim=4, category_dim=4, attention_units=[8], attention_activation=activation,
                use_softmax=use_softmax, mlp_units=[8], attention_backend="torch").to(device).train(training)
    batch = random_batch(batch=5, length=6, seed=5).to(device)
    batch = batch.to_jagged() if jagged else batch
    grads = {}
    for backend in ("torch", "triton"):
        model.attention.backend = backend
        model.zero_grad()
        out = model(batch).logit
        out.sum().backward()
        grads[backend] = (out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(grads["torch"][0], grads["triton"][0], atol=1e-4)
    for a, b in zip(grads["torch"][1], grads["triton"][1]):
        assert torch.allclose(a, b, atol=1e-4)


def test_din_dense_init_follows_official_code_and_fuxictr():
    """Linear weights Xavier-normal with zero biases, PReLU slopes 0.1; "torch" keeps PyTorch's init."""
    torch.manual_seed(0)
    model = DIN(FEATURES, item_dim=32, category_dim=32, attention_units=[36], mlp_units=[200, 80])
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 5   # activation unit 4D→36→1, main MLP 128→200→80→1
    first = model.attention.linears[0]
    fan_in, fan_out = first.weight.shape[1], first.weight.shape[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.05)
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    prelus = [m for m in model.modules() if isinstance(m, torch.nn.PReLU)]
    assert prelus and all(torch.all(m.weight == 0.1) for m in prelus)
    default = DIN(FEATURES, linear_init="torch", prelu_init=0.25)
    assert any(torch.count_nonzero(m.bias) > 0 for m in default.modules() if isinstance(m, torch.nn.Linear))
    with pytest.raises(ValueError, match="linear_init"):
        DIN(FEATURES, linear_init="orthogonal")


# ------------------------------------------- score_candidates: the shared-history fast path
@pytest.mark.parametrize("kwargs", [
    {},                                                                   # paper: PReLU, raw weights
    dict(attention_units=[80, 40], attention_activation="sigmoid", use_softmax=True),   # official code's form
    dict(attention_activation="dice", mlp_activation="dice", interaction="concat_product"),
    dict(batch_norm=True, dropout=0.3),
])
def test_score_candidates_fast_path_equals_the_per_row_path(kwargs):
    """Eval mode: the history embedded once per user and pooled for all M candidates gives
    the logits of the base class's path (repeat each user M times, run forward)."""
    from recsys.models.base import RankingModel
    torch.manual_seed(0)
    model = DIN(FEATURES, item_dim=4, category_dim=3, **kwargs)
    model.train()
    model(random_batch(16, seed=5))                   # move Dice / BatchNorm running statistics off their init
    model.eval()
    batch = random_batch(8, seed=1, empty_rows=(0, 3))
    g = torch.Generator().manual_seed(2)
    cands = {"item": torch.randint(1, FEATURES.num_items, (8, 7), generator=g),
             "category": torch.randint(1, FEATURES.num_categories, (8, 7), generator=g)}
    with torch.no_grad():
        fast = model.score_candidates(batch, cands, max_rows=20)       # chunks of 2 users
        slow = RankingModel.score_candidates(model, batch, cands)
        garbage = model.score_candidates(with_garbage_padding(batch), cands)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(garbage, fast)         # padding never enters the score


def test_score_candidates_in_training_mode_is_the_per_row_path():
    """Training mode (Dice batch statistics over the scored rows) keeps forward's semantics."""
    from recsys.models.base import RankingModel
    torch.manual_seed(0)
    model = DIN(FEATURES, item_dim=4, category_dim=3, attention_activation="dice")
    batch = random_batch(4, seed=1)
    cands = {"item": torch.randint(1, FEATURES.num_items, (4, 3)), "category": torch.randint(1, 5, (4, 3))}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = model.score_candidates(batch, cands)
    model.load_state_dict(state)
    torch.testing.assert_close(fast, RankingModel.score_candidates(model, batch, cands))
