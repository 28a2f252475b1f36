"""Tabular MLP: standardised numeric inputs plus one embedding per categorical column.

Built from `model` in the config and the dimensions of the fitted preprocessing, so a
checkpoint (which holds both) rebuilds exactly the network it was trained with.
"""

from __future__ import annotations

import torch
from torch import nn

from app.config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def embedding_width(cardinality: int, configured: int | None) -> int:
    # fastai's rule of thumb: grows slowly with the number of categories, capped small.
    return configured or min(16, max(2, round(1.6 * cardinality**0.56)))


class TabularMLP(nn.Module):
    def __init__(self, numeric_width: int, cardinalities: list[int], output_dim: int, cfg: ModelConfig):
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_width(card, cfg.embedding_dim)) for card in cardinalities
        )
        width = numeric_width + sum(e.embedding_dim for e in self.embeddings)
        layers: list[nn.Module] = []
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[cfg.activation]()]
            if cfg.dropout:
                layers.append(nn.Dropout(cfg.dropout))
            width = hidden
        layers.append(nn.Linear(width, output_dim))
        self.mlp = nn.Sequential(*layers)
        self.output_dim = output_dim

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        out = self.mlp(torch.cat(parts, dim=1) if len(parts) > 1 else x_num)
        return out.squeeze(1) if self.output_dim == 1 else out


def build_model(cfg: ModelConfig, numeric_width: int, cardinalities: list[int], output_dim: int) -> TabularMLP:
    return TabularMLP(numeric_width, cardinalities, output_dim, cfg)
