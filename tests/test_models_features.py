"""The open feature contract on the model side: every field kind through the embedding
against a hand computation, the item side table (attach, errors, weights round trip), DIN,
the BaseModel, FinalMLP and DARE reading the fields of their spec, gradients, overfitting,
and padding / jagged invariance with side fields."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file, save_file

from recsys.contract import FeatureSpec, FieldSpec, Jagged, core_fields
from recsys.errors import CheckpointError, ConfigError, DataError
from recsys.models.base import RetrievalModel, RetrievalOutput
from recsys.models.dare import DARE
from recsys.models.din import DIN
from recsys.models.embedding_mlp import EmbeddingMLP
from recsys.models.finalmlp import FinalMLP
from recsys.models.layers.features import FeatureEmbedding, ItemSideTable
from tests.models_fixtures import FEATURES, random_batch, side_batch, side_spec, side_tables, with_garbage_padding

SPEC = side_spec()


def din(**kw) -> DIN:
    args = dict(item_dim=4, category_dim=3, attention_units=[6], mlp_units=[8], field_dim=2)
    return DIN(SPEC, **{**args, **kw})


def attached(model):
    model.attach_side_tables(side_tables(SPEC))
    return model


# ----------------------------------------------------------------- field kinds
def test_id_and_ids_fields_hand_computed_with_padding_masked_and_empty_rows_zero():
    emb = FeatureEmbedding(SPEC, ["brand", "genres", "moods"], 3, init_std=1.0)
    table = emb.table("genres").weight
    assert torch.equal(emb.embed("brand", torch.tensor([2, 0])), torch.stack([emb.table("brand").weight[2],
                                                                               torch.zeros(3)]))
    ids = torch.tensor([[4, 2, 0], [0, 0, 0], [5, 0, 0]])                # [B, A], 0 = padding
    mean = emb.embed("genres", ids)
    torch.testing.assert_close(mean, torch.stack([(table[4] + table[2]) / 2, torch.zeros(3), table[5]]))
    emb_sum = FeatureEmbedding(SPEC, ["genres"], 3, init_std=1.0, pooling="sum")
    t2 = emb_sum.table("genres").weight
    torch.testing.assert_close(emb_sum.embed("genres", ids), torch.stack([t2[4] + t2[2], torch.zeros(3), t2[5]]))
    # the jagged form of the same rows pools identically; [B, L, A] keeps its leading dims
    torch.testing.assert_close(emb.embed("genres", Jagged.from_lists([[4, 2], [], [5]])), mean)
    assert emb.embed("genres", ids.reshape(1, 3, 3)).shape == (1, 3, 3)
    assert emb.embed("genres", torch.zeros(2, 0, dtype=torch.long)).abs().sum() == 0   # A = 0: all empty


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.lists(st.integers(2, 5), max_size=3), min_size=1, max_size=6),
       pooling=st.sampled_from(["mean", "sum"]))
def test_ids_pooling_property_padded_jagged_and_by_hand_agree(rows, pooling):
    emb = FeatureEmbedding(SPEC, ["genres"], 3, init_std=1.0, pooling=pooling)
    weight = emb.table("genres").weight
    width = max(len(r) for r in rows)
    padded = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), width)
    by_hand = torch.stack([weight[r].sum(0) / (len(r) if pooling == "mean" and r else 1) if r else torch.zeros(3)
                           for r in rows])
    torch.testing.assert_close(emb.embed("genres", padded), by_hand)
    torch.testing.assert_close(emb.embed("genres", Jagged.from_lists(rows)), by_hand)


def test_fields_naming_one_table_share_it_and_both_train_it():
    emb = FeatureEmbedding(SPEC, ["genres", "moods", "interests"], 3, init_std=1.0)
    assert len(emb.own_tables()) == 1 and emb.width("moods") == emb.width("interests") == 3
    (emb.embed("moods", torch.tensor([[3, 0]])).sum() + emb.embed("interests", Jagged.from_lists([[4]])).sum()).backward()
    touched = emb.table("genres").weight.grad.abs().sum(1).nonzero().flatten().tolist()
    assert touched == [3, 4]                                             # padding row 0 never
    model = din()
    assert model.embedding.table("item") is model.embedding.item         # also_viewed uses the item table
    assert model.fields.table("genres") is model.embedding.table("genres")   # profile interests share it


def test_number_field_is_standardised_times_a_learned_vector_and_nan_gets_the_missing_vector():
    emb = FeatureEmbedding(SPEC, ["price"], 3, init_std=1.0)
    x = torch.tensor([12.0, float("nan"), 10.0])
    out = emb.embed("price", x)
    v, missing = emb.numbers["price"], emb.missing["price"]
    torch.testing.assert_close(out, torch.stack([(12 - 10) / 2 * v, missing, 0 * v]))
    out.sum().backward()
    assert emb.missing["price"].grad.tolist() == [1.0, 1.0, 1.0]         # one NaN row
    assert emb.numbers["price"].grad.tolist() == pytest.approx([1.0] * 3)  # z = 1 + 0


def test_dense_field_is_a_linear_of_the_input_vector():
    emb = FeatureEmbedding(SPEC, ["text"], 5)
    x = torch.randn(2, 3, 4)
    linear = emb.dense["text"]
    torch.testing.assert_close(emb.embed("text", x), x @ linear.weight.t() + linear.bias)
    with pytest.raises(ConfigError, match="not embedded"):
        emb.embed("price", torch.zeros(2))
    with pytest.raises(ConfigError, match="not in the feature spec"):
        FeatureEmbedding(SPEC, ["colour"], 3)


# ----------------------------------------------------------------- item side table
def test_side_table_lookup_is_by_item_id_and_narrow_ids_are_padded():
    table = ItemSideTable(SPEC)
    tables = side_tables(SPEC)
    tables["moods"] = tables["moods"][:, :1]                            # narrower than max_values=2
    table.attach(tables)
    items = torch.tensor([[3, 0], [7, 5]])
    assert torch.equal(table.lookup("brand", items), tables["brand"][items])
    assert table.lookup("genres", items).shape == (2, 2, 3) and table.lookup("text", items).shape == (2, 2, 4)
    assert torch.equal(table.lookup("moods", items)[..., 1], torch.zeros(2, 2, dtype=torch.long))
    assert table.text.requires_grad is False and "text" in dict(table.named_buffers())


@pytest.mark.parametrize("change, error, match", [
    (lambda t: t.pop("genres"), ConfigError, r"missing.*genres"),
    (lambda t: t.update(colour=torch.zeros(50)), ConfigError, r"colour.*not item side fields"),
    (lambda t: t.update(brand=torch.zeros(49, dtype=torch.long)), CheckpointError, r"'brand'.*\(49,\).*\(50,\)"),
    (lambda t: t.update(genres=torch.zeros(50, 4, dtype=torch.long)), CheckpointError, r"'genres'.*max_values=3"),
    (lambda t: t.update(text=torch.zeros(50, 3)), CheckpointError, r"'text'.*width=4"),
    (lambda t: t.update(brand=torch.zeros(50)), CheckpointError, r"'brand'.*integer ids"),
    (lambda t: t.update(price=torch.zeros(50, dtype=torch.long)), CheckpointError, r"'price'.*floats"),
    (lambda t: t["brand"].__setitem__(17, 5), DataError, r"'brand'.*item row 17.*id 5"),
    (lambda t: t["text"].__setitem__((23, 1), float("nan")), DataError, r"'text'.*item row 23"),
])
def test_attach_side_tables_errors_name_the_field(change, error, match):
    model = din()
    tables = side_tables(SPEC)
    change(tables)
    with pytest.raises(error, match=match):
        model.attach_side_tables(tables)


def test_a_model_with_side_fields_refuses_to_run_before_its_tables_are_attached():
    model = din()
    with pytest.raises(ConfigError, match="not attached"):
        model(side_batch(SPEC))
    DIN(FEATURES).attach_side_tables({})                                 # core-only: nothing to attach
    with pytest.raises(ConfigError, match="max_values"):
        ItemSideTable(FeatureSpec(core_fields(3, 4, 3) + (FieldSpec("tags", "ids", "item", size=4),)))


def test_a_trained_model_rebuilds_from_model_json_and_weights_alone(tmp_path):
    model = attached(din()).eval()
    batch = side_batch(SPEC)
    expected = model(batch).logit
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    spec = FeatureSpec.from_dict(SPEC.to_dict())                        # what model.json carries
    rebuilt = din() if spec == SPEC else None
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    torch.testing.assert_close(rebuilt.eval()(batch).logit, expected)


def test_retrieval_models_attach_side_tables_too():
    class Tower(RetrievalModel):
        def user_interests(self, batch):
            return RetrievalOutput(torch.zeros(batch.size, 1, 2))

    tower = Tower(SPEC)
    tower.attach_side_tables(side_tables(SPEC))
    assert torch.equal(tower.item_side.lookup("brand", torch.tensor([4])), side_tables(SPEC)["brand"][[4]])
    with pytest.raises(ConfigError, match="missing"):
        Tower(SPEC).attach_side_tables({})


# ----------------------------------------------------------------- models read their spec
def behaviour(model, items, categories, tables):
    """e(i) = [item ‖ category ‖ side fields of i] by hand (mean pooling, numeric, dense)."""
    emb = model.embedding
    parts = [emb.item.weight[items], emb.category.weight[categories], emb.table("brand").weight[tables["brand"][items]]]
    genres = tables["genres"][items]
    g = emb.table("genres").weight[genres] * (genres > 0).unsqueeze(-1)
    parts.append(g.sum(-2) / (genres > 0).sum(-1, keepdim=True).clamp_min(1))
    price = (tables["price"][items] - 10) / 2
    parts.append(torch.where(price.isnan().unsqueeze(-1), emb.missing["price"], price.nan_to_num().unsqueeze(-1)
                             * emb.numbers["price"]))
    parts.append(tables["text"][items] @ emb.dense["text"].weight.t() + emb.dense["text"].bias)
    parts.append(emb.item.weight[tables["also_viewed"][items]])
    moods = tables["moods"][items]
    m = emb.table("genres").weight[moods] * (moods > 0).unsqueeze(-1)
    parts.append(m.sum(-2) / (moods > 0).sum(-1, keepdim=True).clamp_min(1))
    return torch.cat(parts, dim=-1)


def profile_and_context(model, batch):
    f = model.fields
    income = (batch.profile["income"] - 3) / 0.5
    interests = batch.profile["interests"].to_padded()
    pooled = f.table("genres").weight[interests] * (interests > 0).unsqueeze(-1)
    return [f.table("age").weight[batch.profile["age"]],
            torch.where(income.isnan().unsqueeze(-1), f.missing["income"], income.nan_to_num().unsqueeze(-1)
                        * f.numbers["income"]),
            pooled.sum(1) / (interests > 0).sum(1, keepdim=True).clamp_min(1),
            f.table("hour").weight[batch.context["hour"]],
            batch.context["discount"].unsqueeze(-1) * f.numbers["discount"]]


def test_din_with_side_fields_hand_built_batch():
    model = attached(din()).eval()
    tables = side_tables(SPEC)
    batch = side_batch(SPEC, seed=3)
    target = behaviour(model, batch.target_item, batch.target_category, tables)
    history = behaviour(model, batch.hist_item, batch.hist_category, tables)
    assert target.shape[-1] == model.embedding.dim == 4 + 3 + 7 * 2
    interest = model.attention(target, history, lengths=batch.lengths)
    seen = {}
    model.mlp.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    logit = model(batch).logit
    expected = torch.cat([interest, target] + profile_and_context(model, batch), dim=-1)
    torch.testing.assert_close(seen["x"], expected)
    torch.testing.assert_close(logit, model.mlp(expected).squeeze(-1))


def test_embedding_mlp_with_side_fields_hand_built_batch():
    model = attached(EmbeddingMLP(SPEC, item_dim=4, category_dim=3, mlp_units=[8], field_dim=2, pooling="mean"))
    tables = side_tables(SPEC)
    batch = side_batch(SPEC, seed=4)
    history = behaviour(model, batch.hist_item, batch.hist_category, tables) * batch.history_mask().unsqueeze(-1)
    pooled = history.sum(1) / batch.lengths.clamp_min(1).unsqueeze(1)
    target = behaviour(model, batch.target_item, batch.target_category, tables)
    expected = torch.cat([pooled, target] + profile_and_context(model, batch), dim=-1)
    torch.testing.assert_close(model.eval()(batch).logit, model.mlp(expected).squeeze(-1))


def test_finalmlp_uses_every_field_in_both_streams_and_any_field_as_gate_context():
    model = attached(FinalMLP(SPEC, embedding_dim=2, mlp1_units=[6], mlp2_units=[4], fs_hidden_units=[5], num_heads=2,
                              fs1_context=["brand", "age", "hour"], fs2_context=["genres", "price", "text"]))
    tables = side_tables(SPEC)
    batch = side_batch(SPEC, seed=5)
    e = model.field_embeddings(batch)
    history = behaviour(model, batch.hist_item, batch.hist_category, tables) * batch.history_mask().unsqueeze(-1)
    expected = torch.cat([model.user.weight[batch.user], behaviour(model, batch.target_item, batch.target_category,
                                                                    tables),
                          history.sum(1) / batch.lengths.clamp_min(1).unsqueeze(1)] + profile_and_context(model, batch),
                         dim=-1)
    torch.testing.assert_close(e, expected)
    assert e.shape[1] == 2 * (1 + 2 * (2 + 6) + 5) and model.mlp1.net[0].in_features == e.shape[1]
    g1 = model.gate1.tables                                               # gate-specific tables
    context = torch.cat([g1.table("brand").weight[tables["brand"][batch.target_item]],
                         g1.table("age").weight[batch.profile["age"]], g1.table("hour").weight[batch.context["hour"]]],
                        dim=-1)
    torch.testing.assert_close(model.gate1(batch, model.item_side), 2 * torch.sigmoid(model.gate1.mlp(context)))
    assert g1.table("brand") is not model.embedding.table("brand")
    assert model.gate2(batch, model.item_side).shape == e.shape
    with pytest.raises(ConfigError, match="per-behaviour"):
        FinalMLP(SPEC, fs1_context=["behavior"])
    with pytest.raises(ConfigError, match="colour"):
        FinalMLP(SPEC, fs2_context=["colour"])


def test_dare_puts_item_side_fields_in_both_decoupled_embeddings():
    spec = FeatureSpec([f for f in SPEC.fields if f.owner not in ("user", "context") or f.name == "user"], 6)
    model = DARE(spec, item_dim=4, category_dim=4, position_dim=4, attention_item_dim=2, attention_category_dim=2,
                 attention_position_dim=2, field_dim=3, attention_field_dim=1, top_k=3, mlp_units=[8],
                 aux_mlp_units=[4])
    model.attach_side_tables(side_tables(spec))
    rep, att = model.embeddings["representation"], model.embeddings["attention"]
    # also_viewed names the item table, so it has the item width (4 / 2), the other 5 fields 3 / 1
    assert rep.dim == 4 + 4 + (5 * 3 + 4) + 4 and att.dim == 2 + 2 + (5 * 1 + 2) + 2
    assert rep.table("brand") is not att.table("brand")
    assert rep.position_dim == 4 and att.semantic_dim == 11
    batch = random_batch(seed=6, features=spec)
    out = model.train()(batch)
    assert out.logit.shape == (8,) and "aux" in out.aux_losses
    model.eval()
    torch.testing.assert_close(model(batch.to_jagged()).logit, model(batch).logit)
    with pytest.raises(ConfigError, match="item side fields only"):
        DARE(SPEC)


@pytest.mark.parametrize("variant", ["twin", "projection", "din_topk"])
def test_dare_baselines_run_with_item_side_fields(variant):
    spec = FeatureSpec([f for f in SPEC.fields if f.owner not in ("user", "context") or f.name == "user"], 6)
    kw = dict(attention_item_dim=2) if variant == "projection" else {}
    model = DARE(spec, variant=variant, item_dim=4, category_dim=4, position_dim=4, top_k=3, mlp_units=[8],
                 aux_mlp_units=[4], **kw)
    model.attach_side_tables(side_tables(spec))
    batch = random_batch(seed=7, features=spec)
    assert torch.isfinite(model.eval()(batch).logit).all()


def test_core_only_spec_builds_exactly_the_first_phase_parameters():
    expected = {
        DIN: {"embedding.item.weight", "embedding.category.weight", "embedding.item_frequency",
              "embedding.category_frequency"},
        FinalMLP: {"user.weight", "embedding.item.weight", "embedding.category.weight"},
    }
    for cls, keys in expected.items():
        state = cls(FEATURES).state_dict()
        assert keys <= set(state)
        assert not any(k.startswith(("item_side.", "fields.")) or ".tables." in k or "numbers" in k for k in state)
    dare = DARE(FEATURES, top_k=3).state_dict()
    assert {k for k in dare if k.startswith("embeddings.representation.")} == {
        "embeddings.representation.item.weight", "embeddings.representation.category.weight",
        "embeddings.representation.position.weight"}
    # FinalMLP's field width is 5·D, as the first phase hard-coded it
    assert FinalMLP(FEATURES, embedding_dim=10).mlp1.net[0].in_features == 50


# ----------------------------------------------------------------- training behaviour
def _models():
    return {
        "DIN": lambda: din(attention_activation="dice"),
        "EmbeddingMLP": lambda: EmbeddingMLP(SPEC, item_dim=4, category_dim=3, mlp_units=[8], field_dim=2),
        "FinalMLP": lambda: FinalMLP(SPEC, embedding_dim=2, mlp1_units=[6], mlp2_units=[4], fs_hidden_units=[5],
                                     num_heads=2, fs1_context=["brand", "age"], fs2_context=["text", "discount"]),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_gradients_reach_every_trainable_parameter_and_never_the_frozen_content_vectors(name):
    model = attached(_models()[name]()).train()
    frozen_before = model.item_side.text.clone()
    batch = side_batch(SPEC, seed=8)
    batch.hist_item[2, 0] = 5                                           # item 5 has a NaN price
    assert batch.lengths[2] > 0
    assert bool(batch.profile["income"].isnan().any())                  # the missing vectors get gradients too
    batch.context["discount"][0] = float("nan")
    out = model(batch)
    (torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label) + model.regularization(batch)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert no_grad == []
    assert "item_side.text" not in dict(model.named_parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    optimizer.step()
    assert torch.equal(model.item_side.text, frozen_before)


def test_a_tiny_din_with_side_fields_overfits_a_small_set():
    torch.manual_seed(0)
    model = attached(din(mlp_units=[16], attention_units=[8]))
    batch = side_batch(SPEC, batch=16, seed=9)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(150):
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch).logit, batch.label)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    assert bool(((model.eval()(batch).logit > 0).float() == batch.label).all())


@pytest.mark.parametrize("name", list(_models()) + ["DARE"])
def test_padding_values_and_the_jagged_form_do_not_change_outputs_with_side_fields(name):
    if name == "DARE":
        spec = FeatureSpec([f for f in SPEC.fields if f.owner not in ("user", "context") or f.name == "user"], 6)
        model = DARE(spec, item_dim=4, category_dim=4, position_dim=4, top_k=3, mlp_units=[8], aux_mlp_units=[4])
        model.attach_side_tables(side_tables(spec))
        batch = random_batch(seed=10, features=spec)
    else:
        model = attached(_models()[name]())
        batch = side_batch(SPEC, seed=10)
    model.eval()
    reference = model(batch).logit
    torch.testing.assert_close(model(with_garbage_padding(batch, item=11, category=4)).logit, reference)
    torch.testing.assert_close(model(batch.to_jagged()).logit, reference, atol=1e-6, rtol=1e-5)
    assert not math.isnan(float(reference.detach().sum()))


# ----------------------------------------------------------------- scoring M candidates per user
@pytest.mark.parametrize("max_rows", [1, 7, 10_000])
def test_score_candidates_equals_forward_on_each_user_candidate_row(max_rows):
    model = attached(din()).eval()
    batch = side_batch(SPEC)
    g = torch.Generator().manual_seed(3)
    candidates = {"item": torch.randint(2, SPEC.num_items, (batch.size, 5), generator=g),
                  "category": torch.randint(2, SPEC.num_categories, (batch.size, 5), generator=g)}
    with torch.no_grad():
        scores = model.score_candidates(batch, candidates, max_rows=max_rows)
        for m in range(5):
            one = batch.replace(target={"item": candidates["item"][:, m], "category": candidates["category"][:, m]})
            torch.testing.assert_close(scores[:, m], model(one).logit)
        assert model.score_candidates(batch, {k: v[:, :0] for k, v in candidates.items()}).shape == (batch.size, 0)
    with pytest.raises(ValueError, match="target fields"):
        model.score_candidates(batch, {"item": candidates["item"]})
