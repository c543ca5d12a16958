"""Shared building blocks: MLP block by hand, activations by name, masked pooling, embedding
frequencies (MBA L2) given at construction and their fallback, and the activation unit never
building the [B, L, 4D] concatenation."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from recsys.contract import FeatureSpec

from recsys.models.layers.activations import Dice, make_activation
from recsys.models.layers.attention import ActivationUnitAttention
from recsys.models.layers.embedding import BehaviorEmbedding
from recsys.models.layers.mlp import MLP
from recsys.models.layers.pooling import pool_sequence


def _spec(num_items: int, num_categories: int) -> FeatureSpec:
    return FeatureSpec(num_users=2, num_items=num_items, num_categories=num_categories)


def test_mlp_block_hand_computed_with_batch_norm_in_eval():
    mlp = MLP(2, [2], activation="prelu", dropout=0.5, batch_norm=True, output_dim=1)
    linear, bn, prelu, dropout, out = mlp.net
    assert isinstance(bn, torch.nn.BatchNorm1d) and isinstance(dropout, torch.nn.Dropout)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
        linear.bias.copy_(torch.tensor([0.0, -3.0]))
        bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
        prelu.weight.copy_(torch.tensor([0.25, 0.1]))
        out.weight.copy_(torch.tensor([[1.0, 3.0]]))
        out.bias.fill_(0.2)
    x = [2.0, 1.0]
    h = [x[0] - x[1], 0.5 * x[0] + 2 * x[1] - 3]                         # [1, 0]
    h = [2 * (h[0] - 1) / math.sqrt(4 + 1e-5) + 0.5, (h[1] - 0) / math.sqrt(1 + 1e-5)]
    h = [v if v >= 0 else a * v for v, a in zip(h, (0.25, 0.1))]
    expected = h[0] + 3 * h[1] + 0.2
    assert mlp.eval()(torch.tensor([x])).item() == pytest.approx(expected, rel=1e-5)
    assert mlp.out_dim == 1


@pytest.mark.parametrize("name, expected", [
    ("relu", [0.0, 0.0, 2.0]), ("sigmoid", [1 / (1 + math.e ** 3), 0.5, 1 / (1 + math.e ** -2)]),
    ("prelu", [-0.75, 0.0, 2.0]), ("tanh", [math.tanh(-3), 0.0, math.tanh(2)]), ("identity", [-3.0, 0.0, 2.0]),
])
def test_activations_by_name(name, expected):
    act = make_activation(name.upper() if name == "relu" else name, 3)
    assert act(torch.tensor([[-3.0, 0.0, 2.0]]))[0].tolist() == pytest.approx(expected, rel=1e-6)


def test_dice_is_fuxictr_form_and_unknown_activations_are_rejected():
    dice = make_activation("dice", 4)
    assert isinstance(dice, Dice) and torch.equal(dice.alpha, torch.zeros(4))
    assert dice.norm.affine is False and dice.norm.eps == 1e-9 and dice.norm.momentum == 0.01
    x = torch.randn(5, 3, 4)                                              # [B, L, H]: statistics over B·L
    flat = x.reshape(-1, 4)
    p = torch.sigmoid((flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-9)).reshape(x.shape)
    assert torch.allclose(dice.train()(x), p * x, atol=1e-5)              # α = 0: f(s) = p(s)·s
    with pytest.raises(ValueError, match="unknown activation"):
        make_activation("swishy", 3)
    with pytest.raises(ValueError, match="at least 2 rows"):
        dice.train()(torch.randn(1, 4))
    assert dice.eval()(torch.randn(1, 4)).shape == (1, 4)


def test_masked_pooling_ignores_padding_and_empty_rows_pool_to_zero():
    values = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[7.0, 7.0], [9.0, 9.0], [9.0, 9.0]]])
    lengths = torch.tensor([2, 0])
    assert pool_sequence(values, lengths, mode="sum").tolist() == [[4.0, 6.0], [0.0, 0.0]]
    assert pool_sequence(values, lengths, mode="mean").tolist() == [[2.0, 3.0], [0.0, 0.0]]
    jagged, offsets = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 2, 2])   # the same rows, jagged
    assert pool_sequence(jagged, lengths, offsets, mode="sum").tolist() == [[4.0, 6.0], [0.0, 0.0]]
    assert pool_sequence(jagged, lengths, offsets, mode="mean").tolist() == [[2.0, 3.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="pooling"):
        pool_sequence(values, lengths, mode="max")


def test_embedding_frequencies_at_construction_and_fallback():
    torch.manual_seed(0)
    counts_i, counts_c = torch.tensor([0, 0, 2, 8, 1, 4.0]), torch.tensor([0, 3, 5.0])
    emb = BehaviorEmbedding(_spec(6, 3), 2, 2, init_std=1.0, item_frequency=counts_i, category_frequency=counts_c)
    items, cats = torch.tensor([[3, 5, 0], [3, 1, 0]]), torch.tensor([[2, 0, 0], [1, 1, 0]])
    w_i, w_c = emb.item.weight, emb.category.weight
    expected = (w_i[1].pow(2).sum() / 1 + w_i[3].pow(2).sum() / 8 + w_i[5].pow(2).sum() / 4
                + w_c[1].pow(2).sum() / 3 + w_c[2].pow(2).sum() / 5)                 # id 1 has count 0 → n = 1
    assert emb.penalty("mba", items, cats).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(emb.state_dict()["item_frequency"], counts_i.clamp_min(1))   # saved with the weights
    fallback = BehaviorEmbedding(_spec(6, 3), 2, 2, init_std=1.0)
    fallback.load_state_dict({k: v for k, v in emb.state_dict().items() if "frequency" not in k}, strict=False)
    assert fallback.penalty("mba", items, cats).item() == pytest.approx(fallback.penalty("batch", items, cats).item())
    with pytest.raises(ValueError, match="both"):
        BehaviorEmbedding(_spec(6, 3), 2, 2, item_frequency=counts_i)
    with pytest.raises(ValueError, match="non-negative"):
        BehaviorEmbedding(_spec(6, 3), 2, 2, item_frequency=-counts_i, category_frequency=counts_c)
    with pytest.raises(ValueError, match="do not match"):
        BehaviorEmbedding(_spec(6, 3), 2, 2, item_frequency=counts_i[:4], category_frequency=counts_c)
    with pytest.raises(ValueError, match="needs the batch"):
        emb.penalty("mba")


class _ShapeRecorder(TorchDispatchMode):
    """Records the shape of every tensor an ATen op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("activation", ["prelu", "dice"])
def test_activation_unit_never_materialises_the_4d_concatenation(activation):
    batch, length, dim = 3, 7, 5
    attn = ActivationUnitAttention(dim, [6], activation, backend="torch").train()
    query = torch.randn(batch, dim, requires_grad=True)
    keys = torch.randn(batch, length, dim, requires_grad=True)
    with _ShapeRecorder() as recorder:
        attn(query, keys, lengths=torch.tensor([7, 3, 0])).sum().backward()
    assert (batch, length, dim) in recorder.shapes               # the recorder does see per-behaviour tensors
    assert (batch, length, 4 * dim) not in recorder.shapes and (batch * length, 4 * dim) not in recorder.shapes
    with _ShapeRecorder() as recorder:                           # the naive form, for contrast, does build it
        attn.scores_naive(query, keys)
    assert (batch, length, 4 * dim) in recorder.shapes


def test_the_attention_runs_its_own_dice_modules():
    """The kernels read the Dice module's own tensors (no copies), so training the attention
    moves that module's running statistics, and Dice.forward is the kernels' formula."""
    from recsys.kernels.din_attention import apply_activation
    torch.manual_seed(0)
    attn = ActivationUnitAttention(3, [4], "dice", backend="torch").train()
    dice = attn.acts[0]
    layer = attn.hidden_layers()[0]
    assert layer.dice_alpha is dice.alpha and layer.running_mean is dice.norm.running_mean
    before = dice.norm.running_mean.clone()
    attn(torch.randn(2, 3), torch.randn(2, 5, 3), lengths=torch.tensor([5, 2]))
    assert not torch.equal(dice.norm.running_mean, before)
    x = torch.randn(6, 4)
    with torch.no_grad():
        dice.alpha.fill_(0.3)
    assert torch.equal(dice.eval()(x), apply_activation(x, dice))
