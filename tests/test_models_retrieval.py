"""Multi-interest retrieval models (issue 13): SASRec, MIND, ComiRec-SA / -DR, DESMIL.

Shapes, padding invariance, padded vs jagged, empty histories; SASRec's causal mask; B2I
routing, ComiRec-SA attention and label-aware selection against hand computations; the
RFF-HSIC against NumPy and the weight learner lowering it; the task's per-position BCE,
sample weights and config checks; every model overfitting a tiny set through the task;
SASRec through ``fit``; the shipped configs parse."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys.config import ConfigError, OptimizerSection, RetrievalSection, load_config, parse_config
from recsys.contract import Batch, FeatureSpec
from recsys.full_ranking import rank_top_k
from recsys.models import MODELS
from recsys.models.layers.capsule import B2IRouting, squash
from recsys.models.layers.self_attentive import SelfAttentiveExtractor
from recsys.models.layers.stable_weights import (DecorrelationWeights, fourier_draws, pair_mask,
                                                 random_fourier_features, rff_hsic, weighted_covariance)
from recsys.retrieval_task import ItemProposal, RetrievalTask, binary_cross_entropy_loss

from models_fixtures import FEATURES, random_batch, with_garbage_padding

REPO = Path(__file__).resolve().parents[1]
NAMES = ["SASRec", "MIND", "ComiRecSA", "ComiRecDR", "DESMIL"]
SMALL = {"SASRec": {"embedding_dim": 16, "num_heads": 2, "dropout": 0.0}, "MIND": {"embedding_dim": 16},
         "ComiRecSA": {"embedding_dim": 16}, "ComiRecDR": {"embedding_dim": 16},
         "DESMIL": {"embedding_dim": 16, "inner_steps": 5, "memory": 8}}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two on the shared box (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str, **extra):
    torch.manual_seed(0)
    return MODELS[name](FEATURES, **{**SMALL[name], **extra})


def _interests(model, batch: Batch) -> torch.Tensor:
    torch.manual_seed(1)                # MIND draws its routing logits at every call
    return model.user_interests(batch).interests


# ---------------------------------------------------------------- contract of every model
@pytest.mark.parametrize("name", NAMES)
def test_shapes_padding_jagged_and_empty_histories(name):
    model = _model(name).eval()
    batch = random_batch(batch=8, length=6, empty_rows=(0, 3))
    interests = _interests(model, batch)
    k = 1 if name == "SASRec" else 4
    assert interests.shape == (8, k, 16)
    assert torch.isfinite(interests).all()
    assert torch.allclose(interests, _interests(model, with_garbage_padding(batch)), atol=1e-6)
    assert torch.allclose(interests, _interests(model, batch.to_jagged()), atol=1e-6)
    assert model.item_embeddings(torch.tensor([0, 2, 49])).shape == (3, 16)
    # an empty history trains without NaN (train mode: dropout, DESMIL's weights)
    model.train()
    task = _task(model)
    loss = task.training_step(random_batch(batch=8, length=6, empty_rows=(0, 1, 2)), 0)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _task(model, **retrieval) -> RetrievalTask:
    config = RetrievalSection(**{"negatives": "uniform", "num_negatives": 20, **retrieval})
    return RetrievalTask(model, OptimizerSection(lr=0.01), config, ItemProposal("uniform", FEATURES.num_items))


# ---------------------------------------------------------------- SASRec
def test_sasrec_is_causal_and_counts_positions_from_the_end():
    model = _model("SASRec").eval()
    batch = random_batch(batch=4, length=6, empty_rows=())
    batch = batch.replace(lengths=torch.full((4,), 6), hist_item=torch.randint(2, 50, (4, 6)))
    states = model.user_interests(batch).sequence                                  # [B, L, D]
    for j in range(6):
        changed = batch.hist_item.clone()
        changed[:, j] = (changed[:, j] + 1 - 2) % 48 + 2                          # another real item
        after = model.user_interests(batch.replace(hist_item=changed)).sequence
        assert torch.allclose(states[:, :j], after[:, :j], atol=1e-6), j          # the past never sees it
        assert not torch.allclose(states[:, j:], after[:, j:], atol=1e-4), j
    # the most recent behaviour always sits at position L - 1 (Kang's left-padded window)
    ids = model.positions(torch.tensor([6, 2, 0]), 6)
    assert ids[0].tolist() == [0, 1, 2, 3, 4, 5] and ids[1, :2].tolist() == [4, 5]
    last = model.user_interests(batch).interests[:, 0]
    assert torch.allclose(last, states[:, -1])


def test_sasrec_item_dropout_is_one_table_mask_per_step():
    """RecTools' item dropout: one [N, D] mask per training step, read by the history and by
    every scored item; by hand, the step equals an eval pass over the masked table."""
    model = _model("SASRec", item_dropout=0.5).train()            # SMALL: every other dropout 0
    batch = random_batch(batch=4, length=6, empty_rows=())
    states = model.user_interests(batch).sequence
    keep = model._step_item_keep
    assert keep.shape == model.items.weight.shape
    assert set(torch.unique(keep).tolist()) == {0.0, 2.0}                    # dropped or scaled by 1 / (1 − p)
    assert 0.4 < float((keep == 0).float().mean()) < 0.6
    ids = torch.tensor([2, 7, 7, 49])
    raw = model.items.weight[ids]
    assert torch.equal(model.item_embeddings(ids), raw * keep[ids])          # the same mask for every lookup
    assert torch.equal(model.item_embeddings(ids), model.item_embeddings(ids))
    reference = _model("SASRec").eval()
    with torch.no_grad():
        reference.load_state_dict(model.state_dict())
        reference.items.ids.weight.mul_(keep)
    assert torch.allclose(states, reference.user_interests(batch).sequence, atol=1e-5)
    torch.manual_seed(7)                 # _model("SASRec") above reseeded the RNG to the same stream
    model.user_interests(batch)
    assert not torch.equal(keep, model._step_item_keep)                      # the next step draws anew
    model.eval()
    assert torch.equal(model.item_embeddings(ids), raw)                      # evaluation: the plain table
    with pytest.raises(ValueError, match="item_dropout"):
        _model("SASRec", item_dropout=1.0)


def test_sasrec_unscaled_embeddings_by_hand():
    """scale_embeddings: false (RecTools) = Kang's sqrt(D) scaling applied to a table / sqrt(D)."""
    batch = random_batch(batch=4, length=6, empty_rows=(1,))
    unscaled = _model("SASRec", scale_embeddings=False).eval()
    scaled = _model("SASRec").eval()
    with torch.no_grad():
        scaled.items.ids.weight.div_(16 ** 0.5)
    assert torch.allclose(unscaled.user_interests(batch).sequence, scaled.user_interests(batch).sequence, atol=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_betas_reach_the_optimizer(name):
    """optimizer.beta2 0.98 is SASRec's code's (and RecTools') setting."""
    model = _model("SASRec")
    task = RetrievalTask(model, OptimizerSection(name=name, beta1=0.8, beta2=0.98), RetrievalSection(),
                         ItemProposal("uniform", FEATURES.num_items))
    optimizer = task.configure_optimizers()
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.98)


def test_per_position_targets_and_bce_by_hand():
    model = _model("SASRec").eval()
    batch = Batch(user=torch.tensor([2, 3]), label=torch.ones(2), lengths=torch.tensor([3, 1]),
                  target={"item": torch.tensor([9, 11]), "category": torch.tensor([2, 2])},
                  history={"item": torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0]]),
                           "category": torch.full((2, 4), 2), "behavior": torch.ones(2, 4, dtype=torch.long)})
    task = _task(model, positions="all", loss="bce", num_negatives=3)
    output = model.user_interests(batch)
    user, ids, positive, rows = task.trained_examples(batch, output)
    assert ids.tolist() == [6, 7, 9, 11] and rows.tolist() == [0, 0, 0, 1]     # next behaviour of each position
    assert torch.allclose(user[2], output.interests[0, 0]) and torch.allclose(user[3], output.interests[1, 0])
    assert torch.allclose(positive, model.item_embeddings(ids))
    negative, valid = task.bce_negatives(batch, rows)
    assert negative.shape == (4, 3, 16)
    # by hand: -log σ(s+) - Σ valid · log σ(-s-)
    u, p, n, v = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 3, 4), torch.tensor([[1, 0, 1], [1, 1, 1.]])
    expected = [-math.log(1 / (1 + math.exp(-float(u[i] @ p[i]))))
                - sum(float(v[i, m]) * math.log(1 / (1 + math.exp(float(u[i] @ n[i, m])))) for m in range(3))
                for i in range(2)]
    got = binary_cross_entropy_loss(u, p, n, v.bool())
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_bce_negatives_never_count_an_item_of_the_row():
    model = _model("SASRec")
    batch = random_batch(batch=6, length=6, empty_rows=())
    task = _task(model, positions="all", loss="bce", num_negatives=64)
    rows = torch.arange(6).repeat_interleave(3)
    task.generator.manual_seed(0)
    ids = task.proposal.draw(len(rows) * 64, task.generator).reshape(len(rows), 64)
    task.generator.manual_seed(0)
    _, valid = task.bce_negatives(batch, rows)
    own = [set(batch.hist_item[r, :batch.lengths[r]].tolist()) | {int(batch.target_item[r])} for r in rows.tolist()]
    expected = torch.tensor([[int(i) not in own[p] for i in ids[p]] for p in range(len(rows))])
    assert torch.equal(valid, expected) and not expected.all()


def test_the_task_refuses_what_it_cannot_train():
    with pytest.raises(ConfigError, match="positions: all"):
        task = _task(_model("ComiRecSA"), positions="all")
        task.training_step(random_batch(), 0)
    with pytest.raises(ConfigError, match="in_batch"):
        _task(_model("SASRec"), loss="bce", negatives="in_batch")


def test_negatives_all_is_the_full_softmax_over_every_item():
    model = _model("SASRec").eval()
    batch = random_batch(batch=5, length=6, empty_rows=())
    for positions in ("last", "all"):
        task = _task(model, negatives="all", positions=positions, logq_correction=False)
        got = task.training_step(batch, 0)
        user, ids, _, _ = task.trained_examples(batch, model.user_interests(batch))
        catalogue = model.item_embeddings(torch.arange(2, FEATURES.num_items))          # real items [N - 2, D]
        expected = F.cross_entropy(user @ catalogue.T, ids - 2)                          # by hand: one class per item
        assert got.item() == pytest.approx(expected.item(), rel=1e-5), positions
    with pytest.raises(ConfigError, match="logq_correction: false"):
        _task(model, negatives="all")
    with pytest.raises(ConfigError, match="not all"):
        _task(model, negatives="all", loss="bce", logq_correction=False)


def test_per_example_negatives_are_each_positions_own_draws():
    """``share_negatives: false`` (RecTools' per-position sampler): every trained example
    scores its target against its own ``num_negatives`` draws, checked by hand."""
    model = _model("SASRec").eval()
    batch = random_batch(batch=5, length=6, empty_rows=())
    task = _task(model, positions="all", share_negatives=False, num_negatives=7, logq_correction=False)
    user, ids, positive, _ = task.trained_examples(batch, model.user_interests(batch))
    state = task.generator.get_state()
    negative, negative_ids, _, _ = task.negatives(ids, positive)
    assert negative.shape == (len(ids), 7, positive.shape[1]) and negative_ids.shape == (len(ids), 7)
    assert len(torch.unique(negative_ids)) > 7                                    # not one set repeated
    own = model.item_embeddings(negative_ids)                                     # [P, 7, D]
    logits = torch.cat([(user * positive).sum(-1, keepdim=True), torch.einsum("pd,pmd->pm", user, own)], 1)
    logits[:, 1:] = logits[:, 1:].masked_fill(negative_ids == ids[:, None], float("-inf"))
    expected = F.cross_entropy(logits, torch.zeros(len(ids), dtype=torch.long))
    task.generator.set_state(state)                                               # the same draws again
    assert task.training_step(batch, 0).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="share_negatives"):
        _task(model, negatives="in_batch", share_negatives=False)
    kept = _task(model, positions="all", share_negatives=False, num_negatives=7, logq_correction=False,
                 remove_accidental_hits=False)
    kept.generator.set_state(state)
    assert (negative_ids == ids[:, None]).any()                                  # the draws include hits
    logits[:, 1:] = torch.einsum("pd,pmd->pm", user, own)                      # hits stay in the softmax
    expected_kept = F.cross_entropy(logits, torch.zeros(len(ids), dtype=torch.long))
    assert kept.training_step(batch, 0).item() == pytest.approx(expected_kept.item(), rel=1e-5)
    with pytest.raises(ConfigError, match="remove_accidental_hits"):
        _task(model, negatives="in_batch", remove_accidental_hits=False)


def test_sample_weights_make_the_loss_a_weighted_mean():
    model = _model("ComiRecSA")
    batch = random_batch(batch=4, length=6, empty_rows=())
    task = _task(model, negatives="in_batch", logq_correction=False)
    weights = torch.tensor([0.7, 0.1, 0.2, 0.0])

    class Weighted(type(model)):
        def user_interests(self, b):
            out = super().user_interests(b)
            out.sample_weights = weights
            return out

    weighted = Weighted(FEATURES, embedding_dim=16)
    weighted.load_state_dict(model.state_dict())
    got = _task(weighted, negatives="in_batch", logq_correction=False).training_step(batch, 0)
    output = model.user_interests(batch)
    user, ids, positive, _ = task.trained_examples(batch, output)
    logits = user @ positive.T
    logits = logits.masked_fill((ids[None, :] == ids[:, None]) & ~torch.eye(4, dtype=torch.bool), float("-inf"))
    per_row = F.cross_entropy(torch.cat([logits.diag()[:, None], logits.masked_fill(torch.eye(4, dtype=torch.bool),
                                                                                     float("-inf"))], 1),
                              torch.zeros(4, dtype=torch.long), reduction="none")
    assert got.detach().item() == pytest.approx(float((weights * per_row).sum() / weights.sum()), rel=1e-5)


# ---------------------------------------------------------------- B2I routing by hand
def _route_by_hand(hat: np.ndarray, mask: np.ndarray, logits: np.ndarray, iterations: int) -> np.ndarray:
    """hat [K, L, D] (one user), mask [L], logits [K, L] → [K, D] (ComiRec's loop)."""
    b = logits.copy()
    for it in range(iterations):
        w = np.exp(b) / np.exp(b).sum(0, keepdims=True) * mask[None, :]
        z = np.einsum("kl,kld->kd", w, hat)
        n2 = (z ** 2).sum(-1, keepdims=True)
        v = n2 / (1 + n2) / np.sqrt(n2 + 1e-9) * z
        if it < iterations - 1:
            b = b + np.einsum("kld,kd->kl", hat, v)
    return v


def test_squash_by_hand():
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert squash(z)[0].tolist() == pytest.approx([25 / 26 * 3 / 5, 25 / 26 * 4 / 5], rel=1e-6)
    assert squash(z)[1].tolist() == [0.0, 0.0]


def test_dynamic_routing_against_a_hand_computed_user():
    torch.manual_seed(0)
    layer = B2IRouting(dim=3, max_length=4, num_interests=2, bilinear="per_position", iterations=3)
    history = torch.tensor([[[0.5, -1.0, 0.2], [1.0, 0.3, -0.4], [-0.2, 0.8, 0.6], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, True, False]])
    got = layer(history, mask)[0]
    w = layer.weight.detach().numpy()                                             # [L, K·D, D]
    hat = np.einsum("lod,ld->lo", w, history[0].numpy()).reshape(4, 2, 3).transpose(1, 0, 2)
    expected = _route_by_hand(hat, mask[0].numpy().astype(float), np.zeros((2, 4)), 3)   # DR: logits start at 0
    assert got.detach().numpy() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # MIND: one shared map, logits given (drawn from N(0, 1) when not)
    mind = B2IRouting(dim=3, max_length=4, num_interests=2, bilinear="shared", iterations=3)
    logits = torch.tensor([[[0.3, -1.2, 0.5, 0.1], [-0.4, 0.9, 0.2, 2.0]]])
    got = mind(history, mask, logits=logits)[0]
    shared = history[0].numpy() @ mind.shared.weight.detach().numpy().T
    expected = _route_by_hand(np.stack([shared, shared]), mask[0].numpy().astype(float), logits[0].numpy(), 3)
    assert got.detach().numpy() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert mind.routing_init == "normal" and layer.routing_init == "zeros"
    # only the last iteration is differentiated through ê: the first two see a detached copy
    one = B2IRouting(dim=3, max_length=4, num_interests=2, iterations=1)
    one.weight.data.copy_(layer.weight.data)
    assert not torch.allclose(one(history, mask), layer(history, mask))


# ---------------------------------------------------------------- ComiRec-SA by hand
def test_self_attentive_extractor_by_hand():
    torch.manual_seed(0)
    layer = SelfAttentiveExtractor(dim=3, max_length=4, num_interests=2)
    history = torch.tensor([[[0.5, -1.0, 0.2], [1.0, 0.3, -0.4], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = torch.tensor([[True, True, False, False]])
    got = layer(history, mask)[0].detach().numpy()
    e = history[0].numpy()
    h = e + layer.position.detach().numpy()
    w1, b1 = layer.hidden.weight.detach().numpy(), layer.hidden.bias.detach().numpy()
    w2, b2 = layer.heads.weight.detach().numpy(), layer.heads.bias.detach().numpy()
    scores = (np.tanh(h @ w1.T + b1) @ w2.T + b2).T                               # [K, L]
    a = np.exp(scores[:, :2]) / np.exp(scores[:, :2]).sum(1, keepdims=True)      # over the two valid positions
    assert got == pytest.approx(a @ e[:2], rel=1e-5, abs=1e-6)
    assert layer.hidden.weight.shape == (12, 3)                                   # 4·D hidden units


# ---------------------------------------------------------------- label-aware selection
def test_label_aware_selection_hard_and_soft():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    target = torch.tensor([[0.5, 0.4]])                                           # scores 0.5, 0.8, -1.5
    hard = _model("ComiRecSA").select_interest(interests, target)
    assert hard.tolist() == [[0.0, 2.0]]
    soft = MODELS["MIND"](FEATURES, embedding_dim=2, label_power=2).select_interest(interests, target)
    w = np.exp([0.25, 0.64, 2.25]) / np.exp([0.25, 0.64, 2.25]).sum()
    assert soft[0].tolist() == pytest.approx((w[:, None] * interests[0].numpy()).sum(0), rel=1e-6)
    with pytest.raises(ValueError, match="positive integer"):
        MODELS["MIND"](FEATURES, label_power=1.5)


def test_mind_dynamic_interest_number():
    model = _model("MIND", dynamic_interests=True).eval()
    batch = random_batch(batch=4, length=6, empty_rows=())
    batch = batch.replace(lengths=torch.tensor([1, 2, 4, 6]))
    assert model.interest_mask(batch.lengths).sum(1).tolist() == [1, 1, 2, 2]     # max(1, min(4, ⌊log₂ n⌋))
    interests = _interests(model, batch)
    assert torch.equal(interests[0, 1], interests[0, 0]) and torch.equal(interests[2, 3], interests[2, 0])
    assert not torch.allclose(interests[2, 1], interests[2, 0])


# ---------------------------------------------------------------- DESMIL's RFF-HSIC
def test_rff_hsic_against_numpy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 6, generator=g)
    w = torch.softmax(torch.randn(7, generator=g), 0)
    omega, beta = fourier_draws(6, 2, generator=g)
    mask = pair_mask(6, 3, "cross_interest")
    got = rff_hsic(x, w, omega, beta, mask).item()
    xn, wn, on, bn = x.numpy().astype(np.float64), w.numpy().astype(np.float64), omega.numpy(), beta.numpy()
    expected = 0.0
    for j in range(2):
        mid = xn * on[j] + bn[:, j]                                               # [n, F]
        mid = (mid - mid.min(1, keepdims=True))
        mid = mid / mid.max(1, keepdims=True) * np.pi / 2
        phi = np.sqrt(2 / 2) * (np.cos(mid) + np.sin(mid))
        mean = (wn[:, None] * phi).sum(0)
        cov = np.einsum("n,na,nc->ac", wn, phi, phi) - np.outer(mean, mean)
        for a in range(6):
            for c in range(6):
                if a // 3 != c // 3:                                              # two different interests
                    expected += cov[a, c] ** 2
    assert got == pytest.approx(expected, rel=1e-4)
    assert pair_mask(4, 2, "all").tolist() == [[0, 1, 1, 1], [1, 0, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]]
    assert random_fourier_features(x, omega, beta, sum_cos_sin=False).shape == (7, 6, 4)
    uniform = torch.full((7,), 1 / 7)
    assert torch.allclose(weighted_covariance(x, uniform), torch.cov(x.T, correction=0), atol=1e-5)


def test_inner_weight_optimisation_lowers_weighted_hsic():
    g = torch.Generator().manual_seed(0)
    n = 64
    a = torch.randn(n, 4, generator=g)
    b = torch.randn(n, 4, generator=g)
    b[: n // 4] = a[: n // 4] * 3.0                       # a quarter of the samples ties interest 2 to interest 1
    features = torch.cat([a, b], dim=1)
    # with 8 coordinates the min-max rescaled RFF-HSIC is ~1e-3, so λ_p = 70 (StableNet's, for
    # 512 coordinates) would barely move θ: a small λ_p lets the HSIC term lead
    learner = DecorrelationWeights(8, 4, memory=0, lambda_p=1e-3, steps=20)
    torch.manual_seed(0)
    weights = learner(features)
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-5)
    draws = [fourier_draws(8, 1, generator=torch.Generator().manual_seed(s)) for s in range(20)]
    uniform = torch.full((n,), 1 / n)
    before = np.mean([learner.hsic(features, uniform, d).item() for d in draws])
    after = np.mean([learner.hsic(features, weights, d).item() for d in draws])
    assert after < 0.8 * before, (before, after)
    assert weights[: n // 4].mean() < weights[n // 4:].mean()                     # the dependent samples lose weight


def test_memory_running_mean_then_ema():
    learner = DecorrelationWeights(2, 1, memory=3, steps=0, warmup=2, memory_ratio=0.9)
    x1, x2, x3 = torch.ones(3, 2), 3 * torch.ones(3, 2), torch.zeros(2, 2)
    learner(x1)
    assert torch.equal(learner.memory_features, x1)                              # (0·0 + x1) / 1
    learner(x2)
    assert torch.allclose(learner.memory_features, 2 * torch.ones(3, 2))          # mean of x1, x2
    learner(x3)                                                                   # EMA on the first 2 rows
    assert torch.allclose(learner.memory_features, torch.tensor([[1.8, 1.8], [1.8, 1.8], [2.0, 2.0]]))
    assert torch.allclose(learner.memory_logits, torch.ones(3))                   # steps=0: θ stays 1
    assert int(learner.updates) == 3


def test_desmil_weights_only_in_training_and_switch_off():
    model = _model("DESMIL", hsic_weight=0.5)
    batch = random_batch(batch=8, length=6)
    out = model.user_interests(batch)
    assert out.sample_weights.shape == (8,) and out.sample_weights.sum().item() == pytest.approx(1.0, rel=1e-5)
    assert not out.sample_weights.requires_grad and out.aux_losses["hsic"].requires_grad
    # the diagnostics the task logs: the weights' spread by hand, both HSICs non-negative
    d, w = out.diagnostics, out.sample_weights
    assert d["weight_ess"].item() == pytest.approx((w.sum() ** 2 / (w ** 2).sum()).item() / 8, rel=1e-5)
    assert d["weight_max"].item() == pytest.approx(8 * w.max().item(), rel=1e-5)
    assert 0 < d["weight_ess"].item() <= 1 + 1e-6 and d["hsic_uniform"] >= 0 and d["hsic_weighted"] >= 0
    assert not any(v.requires_grad for v in d.values())
    assert model.eval().user_interests(batch).sample_weights is None
    assert not model.user_interests(batch).diagnostics
    off = _model("DESMIL", reweight=False)
    assert off.user_interests(batch).sample_weights is None
    assert set(off.user_interests(batch).diagnostics) == {"hsic_uniform"}
    sa = _model("ComiRecSA")
    sa.load_state_dict({k: v for k, v in off.state_dict().items() if not k.startswith("reweighter.")})
    assert torch.allclose(sa.eval().user_interests(batch).interests, off.eval().user_interests(batch).interests)


# ---------------------------------------------------------------- every model learns a tiny set
def _tiny_set(rows: int = 32) -> Batch:
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(2, 7, (rows,), generator=g)
    mask = torch.arange(6)[None, :] < lengths[:, None]
    items = torch.randint(2, 50, (rows, 6), generator=g) * mask
    return Batch(user=torch.arange(rows), label=torch.ones(rows), lengths=lengths,
                 target={"item": torch.randint(2, 50, (rows,), generator=g), "category": torch.full((rows,), 2)},
                 history={"item": items, "category": mask.long() * 2, "behavior": mask.long()},
                 sample_index=torch.arange(rows))


def _recall_at(model, batch: Batch, k: int = 5) -> float:
    model.eval()
    with torch.no_grad():
        torch.manual_seed(2)
        top = rank_top_k(model.user_interests(batch).interests,
                         model.item_embeddings(torch.arange(FEATURES.num_items)), k)
    model.train()
    return (top == batch.target_item[:, None]).any(1).float().mean().item()


@pytest.mark.parametrize("name, retrieval", [("SASRec", {"loss": "bce", "positions": "all", "num_negatives": 1}),
                                             ("SASRec", {}), ("MIND", {}), ("ComiRecSA", {}), ("ComiRecDR", {}),
                                             ("DESMIL", {})])
def test_each_model_overfits_a_tiny_set(name, retrieval):
    model = _model(name, **({"dropout": 0.0} if name == "SASRec" else {}))
    batch = _tiny_set()
    task = _task(model, **retrieval)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    before_recall = _recall_at(model, batch)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # self.log outside a Trainer
        for _ in range(80):
            optimizer.zero_grad()
            loss = task.training_step(batch, 0)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    after_recall = _recall_at(model, batch)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), (losses[:5], losses[-10:])
    assert after_recall >= 0.6 and after_recall > before_recall + 0.3, (before_recall, after_recall)


# ---------------------------------------------------------------- through fit, and the shipped configs
@pytest.fixture(scope="module")
def tiny_loo(tmp_path_factory):
    from recsys.data_pipelines.build import build_dataset
    from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
    root = tmp_path_factory.mktemp("retrieval_models")
    return build_dataset(DataConfig(output=str(root / "loo"), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(n_rows=3000, n_items=120, n_categories=8, mean_events=20.0,
                                                      interests_per_user=2)),
        protocol=ProtocolConfig(name="loo", max_length=10)), progress=False)


@pytest.mark.parametrize("model, retrieval", [
    ({"class_path": "SASRec", "init_args": {"embedding_dim": 16, "dropout": 0.0}},
     {"loss": "bce", "positions": "all", "num_negatives": 1}),
    ({"class_path": "DESMIL", "init_args": {"embedding_dim": 16, "inner_steps": 3, "memory": 16}},
     {"negatives": "popularity", "num_negatives": 50}),
])
def test_fit_trains_exports_and_reloads(tiny_loo, tmp_path, model, retrieval):
    from recsys.runner import evaluate, fit
    raw = {"name": "r", "output_dir": str(tmp_path / "run"), "seed": 0,
           "data": {"path": str(tiny_loo), "batch_size": 64, "eval_batch_size": 512}, "model": model,
           "optimizer": {"lr": 0.01}, "retrieval": {"ks": [10, 20], **retrieval},
           "trainer": {"max_epochs": 2, "enable_progress_bar": False, "log_every_n_steps": 5, "num_threads": 1}}
    run = fit(parse_config(raw), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert all(0.0 <= test[f"{m}@{k}"] <= 1.0 for m in ("recall", "hr", "ndcg") for k in (10, 20))
    name = "bce" if retrieval.get("loss") == "bce" else "sampled_softmax"
    rows = [line.split(",") for line in (run / "logs" / "metrics.csv").read_text().splitlines()]
    column = rows[0].index(f"train/{name}")
    curve = [float(r[column]) for r in rows[1:] if r[column]]
    assert len(curve) >= 4 and np.mean(curve[-2:]) < curve[0], curve
    if model["class_path"] == "SASRec":      # learnt something beyond chance (20 of 118 items)
        assert test["hr@20"] > 1.3 * 20 / 118, test
    again = evaluate(run)["splits"]["test"]            # rebuilt from model.json + weights (DESMIL's memory too)
    assert again["recall@20"] == pytest.approx(test["recall@20"], abs=1e-12)


def test_sasrec_on_longest_prefixes_trains_one_history_per_user(tiny_loo, tmp_path):
    """``data.train_prefixes: longest``: Kang's / RecTools' objective, every position of a user's
    one training sequence, instead of every prefix as its own sample."""
    from recsys.data_pipelines.dataset import BuiltDataset
    from recsys.runner import fit
    cols = BuiltDataset.open(tiny_loo).sample_columns("train")
    users = len(np.unique(cols["user"]))
    raw = {"name": "r", "output_dir": str(tmp_path / "run"), "seed": 0,
           "data": {"path": str(tiny_loo), "batch_size": 16, "eval_batch_size": 512, "train_prefixes": "longest"},
           "model": {"class_path": "SASRec", "init_args": {"embedding_dim": 16, "dropout": 0.0}},
           "optimizer": {"lr": 0.01}, "retrieval": {"ks": [20], "positions": "all", "negatives": "uniform",
                                                    "num_negatives": 64, "logq_correction": False},
           "trainer": {"max_epochs": 6, "enable_progress_bar": False, "num_threads": 1}}
    metrics = json.loads((fit(parse_config(raw), progress=False) / "metrics.json").read_text())
    assert metrics["train_samples"] == 6 * (users // 16) * 16 < len(cols["row"])
    assert metrics["splits"]["test"]["hr@20"] > 1.3 * 20 / 118, metrics["splits"]["test"]


@pytest.mark.parametrize("name", ["sasrec", "sasrec_sampled_softmax", "mind", "comirec_sa", "comirec_dr", "desmil"])
def test_shipped_configs_parse_and_build_their_model(name):
    config = load_config(REPO / "configs" / f"{name}_amazon_beauty.yaml")
    assert config.family == "retrieval"
    features = FeatureSpec(num_users=10, num_items=40, num_categories=3, max_length=config.data.max_length or 20)
    model = config.model_class(features, **config.model_init_args)
    assert model.item_embeddings(torch.tensor([2, 3])).shape[0] == 2


@pytest.mark.parametrize("name", ["SASRec", "ComiRecSA"])
def test_item_side_fields_enter_history_and_candidates_alike(name):
    from models_fixtures import side_batch, side_spec, side_tables
    spec = side_spec()
    plain = MODELS[name](spec, embedding_dim=8)
    torch.manual_seed(0)
    model = MODELS[name](spec, embedding_dim=8, item_fields=["brand", "genres", "text"])
    model.attach_side_tables(side_tables(spec))
    items = torch.tensor([2, 3, 4])
    by_hand = (model.items.ids(items) + model.items.side.embed("brand", model.item_side.lookup("brand", items))
               + model.items.side.embed("genres", model.item_side.lookup("genres", items))
               + model.items.side.embed("text", model.item_side.lookup("text", items)))
    assert torch.allclose(model.item_embeddings(items), by_hand)
    model.eval()
    batch = side_batch(spec)
    assert torch.allclose(_interests(model, batch), _interests(model, with_garbage_padding(batch)), atol=1e-6)
    assert plain.items.side is None
    with pytest.raises(ConfigError, match="not item side fields"):
        MODELS[name](spec, item_fields=["age"])
