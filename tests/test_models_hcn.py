"""HCN (a reconstruction, models/hcn.py): centre extraction against a hand loop and on a
planted clustered history, the redundancy penalty, padding, empty histories, overfitting,
gradients, the two-tower score_candidates, bad switches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recsys.errors import ConfigError
from recsys.models import MODELS
from recsys.models.base import RankingModel
from recsys.models.hcn import HCN, HierarchicalInterests, InterestLevel, mutual_cos2
from tests.models_fixtures import FEATURES, random_batch, side_batch, side_spec, side_tables, with_garbage_padding

SWITCHES = [dict(), dict(residual=True), dict(fusion="stack", short_centres_per_level=[3, 2]),
            dict(readout="attention", output_levels="top"), dict(centres_per_level=[4])]


def small_hcn(features=FEATURES, **kwargs) -> HCN:
    torch.manual_seed(0)
    args = dict(item_dim=8, category_dim=4, centres_per_level=[4, 2], short_length=3, gate_units=[8],
                item_units=[16])
    return HCN(features, **{**args, **kwargs})


def candidates(batch, per_user: int, seed: int = 1, features=FEATURES) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"item": torch.randint(1, features.num_items, (batch.size, per_user), generator=g),
            "category": torch.randint(1, features.num_categories, (batch.size, per_user), generator=g)}


# ----------------------------------------------------------------- centre extraction
def reference_level(level: InterestLevel, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The update rule of the module docstring written per user, per centre, per behaviour;
    residual clustering with the behaviours themselves projected (the [K, L, D] form)."""
    out = []
    for b in range(inputs.shape[0]):
        x = [inputs[b, n] @ level.project.weight.T for n in range(inputs.shape[1]) if mask[b, n]]
        centres = [level.initial[k].clone() for k in range(level.initial.shape[0])]
        for _ in range(level.iterations):
            basis = []                                  # orthonormal basis of c_1..c_{k-1}
            residual_x = []
            for k, c in enumerate(centres):
                if level.residual:
                    residual_x.append([v - sum((v @ q) * q for q in basis) if basis else v for v in x])
                    w = c - sum((c @ q) * q for q in basis) if basis else c
                    basis.append(w / w.norm())
                else:
                    residual_x.append(x)
            logits = [[float(residual_x[k][n] @ centres[k]) / level.temperature for k in range(len(centres))]
                      for n in range(len(x))]
            assign = [[math.exp(s) / sum(math.exp(t) for t in row) for s in row] for row in logits]
            new = []
            for k, c in enumerate(centres):
                total = sum(assign[n][k] for n in range(len(x)))
                mean = sum(assign[n][k] * residual_x[k][n] for n in range(len(x))) / total if x else torch.zeros_like(c)
                new.append(level.norm(c + mean))
            centres = new
        out.append(torch.stack(centres))
    return torch.stack(out)


@pytest.mark.parametrize("residual", [False, True])
def test_interest_level_matches_a_hand_loop_with_padding_and_an_empty_row(residual):
    torch.manual_seed(3)
    level = InterestLevel(dim=5, centres=3, iterations=2, temperature=0.7, residual=residual)
    with torch.no_grad():
        level.norm.weight.uniform_(0.5, 1.5)
        level.norm.bias.uniform_(-0.2, 0.2)
    inputs = torch.randn(3, 4, 5)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    with torch.no_grad():
        assert torch.allclose(level(inputs, mask), reference_level(level, inputs, mask), atol=1e-5)


def planted(dim: int = 16, seed: int = 0):
    """3 well-separated cluster means (zero mean over features, norm √D: LayerNorm's scale) and
    4 users whose histories are noisy copies of them, with different lengths."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, dim, generator=g)
    means = means - means.mean(1, keepdim=True)
    means = means / means.norm(dim=1, keepdim=True) * math.sqrt(dim)
    labels = torch.randint(0, 3, (4, 30), generator=g)
    inputs = means[labels] + 0.1 * torch.randn(4, 30, dim, generator=g)
    lengths = torch.tensor([30, 20, 12, 6])
    mask = torch.arange(30).unsqueeze(0) < lengths.unsqueeze(1)
    present = [sorted(set(labels[b, :lengths[b]].tolist())) for b in range(4)]
    return means, inputs, mask, present


def alignment(centres: torch.Tensor, means: torch.Tensor, present: list) -> "tuple[float, float]":
    """(worst over users and present clusters of the best centre's cosine, worst over centres
    of the best present cluster's cosine)."""
    cos = F.normalize(centres, dim=-1) @ F.normalize(means, dim=-1).T             # [B, K, 3]
    per_cluster = min(float(cos[b][:, present[b]].max(0).values.min()) for b in range(len(present)))
    per_centre = min(float(cos[b][:, present[b]].max(1).values.min()) for b in range(len(present)))
    return per_cluster, per_centre


def identity_level(dim: int, centres: int, iterations: int) -> InterestLevel:
    torch.manual_seed(1)
    level = InterestLevel(dim, centres, iterations, temperature=1.0, residual=False)
    with torch.no_grad():
        level.project.weight.copy_(torch.eye(dim))
    return level


def test_centres_converge_to_the_planted_clusters():
    means, inputs, mask, present = planted()
    trace = []
    with torch.no_grad():
        centres = identity_level(16, 6, iterations=10)(inputs, mask, trace)
        one_step = identity_level(16, 6, iterations=1)(inputs, mask)
    per_cluster, per_centre = alignment(centres, means, present)
    assert per_cluster > 0.99 and per_centre > 0.99, (per_cluster, per_centre)   # every cluster found, no centre between
    assert alignment(one_step, means, present)[0] < 0.95                          # the iterations are what gets there
    moves = [float((after - before).norm() / after.norm()) for before, after in zip(trace, trace[1:])]
    assert all(b < a for a, b in zip(moves, moves[1:])), moves                    # a contraction ...
    assert moves[-1] < 1e-2                                                       # ... to a fixed point
    # a user lacking a cluster gets no centre on it: centres follow the data, not the init
    missing = [c for c in range(3) if c not in present[3]]
    if missing:
        cos = F.normalize(centres[3], dim=-1) @ F.normalize(means[missing], dim=-1).T
        assert float(cos.max()) < 0.9


def test_the_second_level_clusters_the_first_levels_centres():
    means, inputs, mask, present = planted()
    torch.manual_seed(1)
    hierarchy = HierarchicalInterests(16, [6, 3], iterations=10, temperature=1.0, residual=False)
    with torch.no_grad():
        for level in hierarchy.levels:
            level.project.weight.copy_(torch.eye(16))
        first, second = hierarchy(inputs, mask)
    assert first.shape == (4, 6, 16) and second.shape == (4, 3, 16)
    assert alignment(second, means, present)[1] > 0.99          # every top centre sits on a real cluster


def test_residual_clustering_makes_centres_of_one_user_less_alike():
    means, inputs, mask, _ = planted()
    torch.manual_seed(1)
    plain = InterestLevel(16, 6, 3, 1.0, residual=False)
    torch.manual_seed(1)
    residual = InterestLevel(16, 6, 3, 1.0, residual=True)
    with torch.no_grad():
        assert float(mutual_cos2(residual(inputs, mask)).mean()) < 0.5 * float(mutual_cos2(plain(inputs, mask)).mean())


def test_mutual_cos2_hand_computed():
    centres = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]])
    # pairs: (0,1) cos² 1/2, (0,2) 0, (1,2) 1/2; both orders → 2
    assert torch.allclose(mutual_cos2(centres), torch.tensor([2.0]))
    assert torch.equal(mutual_cos2(torch.ones(2, 1, 3)), torch.zeros(2))


def test_the_redundancy_penalty_lowers_the_centres_mutual_similarity():
    batch = random_batch(batch=32, length=6, seed=4)

    def trained(weight: float, steps: int = 30) -> float:
        model = small_hcn(redundancy_weight=weight, centres_per_level=[6, 3])
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            out = model(batch)
            loss = F.binary_cross_entropy_with_logits(out.logit, batch.label) + sum(out.aux_losses.values())
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            return float(model.redundancy(model.user_side(batch).centres))

    start, without, with_penalty = trained(0.0, steps=0), trained(0.0), trained(1.0)
    # the BCE alone lets the centres collapse onto each other (measured: 8.1 → 20.2); the penalty
    # pulls them apart (→ 0.29)
    assert without > start and with_penalty < 0.5 * start, (start, without, with_penalty)


def test_aux_loss_is_beta_times_the_penalty_and_absent_at_zero():
    batch = random_batch(seed=2)
    model = small_hcn(redundancy_weight=0.25)
    out = model(batch)
    expected = 0.25 * model.redundancy(model.user_side(batch).centres)
    assert set(out.aux_losses) == {"redundancy"} and torch.allclose(out.aux_losses["redundancy"], expected)
    # four terms: long and short, two levels each
    user = model.user_side(batch)
    terms = [mutual_cos2(level).mean() for seq in ("long", "short") for level in user.centres[seq]]
    assert len(terms) == 4 and torch.allclose(model.redundancy(user.centres), torch.stack(terms).sum())
    assert small_hcn(redundancy_weight=0.0)(batch).aux_losses == {}


# ----------------------------------------------------------------- padding, empty, short term
@pytest.mark.parametrize("switches", SWITCHES)
def test_padding_never_contributes_and_jagged_batches_agree(switches):
    spec = side_spec()
    model = small_hcn(spec, **switches).eval()
    model.attach_side_tables(side_tables(spec))
    batch = side_batch(spec)
    garbage = with_garbage_padding(batch, item=17, category=5)
    assert not torch.equal(garbage.hist_item, batch.hist_item)
    out, dirty = model(batch), model(garbage)
    assert torch.equal(out.logit, dirty.logit)
    assert torch.equal(out.aux_losses["redundancy"], dirty.aux_losses["redundancy"])
    cands = candidates(batch, 5, features=spec)
    assert torch.equal(model.score_candidates(batch, cands), model.score_candidates(garbage, cands))
    assert torch.allclose(model(batch.to_jagged()).logit, out.logit, atol=1e-6)


def test_the_short_term_sequence_is_the_most_recent_valid_behaviours():
    model = small_hcn(short_length=3)
    history = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1)
    short, mask = model._short_term(history, torch.tensor([5, 2]))
    assert short[0, :, 0].tolist() == [2.0, 3.0, 4.0] and mask[0].tolist() == [True] * 3
    assert mask[1].tolist() == [False, True, True] and short[1, 1:, 0].tolist() == [5.0, 6.0]


def test_the_short_term_extractor_sees_only_the_last_behaviours():
    model = small_hcn(short_length=2).eval()
    batch = random_batch(seed=5, empty_rows=())
    batch = batch.replace(lengths=torch.full_like(batch.lengths, 6))
    older = batch.hist_item.clone()
    older[:, 0] = torch.where(older[:, 0] == 2, 3, 2)           # change the oldest behaviour only
    changed = batch.replace(hist_item=older)
    with torch.no_grad():
        a, b = model.user_side(batch).centres, model.user_side(changed).centres
    assert all(torch.equal(x, y) for x, y in zip(a["short"], b["short"]))
    assert not torch.allclose(a["long"][0], b["long"][0])


def test_empty_histories_score_finitely_and_train():
    model = small_hcn()
    batch = random_batch(seed=6, empty_rows=tuple(range(8)))
    out = model(batch)
    assert out.logit.shape == (8,) and bool(torch.isfinite(out.logit).all())
    (F.binary_cross_entropy_with_logits(out.logit, batch.label) + out.aux_losses["redundancy"]).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    # an empty history is the learned prior user: every empty row has the same user side
    with torch.no_grad():
        interests = model.user_side(batch).interests
    assert torch.allclose(interests, interests[:1].expand_as(interests))
    # L = 0 (no history positions at all) scores the same
    none = batch.replace(hist_item=batch.hist_item[:, :0], hist_category=batch.hist_category[:, :0],
                         hist_behavior=batch.hist_behavior[:, :0])
    assert torch.allclose(model(none).logit, out.logit, atol=1e-6)


def test_more_centres_than_behaviours_is_fine_every_centre_moves_to_the_behaviours():
    """K = 8 with one or two behaviours (documented): each centre moves to its weighted mean."""
    dim = 6
    torch.manual_seed(2)
    level = InterestLevel(dim, 8, iterations=3, temperature=1.0, residual=False)
    inputs = torch.zeros(1, 2, dim)
    inputs[0, 0] = torch.tensor([3.0, -3.0, 3.0, -3.0, 3.0, -3.0])
    mask = torch.tensor([[True, False]])
    with torch.no_grad():
        target = level.project(inputs[:, :1])
        centres = level(inputs, mask)
        start = level.norm(level.initial)
    cos_now = F.cosine_similarity(centres[0], target[0].expand(8, -1), dim=-1)
    cos_start = F.cosine_similarity(start, target[0].expand(8, -1), dim=-1)
    assert bool(torch.isfinite(centres).all()) and bool((cos_now > cos_start).all())
    logits = small_hcn(centres_per_level=[8, 8])(random_batch(length=2, seed=7)).logit
    assert bool(torch.isfinite(logits).all())


# ----------------------------------------------------------------- training
def test_overfits_64_samples():
    model = small_hcn()
    batch = random_batch(batch=64, length=6, seed=11, empty_rows=(0, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        out = model(batch)
        bce = F.binary_cross_entropy_with_logits(out.logit, batch.label)
        (bce + sum(out.aux_losses.values())).backward()
        optimizer.step()
    with torch.no_grad():
        final = F.binary_cross_entropy_with_logits(model(batch).logit, batch.label)
    assert float(final) < 0.02, float(final)          # random labels: memorised, not learned


@pytest.mark.parametrize("switches", SWITCHES)
def test_gradients_reach_every_parameter(switches):
    spec = side_spec()
    model = small_hcn(spec, **switches)
    model.attach_side_tables(side_tables(spec))
    batch = side_batch(spec)
    out = model(batch)
    (F.binary_cross_entropy_with_logits(out.logit, batch.label) + out.aux_losses["redundancy"]).backward()
    silent = [name for name, p in model.named_parameters()
              if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    # the batch has no missing discount value, so that field's "missing" vector has nothing to learn
    assert silent == ["fields.missing.discount"]


# ----------------------------------------------------------------- two-tower scoring
@pytest.mark.parametrize("switches", SWITCHES)
def test_score_candidates_equals_forward_per_candidate(switches):
    spec = side_spec()
    model = small_hcn(spec, **switches).eval()
    model.attach_side_tables(side_tables(spec))
    batch = side_batch(spec)
    cands = candidates(batch, 7, features=spec)
    with torch.inference_mode():
        fast = model.score_candidates(batch, cands, max_rows=20)          # chunks of 2 users
        slow = RankingModel.score_candidates(model, batch, cands)          # repeat rows, run forward
        own = model.score_candidates(batch, {"item": batch.target_item[:, None],
                                             "category": batch.target_category[:, None]})
        logits = model(batch).logit
    assert fast.shape == (8, 7)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.allclose(own[:, 0], logits, atol=1e-6)
    # candidate (b, m) by hand: max_k <U_k, t> + item bias + bias
    with torch.no_grad():
        with torch.inference_mode():
            user = model.user_side(batch).interests
            t = model.item_vectors(cands["item"][3, 4], cands["category"][3, 4])
            s = user[3] @ t
            pooled = s.max() if model.readout == "max" else (torch.softmax(s, 0) * s).sum()
            expected = pooled + model.item_bias(cands["item"][3, 4]).squeeze() + model.bias
    assert torch.allclose(fast[3, 4], expected, atol=1e-5)


def test_the_user_side_runs_once_per_user(monkeypatch):
    model = small_hcn().eval()
    batch = random_batch(seed=8)
    calls = []
    original = model.user_side
    monkeypatch.setattr(model, "user_side", lambda b: calls.append(b.size) or original(b))
    with torch.inference_mode():
        model.score_candidates(batch, candidates(batch, 300), max_rows=100)
    assert calls == [8]


def test_score_candidates_input_checks():
    model = small_hcn().eval()
    batch = random_batch(seed=9)
    with pytest.raises(ValueError, match=r"\[B=8, M\]"):
        model.score_candidates(batch, {"item": torch.ones(4, 3, dtype=torch.long),
                                       "category": torch.ones(4, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match="category"):
        model.score_candidates(batch, {"item": torch.ones(8, 3, dtype=torch.long)})
    assert model.score_candidates(batch, {"item": torch.ones(8, 0, dtype=torch.long),
                                          "category": torch.ones(8, 0, dtype=torch.long)}).shape == (8, 0)


# ----------------------------------------------------------------- configuration
def test_registered_with_the_proposal_defaults():
    assert MODELS["HCN"] is HCN
    model = HCN(FEATURES)
    assert model.dim == 64 and [len(level.initial) for level in model.long.levels] == [8, 4]
    assert model.long.levels[0].iterations == 3 and model.long.levels[0].temperature == 1.0
    assert model.redundancy_weight == 1e-2 and model.fusion == "sum" and model.readout == "max"


@pytest.mark.parametrize("bad, message", [
    (dict(fusion="concat"), "fusion must be one of"),
    (dict(readout="mean"), "readout must be one of"),
    (dict(output_levels="middle"), "output_levels must be one of"),
    (dict(centres_per_level=[]), "centres_per_level must be a non-empty list"),
    (dict(centres_per_level=[4, 0]), "centres_per_level must be a non-empty list"),
    (dict(short_centres_per_level=[2.5]), "short_centres_per_level must be"),
    (dict(iterations=0), "iterations must be"),
    (dict(temperature=0.0), "temperature must be"),
    (dict(temperature=float("inf")), "temperature must be"),
    (dict(short_length=0), "short_length must be"),
    (dict(redundancy_weight=-0.1), "redundancy_weight must be"),
    (dict(short_centres_per_level=[3, 2]), "fusion='sum' adds the short- and long-term interests one to one"),
    (dict(residual=True, centres_per_level=[20, 2], short_centres_per_level=[20, 2]), "at most D=12"),
])
def test_bad_switches_are_config_errors(bad, message):
    with pytest.raises(ConfigError, match=message):
        small_hcn(**bad)


def test_unequal_short_and_long_counts_are_fine_when_stacked_or_top_level_only():
    batch = random_batch(seed=10)
    stacked = small_hcn(fusion="stack", short_centres_per_level=[3, 1]).eval()
    assert stacked.user_side(batch).interests.shape == (8, 4 + 2 + 3 + 1, 24)
    top = small_hcn(output_levels="top", short_centres_per_level=[5, 2]).eval()
    assert top.user_side(batch).interests.shape == (8, 2, 24)


def test_export_and_reload_give_the_same_scores(tmp_path):
    from recsys.artifacts import export_model, load_model
    spec = side_spec()
    model = small_hcn(spec, residual=True).eval()
    model.attach_side_tables(side_tables(spec))
    init_args = dict(item_dim=8, category_dim=4, centres_per_level=[4, 2], short_length=3, gate_units=[8],
                     item_units=[16], residual=True)
    export_model(model, "HCN", init_args, spec, tmp_path)
    loaded = load_model(tmp_path).eval()
    batch = side_batch(spec)
    cands = candidates(batch, 4, features=spec)
    with torch.inference_mode():
        assert torch.equal(loaded.score_candidates(batch, cands), model.score_candidates(batch, cands))


# ----------------------------------------------------------------- the training spine
@pytest.mark.slow
def test_fit_trains_hcn_on_synthetic_data_and_the_run_reloads(tmp_path):
    """Real Lightning training through ``fit`` (1 epoch on a built synthetic dataset): the
    redundancy term is logged, the test AUC beats chance, the exported run scores candidates
    exactly as the trained model's forward did."""
    import json

    from recsys.config import parse_config
    from recsys.data_pipelines.build import build_dataset
    from recsys.data_pipelines.config import DataConfig, ProtocolConfig, SourceConfig, SyntheticSource
    from recsys.runner import fit, load_run

    data = build_dataset(DataConfig(output=str(tmp_path / "ds"), source=SourceConfig(
        format="synthetic", synthetic=SyntheticSource(n_rows=20_000, n_items=500, n_categories=20,
                                                      mean_events=25.0)),
        protocol=ProtocolConfig(max_length=20)), progress=False)
    raw = {"name": "hcn", "output_dir": str(tmp_path / "run"), "seed": 0,
           "data": {"path": str(data), "batch_size": 256, "eval_batch_size": 2048},
           "model": {"class_path": "HCN", "init_args": {"item_dim": 8, "category_dim": 8, "centres_per_level": [4, 2],
                                                         "short_length": 5, "gate_units": [16], "item_units": [32]}},
           "optimizer": {"name": "adam", "lr": 0.003},
           "trainer": {"max_epochs": 1, "enable_progress_bar": False, "num_threads": 1}}
    run = fit(parse_config(raw), progress=False)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"].endswith("HCN") and metrics["splits"]["test"]["auc"] > 0.6
    logged = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/aux_redundancy" in logged
    _, model = load_run(run)
    model.eval()
    batch = random_batch(batch=6, length=20, seed=3, features=model.features)
    cands = candidates(batch, 9, features=model.features)
    with torch.inference_mode():
        assert torch.allclose(model.score_candidates(batch, cands), RankingModel.score_candidates(model, batch, cands),
                              atol=1e-5)
