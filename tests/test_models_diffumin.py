"""DiffuMIN (models/diffumin.py): OMIE channels, routing and filtering, the diffusion formulas,
the x0-prediction sampler, CMIC's loss, training, padding, empty histories, ablation switches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.errors import ConfigError
from recsys.models.diffumin import DiffuMIN
from recsys.models.layers.interest_diffusion import LinearBetaSchedule, in_batch_contrastive
from recsys.models.layers.orthogonal_interests import (aggregate_interests, filter_mask, orthogonal_channels,
                                                       routing_mask)
from recsys.models.registry import MODELS

from tests.models_fixtures import FEATURES, random_batch, side_batch, side_spec, side_tables, with_garbage_padding


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: intra-op threads only add contention on the shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small(**kwargs) -> DiffuMIN:
    """D = 8 (4 + 4), C = 4, a small head; the rest at the paper/code defaults."""
    args = dict(item_dim=4, category_dim=4, mlp_units=[16], short_term_length=3, timesteps=100, sample_steps=4)
    args.update(kwargs)
    return DiffuMIN(FEATURES, **args)


# ------------------------------------------------------------------ OMIE
def test_qr_channels_are_orthonormal_with_non_negative_r_diagonal():
    torch.manual_seed(0)
    p = torch.randn(5, 8, 4)
    o = orthogonal_channels(p)
    eye = torch.eye(4).expand(5, 4, 4)
    assert torch.allclose(o.transpose(1, 2) @ o, eye, atol=1e-5)
    r = o.transpose(1, 2) @ p                                    # P = O R  ⇒  R = Oᵀ P
    assert torch.allclose(o @ r, p, atol=1e-5)
    assert torch.allclose(r, torch.triu(r), atol=1e-5)
    assert (torch.diagonal(r, dim1=1, dim2=2) > 0).all()      # with O R = P and OᵀO = I: the unique QR


def test_qr_channels_hand_case():
    p = torch.tensor([[[-2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]])    # [1, D = 3, C = 2]
    expected = torch.tensor([[[-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]])
    assert torch.allclose(orthogonal_channels(p), expected, atol=1e-6)


def test_routing_top1_and_soft_masks_never_route_padding():
    relevance = torch.tensor([[[0.1, 0.5, -0.2], [-1.0, -3.0, -0.5], [9.0, 0.0, 0.0]]])   # [1, L = 3, C = 3]
    valid = torch.tensor([[True, True, False]])
    top1 = routing_mask(relevance, valid, "top1")
    assert torch.equal(top1, torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]))
    soft = routing_mask(relevance, valid, "soft")
    assert torch.allclose(soft[0, :2], torch.softmax(relevance[0, :2], -1))
    assert torch.equal(soft[0, 2], torch.zeros(3))


def test_topk_filter_keeps_the_best_per_channel_and_all_when_l_is_below_k():
    relevance = torch.tensor([[[0.3, -1.0], [0.9, 0.2], [0.1, 0.8], [5.0, 5.0]]])        # [1, L = 4, C = 2]
    valid = torch.tensor([[True, True, True, False]])                                    # the padded 5.0 must lose
    keep1 = filter_mask(relevance, valid, "topk", top_k=1)
    assert torch.equal(keep1[0], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    keep2 = filter_mask(relevance, valid, "topk", top_k=2)
    assert torch.equal(keep2[0], torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    for k in (3, 100):                                    # L_b = 3 <= k (the code's top_k(100) crashes)
        assert torch.equal(filter_mask(relevance, valid, "topk", top_k=k)[0], valid[0].float().unsqueeze(-1).expand(4, 2))
    empty = filter_mask(relevance, torch.zeros(1, 4, dtype=torch.bool), "topk", top_k=2)
    assert empty.sum() == 0


def test_top_p_filter_keeps_the_ceiling_of_the_share_of_valid_behaviours():
    relevance = torch.tensor([[[0.4], [0.1], [0.3], [0.2], [0.9]],
                              [[0.5], [0.6], [0.0], [0.0], [0.0]]])                      # [2, L = 5, C = 1]
    valid = torch.tensor([[True] * 4 + [False], [True, True, False, False, False]])
    keep = filter_mask(relevance, valid, "top_p", top_p=0.5)        # ⌈0.5·4⌉ = 2, ⌈0.5·2⌉ = 1
    assert keep[0, :, 0].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert keep[1, :, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    keep = filter_mask(relevance, valid, "top_p", top_p=0.3)        # ⌈1.2⌉ = 2 and ⌈0.6⌉ = 1
    assert keep.sum(1).flatten().tolist() == [2.0, 1.0]


def test_aggregation_is_the_masked_relevance_weighted_mean_over_valid_behaviours():
    history = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [7.0, 7.0]]])
    weights = torch.tensor([[[0.5, 0.0], [0.0, -1.0], [0.0, 0.0]]])                    # M ⊙ A, padding 0
    r = aggregate_interests(history, weights, torch.tensor([2]))
    assert torch.allclose(r, torch.tensor([[[0.25, 0.0], [0.0, -1.0]]]))
    assert torch.equal(aggregate_interests(history, torch.zeros(1, 3, 2), torch.tensor([0])), torch.zeros(1, 2, 2))


# ------------------------------------------------------------------ DMIG
def test_forward_and_posterior_formulas_against_hand_computation():
    schedule = LinearBetaSchedule(timesteps=3, beta_start=0.1, beta_end=0.3)   # β = .1 .2 .3, ᾱ = .9 .72 .504
    assert torch.allclose(schedule.alphas_cumprod, torch.tensor([0.9, 0.72, 0.504]))
    x0, noise, t = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 1.0]]), torch.tensor([1])
    expected = math.sqrt(0.72) * x0 + math.sqrt(0.28) * noise
    assert torch.allclose(schedule.q_sample(x0, t, noise), expected)
    xt = torch.tensor([[1.0, 3.0]])
    mean, var = schedule.q_posterior(x0, xt, t)
    c1, c2 = 0.2 * math.sqrt(0.9) / 0.28, 0.1 * math.sqrt(0.8) / 0.28
    assert torch.allclose(mean, c1 * x0 + c2 * xt)
    assert torch.allclose(var, torch.tensor([[0.2 * 0.1 / 0.28]]))
    mean, var = schedule.q_posterior(x0, xt, torch.tensor([0]))              # t = 0: x_{-1} = x_0 exactly
    assert torch.allclose(mean, x0) and var.item() == 0.0
    # the posterior is Bayes' rule of q(x_t | x_{t−1}) q(x_{t−1} | x_0): compare with the Gaussian product
    a_prev, beta = 0.9, 0.2
    precision = 1 / (1 - a_prev) + (1 - beta) / beta
    bayes_mean = (math.sqrt(a_prev) * x0 / (1 - a_prev) + math.sqrt(1 - beta) * xt / beta) / precision
    mean, var = schedule.q_posterior(x0, xt, t)
    assert torch.allclose(mean, bayes_mean) and math.isclose(var.item(), 1 / precision, rel_tol=1e-5)


def test_sampler_uses_the_output_as_x0_consistently():
    """With an oracle denoiser (x̂_0 = r̂), the deterministic chain returns r̂ exactly: each posterior
    mean maps √ᾱ_n·r̂ to √ᾱ_{n−1}·r̂. The code's ε-reading of the output would not."""
    model = small(sample_steps=7).eval()
    real = F.normalize(torch.randn(3, 4, 8), dim=-1)
    model._denoise = lambda real_, noisy, condition, steps: real_.transpose(0, 1)
    assert torch.allclose(model.generate(real, torch.randn(4, 3, 8)), real, atol=1e-5)


def test_the_denoiser_sees_the_real_interests_with_only_token_i_replaced():
    model = small()
    real, repl = torch.randn(2, 4, 8), torch.randn(4, 2, 8)
    tokens = model._tokens(real, repl).view(4, 2, 4, 8)
    for i in range(4):
        for j in range(4):
            assert torch.equal(tokens[i, :, j], repl[i] if i == j else real[:, j])


def test_training_runs_one_plus_t_prime_denoiser_passes_and_inference_t_prime():
    model = small(sample_steps=5)
    calls = []
    model.denoiser.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    batch = random_batch(batch=6)
    model.train()(batch)
    assert calls == [4 * 6] * 6                                      # C·B rows, 1 + T′ passes
    calls.clear()
    model.eval()(batch)
    assert calls == [4 * 6] * 5


# ------------------------------------------------------------------ CMIC
def test_contrastive_loss_hand_computed_three_users():
    real = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])                         # C = 1, B = 3
    generated = torch.tensor([[[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]]])
    tau = 0.5
    z = [[1, 0], [0, 1], [0.6, 0.8]]
    s2 = 1 / math.sqrt(2)
    zs = [[1, 0], [s2, s2], [0, -1]]
    total = 0.0
    for b in range(3):
        scores = [(z[b][0] * zs[j][0] + z[b][1] * zs[j][1]) / tau for j in range(3)]
        total += math.log(sum(math.exp(s) for s in scores)) - scores[b]
    assert math.isclose(in_batch_contrastive(real, generated, tau).item(), total / 3, rel_tol=1e-5)


# ------------------------------------------------------------------ the model
def test_registered_and_aux_losses_are_the_weighted_paper_terms():
    assert MODELS["DiffuMIN"] is DiffuMIN
    torch.manual_seed(0)
    model = small(diffusion_weight=0.01, contrastive_weight=0.001).train()
    batch = random_batch(batch=8)
    torch.manual_seed(1)
    out = model(batch)
    assert set(out.aux_losses) == {"diffusion", "contrastive"}
    unweighted = small(diffusion_weight=1.0, contrastive_weight=1.0).train()
    unweighted.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    raw = unweighted(batch).aux_losses
    assert torch.allclose(out.aux_losses["diffusion"], 0.01 * raw["diffusion"])
    assert torch.allclose(out.aux_losses["contrastive"], 0.001 * raw["contrastive"])
    assert model.eval()(batch).aux_losses == {}


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = small().train()
    out = model(random_batch(batch=8, seed=2))
    (F.binary_cross_entropy_with_logits(out.logit, random_batch(batch=8, seed=2).label)
     + sum(out.aux_losses.values())).backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert dead == []


def test_padding_invariance_and_layouts_in_eval_and_training():
    torch.manual_seed(0)
    model = small()
    batch = random_batch(batch=6, length=6, seed=5, empty_rows=(0, 3))
    longer = batch.replace(hist_item=F.pad(batch.hist_item, (0, 4), value=5),
                           hist_category=F.pad(batch.hist_category, (0, 4), value=2))
    for mode in ("eval", "train"):
        getattr(model, mode)()
        outputs = []
        for layout in (batch, with_garbage_padding(batch), longer, batch.to_jagged()):
            torch.manual_seed(7)                          # same noise draws: they never depend on L
            outputs.append(model(layout))
        for out in outputs[1:]:
            assert torch.allclose(out.logit, outputs[0].logit, atol=1e-5), mode
            for name, value in out.aux_losses.items():
                assert torch.allclose(value, outputs[0].aux_losses[name], atol=1e-6), (mode, name)


def test_inference_is_deterministic_and_stochastic_sampling_is_a_switch():
    model = small().eval()
    batch = random_batch(batch=4)
    assert torch.equal(model(batch).logit, model(batch).logit)
    noisy = small(eval_sampling="stochastic").eval()
    noisy.load_state_dict(model.state_dict())
    assert not torch.equal(noisy(batch).logit, noisy(batch).logit)


def test_empty_histories_score_and_train():
    model = small()
    batch = random_batch(batch=4, empty_rows=range(4))
    for layout in (batch, batch.to_jagged()):
        out = model.train()(layout)
        assert torch.isfinite(out.logit).all() and all(torch.isfinite(v) for v in out.aux_losses.values())
        (out.logit.sum() + sum(out.aux_losses.values())).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert torch.isfinite(model.eval()(layout).logit).all()


def test_history_shorter_than_channels_and_top_k():
    model = small(top_k=100).eval()                      # L = 2 < C = 4 < k
    batch = random_batch(batch=5, length=2, seed=1)
    assert torch.isfinite(model(batch).logit).all()


def test_short_term_branch_sees_only_the_k_most_recent_behaviours():
    model = small(short_term_length=2).eval()
    batch = random_batch(batch=3, length=6, seed=3, empty_rows=())
    batch = batch.replace(lengths=torch.tensor([6, 4, 1]))
    history = model.embedding(batch.hist_item, batch.hist_category)
    history = history * batch.history_mask().unsqueeze(-1)
    target, cond = torch.randn(3, 8), F.normalize(torch.randn(3, 8), dim=-1)
    base = model.short_term_interest(history, batch.lengths, target, cond)
    changed = history.clone()
    changed[0, :4] += 1.0                               # older than the 2 most recent of row 0
    changed[1, :2] += 1.0                               # older than the 2 most recent of row 1
    assert torch.allclose(model.short_term_interest(changed, batch.lengths, target, cond), base, atol=1e-6)
    changed[1, 3] += 1.0                                # the most recent of row 1
    assert not torch.allclose(model.short_term_interest(changed, batch.lengths, target, cond)[1], base[1])


@pytest.mark.parametrize("switch", [dict(use_dmig=False), dict(use_cmic=False), dict(channels="random"),
                                    dict(channels="projection"), dict(routing="soft"), dict(filter="top_p"),
                                    dict(sample_start="random"), dict(eval_sampling="stochastic"),
                                    dict(use_short_term=False)])
def test_each_ablation_switch_builds_trains_and_scores(switch):
    torch.manual_seed(0)
    model = small(**switch)
    batch = random_batch(batch=6, seed=4)
    out = model.train()(batch)
    expected = {"diffusion", "contrastive"}
    if switch.get("use_dmig") is False:
        expected = set()
    elif switch.get("use_cmic") is False:
        expected = {"diffusion"}
    assert set(out.aux_losses) == expected
    (F.binary_cross_entropy_with_logits(out.logit, batch.label) + sum(out.aux_losses.values())).backward()
    dead = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert dead == []
    assert torch.isfinite(model.eval()(batch).logit).all()


def test_no_dmig_drops_the_denoiser_and_cmic():
    model = small(use_dmig=False, use_cmic=True)
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert not {"denoiser", "project_real", "project_generated"} & names


@pytest.mark.parametrize("bad, message", [(dict(sample_steps=200), "exceeds"), (dict(num_channels=9), "D >= C"),
                                          (dict(num_heads=3), "divisible"), (dict(routing="max"), "routing"),
                                          (dict(filter="top"), "filter"), (dict(top_p=0.0), "top_p"),
                                          (dict(top_k=0), "top_k"), (dict(channels="svd"), "channels"),
                                          (dict(temperature=0.0), "temperature")])
def test_bad_configuration_is_a_config_error(bad, message):
    with pytest.raises(ConfigError, match=message):
        small(**bad)


def test_profile_and_context_fields_reach_the_head():
    spec = side_spec()
    model = DiffuMIN(spec, item_dim=4, category_dim=4, field_dim=4, mlp_units=[16], short_term_length=3,
                     timesteps=100, sample_steps=3)
    model.attach_side_tables(side_tables(spec))
    batch = side_batch(spec)
    model.eval()
    base = model(batch).logit
    assert torch.isfinite(base).all()
    hour = batch.context["hour"].clone()
    hour[2] = 2 if hour[2] != 2 else 3
    changed = model(batch.replace(context={**batch.context, "hour": hour})).logit
    assert not torch.isclose(changed[2], base[2]) and torch.allclose(changed[[0, 1, 3]], base[[0, 1, 3]])


def test_overfits_64_samples():
    torch.manual_seed(0)
    model = DiffuMIN(FEATURES, item_dim=8, category_dim=8, mlp_units=[64, 32], short_term_length=3,
                     timesteps=1000, sample_steps=4)
    batch = random_batch(batch=64, length=6, seed=11, empty_rows=(0, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        optimizer.zero_grad()
        out = model(batch)
        bce = F.binary_cross_entropy_with_logits(out.logit, batch.label)
        loss = bce + sum(out.aux_losses.values())
        loss.backward()
        optimizer.step()
    assert bce.item() < 0.02, bce.item()          # random labels: memorised, not learned
    assert loss.item() < 0.03, loss.item()
