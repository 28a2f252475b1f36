import torch

from app.config import ModelConfig
from app.model import build_model, embedding_width


def test_output_shapes_for_each_task():
    cfg = ModelConfig(hidden=[16, 8], dropout=0.0)
    x_num, x_cat = torch.randn(5, 4), torch.randint(0, 3, (5, 2))
    assert build_model(cfg, 4, [3, 3], 3)(x_num, x_cat).shape == (5, 3)
    assert build_model(cfg, 4, [3, 3], 1)(x_num, x_cat).shape == (5,)
    only_numeric = build_model(cfg, 4, [], 2)
    assert only_numeric(x_num, torch.empty(5, 0, dtype=torch.int64)).shape == (5, 2)
    only_categorical = build_model(cfg, 0, [3, 3], 2)
    assert only_categorical(torch.empty(5, 0), x_cat).shape == (5, 2)


def test_embedding_widths():
    assert embedding_width(3, None) == 3
    assert embedding_width(10_000, None) == 16
    assert embedding_width(10_000, 4) == 4
    model = build_model(ModelConfig(embedding_dim=5), 2, [4, 7], 2)
    assert [e.embedding_dim for e in model.embeddings] == [5, 5]
    assert [e.num_embeddings for e in model.embeddings] == [4, 7]


def test_gradients_reach_every_parameter():
    model = build_model(ModelConfig(hidden=[8]), 3, [4], 2)
    out = model(torch.randn(6, 3), torch.randint(0, 4, (6, 1)))
    torch.nn.functional.cross_entropy(out, torch.randint(0, 2, (6,))).backward()
    assert all(p.grad is not None for p in model.parameters())
