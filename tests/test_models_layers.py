"""Shared layers and the models: hand-computed cases, padding invariance, layouts, switches."""

import math

import numpy as np
import pytest
import torch

from recsys.contract import Batch
from recsys.models.base import FeatureSpec
from recsys.models.din import DIN
from recsys.models.embedding_mlp import EmbeddingMLP
from recsys.models.finalmlp import FinalMLP
from recsys.models.layers.activations import Dice
from recsys.models.layers.attention import ActivationUnitAttention
from recsys.models.layers.embedding import BehaviorEmbedding

FEATURES = FeatureSpec(num_users=30, num_items=50, num_categories=9, max_length=6)


def random_batch(batch=8, length=6, seed=0, empty_rows=(0,)):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    for r in empty_rows:
        lengths[r] = 0
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    items = torch.randint(2, 50, (batch, length), generator=g) * mask
    return Batch(user=torch.randint(2, 30, (batch,), generator=g), target_item=torch.randint(2, 50, (batch,), generator=g),
                 target_category=torch.randint(2, 9, (batch,), generator=g), label=torch.randint(0, 2, (batch,), generator=g).float(),
                 lengths=lengths, hist_item=items, hist_category=(items % 7 + 2) * mask,
                 hist_behavior=mask.long(), sample_index=torch.arange(batch))


def _spec(num_items: int, num_categories: int) -> FeatureSpec:
    return FeatureSpec(num_users=2, num_items=num_items, num_categories=num_categories)


def test_activation_unit_hand_computed():
    # D = 1, one hidden unit with sigmoid; w1 rows for [q, k, q-k, q*k] = [1, 2, 3, 4], b1 = 0.5,
    # out weight 2, bias -1. q = 1, keys 0.5 and 2 (second row: one key).
    attn = ActivationUnitAttention(1, [1], "sigmoid", use_softmax=False, backend="torch")
    with torch.no_grad():
        attn.linears[0].weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        attn.linears[0].bias.fill_(0.5)
        attn.out.weight.fill_(2.0)
        attn.out.bias.fill_(-1.0)
    q = torch.tensor([[1.0], [1.0]])
    k = torch.tensor([[[0.5], [2.0]], [[2.0], [9.0]]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    score = lambda kk: 2 * sig(1 + 2 * kk + 3 * (1 - kk) + 4 * kk + 0.5) - 1  # noqa: E731
    expected = [score(0.5) * 0.5 + score(2.0) * 2.0, score(2.0) * 2.0]
    out = attn(q, k, lengths=torch.tensor([2, 1]))
    assert out[:, 0].tolist() == pytest.approx(expected, rel=1e-6)
    attn.use_softmax = True
    w = torch.softmax(torch.tensor([score(0.5), score(2.0)]), 0)
    assert attn(q, k, lengths=torch.tensor([2, 1]))[0, 0].item() == pytest.approx(float(w[0] * 0.5 + w[1] * 2.0), rel=1e-6)


@pytest.mark.parametrize("activation", ["sigmoid", "prelu", "dice", "relu"])
def test_decomposed_attention_equals_the_naive_concatenation(activation):
    torch.manual_seed(0)
    attn = ActivationUnitAttention(6, [8, 4], activation, backend="torch").eval()
    q, k = torch.randn(5, 6), torch.randn(5, 7, 6)
    lengths = torch.tensor([7, 7, 7, 7, 7])
    naive_scores = attn.scores_naive(q, k)
    naive = torch.einsum("bl,bld->bd", naive_scores, k)
    assert torch.allclose(attn(q, k, lengths=lengths), naive, atol=1e-5)


def test_dice_uses_batch_statistics_in_training_and_running_ones_in_eval():
    dice = Dice(3)
    with torch.no_grad():
        dice.alpha.fill_(0.5)
    x = torch.randn(64, 3) * 3 + 1
    train_out = dice.train()(x)
    p = torch.sigmoid((x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-9))
    assert torch.allclose(train_out, p * x + (1 - p) * 0.5 * x, atol=1e-5)
    assert torch.allclose(dice.norm.running_mean, 0.01 * x.mean(0), atol=1e-6)
    eval_out = dice.eval()(x)
    p_eval = torch.sigmoid((x - dice.norm.running_mean) / torch.sqrt(dice.norm.running_var + 1e-9))
    assert torch.allclose(eval_out, p_eval * x + (1 - p_eval) * 0.5 * x, atol=1e-5)


def test_mba_l2_touches_only_batch_rows_scaled_by_frequency():
    emb = BehaviorEmbedding(_spec(10, 4), 2, 2, init_std=1.0)
    emb.set_frequencies(torch.arange(10).float(), torch.ones(4))
    items, cats = torch.tensor([3, 3, 5, 0]), torch.tensor([2, 0])
    expected = (emb.item.weight[3].pow(2).sum() / 3 + emb.item.weight[5].pow(2).sum() / 5
                + emb.category.weight[2].pow(2).sum())
    assert emb.penalty("mba", items, cats).item() == pytest.approx(expected.item(), rel=1e-6)
    penalty = emb.penalty("mba", items, cats)
    penalty.backward()
    touched = emb.item.weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [3, 5]
    assert torch.all(emb.item.weight[0] == 0)


@pytest.mark.parametrize("make", [
    lambda: DIN(FEATURES, item_dim=4, category_dim=4, attention_units=[8]),
    lambda: DIN(FEATURES, item_dim=4, category_dim=4, attention_activation="dice", use_softmax=True, l2_embedding=1e-3),
    lambda: EmbeddingMLP(FEATURES, item_dim=4, category_dim=4),
    lambda: FinalMLP(FEATURES, embedding_dim=4, mlp1_units=[8], mlp2_units=[8], fs_hidden_units=[8], num_heads=2,
                     fs1_context=["user"], fs2_context=["item", "category"]),
    lambda: FinalMLP(FEATURES, embedding_dim=4, mlp1_units=[8], mlp2_units=[8], num_heads=2, dual_mlp=True),
    lambda: FinalMLP(FEATURES, embedding_dim=4, mlp1_units=[8], mlp2_units=[8], num_heads=2, sequence="attention"),
])
def test_models_padding_invariance_layouts_and_gradients(make):
    torch.manual_seed(0)
    model = make()
    batch = random_batch()
    model.train()
    out = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label) + model.regularization(batch)
    loss.backward()
    assert out.logit.shape == (8,) and torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    model.eval()
    base = model(batch).logit
    garbage = batch.replace(hist_item=torch.where(batch.history_mask(), batch.hist_item, 7),
                            hist_category=torch.where(batch.history_mask(), batch.hist_category, 3))
    assert torch.allclose(model(garbage).logit, base, atol=1e-6), "padding positions changed the output"
    assert torch.allclose(model(batch.to_jagged()).logit, base, atol=1e-5), "padded and jagged differ"


def test_din_empty_history_still_scores_from_the_target():
    model = DIN(FEATURES, item_dim=4, category_dim=4).eval()
    batch = random_batch(empty_rows=(0, 1, 2))
    logits = model(batch).logit
    assert torch.isfinite(logits).all()
    interest, _ = model.user_interest(batch)
    assert torch.all(interest[:3] == 0)


def test_finalmlp_gates_start_at_one_and_fusion_is_bilinear():
    model = FinalMLP(FEATURES, embedding_dim=4, mlp1_units=[6], mlp2_units=[4], num_heads=2, batch_norm=False,
                     mlp1_dropout=0.0, mlp2_dropout=0.0).eval()
    batch = random_batch()
    assert torch.allclose(model.gate1(batch), torch.ones(8, 20))
    o1, o2 = torch.randn(3, 6), torch.randn(3, 4)
    f = model.fusion
    manual = (f.linear1(o1).squeeze(-1) + f.linear2(o2).squeeze(-1)
              + sum((o1[:, h * 3:(h + 1) * 3] @ f.weight[h] * o2[:, h * 2:(h + 1) * 2]).sum(-1) for h in range(2)))
    assert torch.allclose(f(o1, o2), manual, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        FinalMLP(FEATURES, mlp1_units=[5], mlp2_units=[4], num_heads=2)


def test_bad_switches_are_rejected():
    with pytest.raises(ValueError, match="attention activation"):
        DIN(FEATURES, attention_activation="gelu")
    with pytest.raises(ValueError, match="gate context"):
        FinalMLP(FEATURES, fs1_context=["age"])
    with pytest.raises(ValueError, match="field .item.: an id field needs size >= 2"):
        FeatureSpec(num_users=5, num_items=1, num_categories=3)
