"""DARE (models/dare.py): a hand-computed case, padding and short histories, the baseline
switches, the aux switch, padded == jagged, and bad configurations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from recsys.contract import Batch
from recsys.models.base import FeatureSpec
from recsys.models.dare import DARE, VARIANTS

FEATURES = FeatureSpec(num_users=10, num_items=40, num_categories=6, max_length=24)


def make_batch(lengths, seed=0, length=8, n_items=40, n_categories=6):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    size = lengths.shape[0]
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    items = torch.randint(2, n_items, (size, length), generator=gen) * mask
    cats = torch.randint(2, n_categories, (size, length), generator=gen) * mask
    return Batch(user=torch.arange(size), target_item=torch.randint(2, n_items, (size,), generator=gen),
                 target_category=torch.randint(2, n_categories, (size,), generator=gen),
                 label=(torch.arange(size) % 2).float(), lengths=lengths, hist_item=items, hist_category=cats)


def test_hand_computed_two_stage():
    """Widths 1: attention item values chosen by hand, category/position attention zero."""
    features = FeatureSpec(num_users=4, num_items=6, num_categories=3, max_length=3)
    model = DARE(features, item_dim=1, category_dim=1, position_dim=1, top_k=2, use_aux_loss=False,
                 attention_backend="torch")
    att, rep = model.embeddings["attention"], model.embeddings["representation"]
    with torch.no_grad():
        att.item.weight.copy_(torch.tensor([[0.0], [0.0], [1.0], [2.0], [-1.0], [3.0]]))
        att.category.weight.zero_()
        att.position.weight.zero_()
        att.position.weight[0, 0] = 5.0   # target position: only meets zero history parts
        rep.item.weight.copy_(torch.tensor([[0.0], [0.0], [10.0], [20.0], [30.0], [40.0]]))
        rep.category.weight.zero_()
        rep.position.weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    # target item 5 (q_item = 3); history items [2, 3, 4] → semantic scores 3·[1, 2, -1]/sqrt(2)
    batch = Batch(user=torch.tensor([0]), target_item=torch.tensor([5]), target_category=torch.tensor([2]),
                  label=torch.tensor([1.0]), lengths=torch.tensor([3]), hist_item=torch.tensor([[2, 3, 4]]),
                  hist_category=torch.tensor([[2, 2, 2]]))
    model.eval()
    parts = model.search_and_pool(batch)
    assert parts["index"].tolist() == [[1, 0]]
    s1, s0 = 6 / math.sqrt(2), 3 / math.sqrt(2)
    w1 = math.exp(s1) / (math.exp(s1) + math.exp(s0))
    # representation of j: [item, category 0, position]; positions are 3 - j → j=0: 3, j=1: 2
    expected = [w1 * 20 + (1 - w1) * 10, 0.0, w1 * 2 + (1 - w1) * 3]
    assert torch.allclose(parts["h"][0], torch.tensor(expected), atol=1e-5)
    assert torch.allclose(parts["v_t"][0], torch.tensor([40.0, 0.0, 0.0]))
    v_t, h = parts["v_t"], parts["h"]
    logit = model.head(torch.cat([v_t, h, v_t * h], dim=-1)).squeeze(-1)
    assert torch.allclose(model(batch).logit, logit)


def test_semantic_and_position_parts_scaled_separately():
    features = FeatureSpec(num_users=4, num_items=6, num_categories=3, max_length=2)
    model = DARE(features, item_dim=2, category_dim=2, position_dim=4, attention_position_dim=1, top_k=2,
                 use_aux_loss=False, attention_backend="torch")
    q = torch.ones(1, 5)
    scaled = model._scaled_query(q)
    assert torch.allclose(scaled, torch.tensor([[0.5, 0.5, 0.5, 0.5, 1.0]]))   # 1/sqrt(4), 1/sqrt(1)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=1, max_size=6), st.integers(1, 8), st.sampled_from(VARIANTS),
       st.sampled_from(["soft", "hard"]))
def test_padding_never_selected_and_ignored(lengths, top_k, variant, search):
    torch.manual_seed(0)
    model = DARE(FEATURES, top_k=top_k, variant=variant, search=search, attention_backend="torch").eval()
    batch = make_batch(lengths)
    parts = model.search_and_pool(batch)
    index = parts["index"]
    assert index.shape == (len(lengths), top_k)
    for row, n in enumerate(lengths):
        picked = [j for j in index[row].tolist() if j >= 0]
        assert len(set(picked)) == len(picked)
        assert all(j < n for j in picked)
        assert len(picked) <= min(n, top_k)
        if search == "soft":
            assert len(picked) == min(n, top_k)
        else:
            same = [j for j in range(n) if batch.hist_category[row, j] == batch.target_category[row]]
            assert set(picked) <= set(same) and len(picked) == min(len(same), top_k)
    # garbage in the padding changes nothing
    noisy = make_batch(lengths)
    pad = ~noisy.history_mask()
    noisy.hist_item = torch.where(pad, torch.full_like(noisy.hist_item, 7), noisy.hist_item)
    noisy.hist_category = torch.where(pad, noisy.target_category.unsqueeze(1).expand_as(pad), noisy.hist_category)
    assert torch.allclose(model(noisy).logit, model(batch).logit, atol=1e-6)


def test_empty_history_scores_with_target_alone():
    model = DARE(FEATURES, top_k=4, attention_backend="torch").eval()
    batch = make_batch([0, 0, 3])
    parts = model.search_and_pool(batch)
    assert torch.all(parts["h"][:2] == 0)
    assert parts["index"][:2].eq(-1).all()
    v_t = parts["v_t"][:2]
    alone = model.head(torch.cat([v_t, torch.zeros_like(v_t), torch.zeros_like(v_t)], -1)).squeeze(-1)
    assert torch.allclose(model(batch).logit[:2], alone)
    # a whole batch of empty histories (padded width 0, and jagged with no values) still scores
    empty = make_batch([0, 0], length=0)
    assert torch.isfinite(model(empty).logit).all()
    assert torch.isfinite(model(empty.to_jagged()).logit).all()
    model.train()
    out = model(make_batch([0, 0, 0, 0]))
    assert torch.isfinite(out.aux_losses["aux"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("search", ["soft", "hard"])
def test_padded_equals_jagged_forward_and_gradients(variant, search):
    torch.manual_seed(1)
    model = DARE(FEATURES, top_k=3, variant=variant, search=search, attention_backend="torch")
    batch = make_batch([0, 1, 2, 8, 5, 3], seed=3)
    results = []
    for b in (batch, batch.to_jagged()):
        model.zero_grad()
        out = model(b)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, b.label) + sum(out.aux_losses.values())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.logit.detach(), dict(out.aux_losses), grads))
    (l0, a0, g0), (l1, a1, g1) = results
    assert torch.allclose(l0, l1, atol=1e-6)
    assert a0.keys() == a1.keys() == {"aux"}
    assert torch.allclose(a0["aux"], a1["aux"], atol=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5), name


def _tables(model):
    return set(model.embeddings.keys())


def test_switches_give_the_intended_parameter_sharing():
    dare = DARE(FEATURES, attention_item_dim=8, attention_category_dim=8, attention_position_dim=4)
    assert _tables(dare) == {"attention", "representation"}
    assert dare.embeddings["attention"].dim == 20 and dare.embeddings["representation"].dim == 48
    twin = DARE(FEATURES, variant="twin")
    assert _tables(twin) == {"representation"} and twin.attention_projection is None
    twin.eval()
    batch = make_batch([3, 5])
    q, keys, v_t, values = twin._embed(batch)
    assert q is v_t and keys is values
    four = DARE(FEATURES, variant="twin_4e")
    assert _tables(four) == {"attention", "attention_target", "representation", "representation_target"}
    proj = DARE(FEATURES, variant="projection", attention_item_dim=4, attention_category_dim=4,
                attention_position_dim=4)
    assert _tables(proj) == {"representation"}
    assert [m.weight.shape for m in proj.attention_projection.maps] == [(4, 16)] * 3
    din = DARE(FEATURES, variant="din_topk")
    assert _tables(din) == {"representation"} and din.din_scorer is not None
    assert din.din_scorer.linears[0].in_features == 4 * 48 and din.din_scorer.linears[0].out_features == 36
    # DARE's attention tables get gradient only through the search; representation tables
    # only through pooling and the target — both are trained
    dare.train()
    out = dare(make_batch([8, 6, 4, 2]))
    (out.logit.sum() + out.aux_losses["aux"]).backward()
    assert dare.embeddings["attention"].item.weight.grad.abs().sum() > 0
    assert dare.embeddings["representation"].item.weight.grad.abs().sum() > 0
    # official sizes of the prediction head: BN(3 D_R) → 200 → 80 → 1
    linears = [m for m in dare.head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(144, 200), (200, 80), (80, 1)]
    assert isinstance(dare.head[0], torch.nn.BatchNorm1d)


def test_aux_off_switch_is_really_off():
    on = DARE(FEATURES).train()
    off = DARE(FEATURES, use_aux_loss=False).train()
    assert on.aux_head is not None and off.aux_head is None
    assert not any("aux" in name for name, _ in off.named_parameters())
    assert off(make_batch([3, 8, 1, 0])).aux_losses == {}
    assert set(on(make_batch([3, 8, 1, 0])).aux_losses) == {"aux"}
    assert on.eval()(make_batch([3, 8])).aux_losses == {}   # a training loss only


def test_regularization_and_init():
    model = DARE(FEATURES, l2=1e-3)
    expected = sum(p.pow(2).sum() for n, p in model.named_parameters() if "bias" not in n and "embedding" not in n)
    assert torch.allclose(model.regularization(make_batch([2])), 1e-3 * expected)
    names = [n for n, _ in model.named_parameters() if "bias" not in n and "embedding" not in n]
    assert any(n.startswith("head.0") for n in names) and not any("embeddings" in n for n in names)
    table = model.embeddings["attention"].item.weight
    assert table[0].abs().sum() == 0
    assert 0.007 < table[1:].std().item() < 0.013
    assert abs(model.head[0].weight.std().item() - 0.01) < 0.005   # BN scale drawn from N(0, 0.01) as official
    assert DARE(FEATURES, l2=0.0).regularization(make_batch([2])).item() == 0.0


def test_bad_configurations_are_rejected_with_clear_messages():
    with pytest.raises(ValueError, match="top_k must be a positive"):
        DARE(FEATURES, top_k=0)
    with pytest.raises(ValueError, match="larger than the history length L=24"):
        DARE(FEATURES, top_k=25)
    with pytest.raises(ValueError, match="position_vocab=24 cannot hold"):
        DARE(FEATURES, position_vocab=24)
    DARE(FEATURES, position_vocab=5, use_position=False)   # no table, nothing to check
    with pytest.raises(ValueError, match="variant must be one of"):
        DARE(FEATURES, variant="twn")
    with pytest.raises(ValueError, match="search must be one of"):
        DARE(FEATURES, search="medium")
    with pytest.raises(ValueError, match="shares one table set"):
        DARE(FEATURES, variant="twin", attention_item_dim=8)
    model = DARE(FEATURES, top_k=2)
    too_long = make_batch([30], length=30)
    with pytest.raises(ValueError, match="position table has 25 rows"):
        model(too_long.to_jagged())


def test_trains_on_planted_signal():
    """A few Adam steps on a rule 'click iff the target's category is in the history' lower the loss."""
    torch.manual_seed(0)
    model = DARE(FEATURES, top_k=4, mlp_units=[32, 16], aux_mlp_units=[32], attention_backend="torch")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    batch = make_batch([8] * 32 + [4] * 32, seed=5, n_categories=6)
    hit = (batch.hist_category == batch.target_category.unsqueeze(1)).any(1)
    batch.label = hit.float()
    losses = []
    for _ in range(30):
        out = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label)
        opt.zero_grad()
        (loss + out.aux_losses["aux"] + model.regularization(batch)).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.parametrize("variant", ["dare", "twin", "twin_4e", "projection"])
def test_aux_pooling_reuses_stage1_scores_exactly(variant):
    """The aux h_full (padded, soft search) reuses stage-1 scores; it must equal a separate
    softmax attention pooling over the whole history, values and gradients, empty rows → 0."""
    from recsys.kernels.attention_pooling import attention_pooling
    torch.manual_seed(0)
    model = DARE(FEATURES, variant=variant, top_k=3, attention_backend="torch").train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    batch = make_batch([0, 2, 5, 8])
    h_full = model.search_and_pool(batch)["h_full"]
    q, keys, _, values = model._embed(batch)
    expected = attention_pooling(model._scaled_query(q), keys, batch.lengths, values=values, scale=1.0,
                                 backend="torch")
    assert torch.allclose(h_full, expected, atol=1e-6)
    assert torch.equal(h_full[0], torch.zeros_like(h_full[0]))
    g1 = torch.autograd.grad(h_full.square().sum(), list(model.embeddings.parameters()), allow_unused=True)
    g2 = torch.autograd.grad(expected.square().sum(), list(model.embeddings.parameters()), allow_unused=True)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-6))
