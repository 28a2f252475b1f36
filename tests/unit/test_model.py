import math

import numpy as np
import pytest
import torch

from app.config import ModelConfig
from app.data.preprocess import embedding_bins
from app.data.transform import CategoricalColumn, NumericColumn, PreprocessState
from app.model import build_model, embedding_width, member_loss

KINDS = [ModelConfig(kind="mlp", hidden=[16, 8], dropout=0.0), ModelConfig(kind="tabm", k=4, d_block=16, dropout=0.0)]


def make_state(numeric: int, categorical: list[int], classes: int) -> PreprocessState:
    """A fitted state with `numeric` input columns and bins fitted on random data."""
    state = PreprocessState(
        label="y", task="classification" if classes > 1 else "regression",
        numeric=[NumericColumn(f"n{i}", 0.0, 1.0, False) for i in range(numeric)],
        categorical=[CategoricalColumn(f"c{i}", [str(j) for j in range(card - 1)]) for i, card in enumerate(categorical)],
        classes=list(range(classes)) if classes > 1 else [])
    state.bins = embedding_bins(np.random.default_rng(0).normal(size=(200, numeric)), 8) if numeric else []
    return state


@pytest.mark.parametrize("cfg", KINDS, ids=lambda c: c.kind)
def test_output_shapes_for_each_task(cfg):
    x_num, x_cat = torch.randn(5, 4), torch.randint(0, 3, (5, 2))
    assert build_model(cfg, make_state(4, [3, 3], 3)).eval()(x_num, x_cat).shape == (5, 3)
    assert build_model(cfg, make_state(4, [3, 3], 1)).eval()(x_num, x_cat).shape == (5,)
    only_numeric = build_model(cfg, make_state(4, [], 2)).eval()
    assert only_numeric(x_num, torch.empty(5, 0, dtype=torch.int64)).shape == (5, 2)
    only_categorical = build_model(cfg, make_state(0, [3, 3], 2)).eval()
    assert only_categorical(torch.empty(5, 0), x_cat).shape == (5, 2)


def test_tabm_trains_each_member_and_predicts_their_mean_probability():
    cfg = KINDS[1]
    model = build_model(cfg, make_state(4, [3], 3))
    x_num, x_cat = torch.randn(6, 4), torch.randint(0, 3, (6, 1))
    members = model.train()(x_num, x_cat)
    assert members.shape == (6, cfg.k, 3)
    ensemble = model.eval()(x_num, x_cat)
    expected = torch.softmax(members, dim=-1).mean(dim=1)  # dropout is 0: train and eval outputs agree
    assert torch.allclose(torch.softmax(ensemble, dim=-1), expected, atol=1e-6)
    y = torch.randint(0, 3, (6,))
    per_member = [torch.nn.functional.cross_entropy(members[:, i], y) for i in range(cfg.k)]
    loss = member_loss(torch.nn.CrossEntropyLoss(), members, y, cfg.k)
    assert math.isclose(loss.item(), torch.stack(per_member).mean().item(), rel_tol=1e-6)


def test_tabm_regression_averages_members():
    cfg = KINDS[1]
    model = build_model(cfg, make_state(3, [], 1))
    x_num = torch.randn(5, 3)
    members = model.train()(x_num, torch.empty(5, 0, dtype=torch.int64))
    assert members.shape == (5, cfg.k)
    assert torch.allclose(model.eval()(x_num, torch.empty(5, 0, dtype=torch.int64)), members.mean(dim=1), atol=1e-6)


def test_a_one_member_tabm_still_trains():
    model = build_model(ModelConfig(kind="tabm", k=1, d_block=8), make_state(2, [3], 2)).train()
    out = model(torch.randn(4, 2), torch.randint(0, 3, (4, 1)))
    assert out.shape == (4, 1, 2)
    member_loss(torch.nn.CrossEntropyLoss(), out, torch.randint(0, 2, (4,)), model.members).backward()


def test_tabm_without_bins_is_refused():
    state = make_state(2, [], 2)
    state.bins = []
    with pytest.raises(ValueError, match="bins"):
        build_model(KINDS[1], state)
    assert build_model(ModelConfig(kind="tabm", num_embeddings="none", k=2), state) is not None


@pytest.mark.parametrize("cfg", [ModelConfig(kind="tabm", arch="tabm", k=3, d_block=8),
                                 ModelConfig(kind="tabm", num_embeddings="none", k=3, d_block=8),
                                 ModelConfig(kind="tabm", one_hot_max=4, k=3, d_block=8)],
                         ids=["arch-tabm", "no-embeddings", "embedded-categories"])
def test_tabm_variants_train_and_predict(cfg):
    state = make_state(3, [3, 50], 2)  # one small and one large categorical column
    model = build_model(cfg, state)
    if cfg.one_hot_max == 4:
        assert model.one_hot_columns == [0] and model.embedded_columns == [1]
        assert [e.num_embeddings for e in model.cat_embeddings] == [50]
    x_num, x_cat = torch.randn(6, 3), torch.stack([torch.randint(0, 3, (6,)), torch.randint(0, 50, (6,))], 1)
    out = model.train()(x_num, x_cat)
    assert out.shape == (6, 3, 2)
    member_loss(torch.nn.CrossEntropyLoss(), out, torch.randint(0, 2, (6,)), model.members).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert model.eval()(x_num, x_cat).shape == (6, 2)


def test_embedding_widths():
    assert embedding_width(3, None) == 3
    assert embedding_width(10_000, None) == 16
    assert embedding_width(10_000, 4) == 4
    model = build_model(ModelConfig(kind="mlp", embedding_dim=5), make_state(2, [4, 7], 2))
    assert [e.embedding_dim for e in model.embeddings] == [5, 5]
    assert [e.num_embeddings for e in model.embeddings] == [4, 7]


@pytest.mark.parametrize("cfg", KINDS, ids=lambda c: c.kind)
def test_gradients_reach_every_parameter(cfg):
    model = build_model(cfg, make_state(3, [4], 2)).train()
    out = model(torch.randn(6, 3), torch.randint(0, 4, (6, 1)))
    loss = member_loss(torch.nn.CrossEntropyLoss(), out, torch.randint(0, 2, (6,)), model.members)
    loss.backward()
    # TabM's piecewise-linear weights start at zero but still get a gradient
    assert all(p.grad is not None for p in model.parameters())
