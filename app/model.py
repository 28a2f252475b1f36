"""The model kinds, built from `model` in the config and the fitted preprocessing.

A checkpoint holds both, so it rebuilds exactly the network it was trained with.

- `tabm` (default): TabM from the `tabm` package, an ensemble of k MLPs trained at once
  with shared weights, numeric inputs through the piecewise-linear embeddings of
  `rtdl_num_embeddings` (bins fitted in preprocessing), categorical inputs one-hot.
- `mlp`: one MLP with a learned embedding per categorical column.

Every kind maps (x_num, x_cat) to one output per row: class logits [n, classes] or the
standardised prediction [n]. An ensemble in training mode returns every member's output
instead ([n, k, classes] or [n, k]), so that each member gets its own loss; in eval mode it
returns the ensemble's prediction (for classes, the log of the members' mean probability,
so a softmax gives that mean).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from app.config import ModelConfig
from app.data.transform import PreprocessState

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


def embedding_width(cardinality: int, configured: int | None) -> int:
    # fastai's rule of thumb: grows slowly with the number of categories, capped small.
    return configured or min(16, max(2, round(1.6 * cardinality**0.56)))


class TabularMLP(nn.Module):
    members = None  # one network: its training output has no member dimension

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


class TabMEnsemble(nn.Module):
    """TabM: the `tabm` package's ensemble backbone over embedded inputs.

    Numeric inputs go through piecewise-linear embeddings (or as they are); categorical
    columns with at most `one_hot_max` categories are one-hot, as in TabM's own model;
    larger ones get a learned embedding of width `d_embedding` instead, since the shared
    first layer costs k x input width per row and a 4,000-category one-hot would
    multiply the cost of the whole network. Training mode returns every member's output,
    eval mode the ensemble's."""

    def __init__(self, state: PreprocessState, cfg: ModelConfig):
        import tabm
        from rtdl_num_embeddings import PiecewiseLinearEmbeddings

        super().__init__()
        n_num, cards = state.numeric_width, state.cardinalities
        self.num_embeddings = None
        if n_num and cfg.num_embeddings == "piecewise_linear":
            if len(state.bins) != n_num:
                raise ValueError("the preprocessing state has no embedding bins for tabm (fitted before they existed)")
            with warnings.catch_warnings():  # a 0/1 column has one bin: fine, but the package warns
                warnings.filterwarnings("ignore", message=".*just two bin edges")
                self.num_embeddings = PiecewiseLinearEmbeddings(
                    [torch.tensor(b, dtype=torch.float32) for b in state.bins], cfg.d_embedding,
                    activation=False, version="B")
        d_features = [cfg.d_embedding if self.num_embeddings is not None else 1] * n_num
        self.one_hot_columns = [i for i, c in enumerate(cards) if c <= cfg.one_hot_max]
        self.embedded_columns = [i for i, c in enumerate(cards) if c > cfg.one_hot_max]
        # One-hot as a lookup in an identity matrix: a gather, which every exporter handles.
        for i in self.one_hot_columns:
            self.register_buffer(f"one_hot_{i}", torch.eye(cards[i]), persistent=False)
        self.cat_embeddings = nn.ModuleList(nn.Embedding(cards[i], cfg.d_embedding) for i in self.embedded_columns)
        d_features += [cards[i] for i in self.one_hot_columns] + [cfg.d_embedding] * len(self.embedded_columns)
        self.ensemble_view = tabm.EnsembleView(k=cfg.k)
        self.backbone = tabm.make_tabm_backbone(
            d_in=sum(d_features), n_blocks=cfg.n_blocks, d_block=cfg.d_block, dropout=cfg.dropout, k=cfg.k,
            arch_type=cfg.arch, start_scaling_init="normal" if self.num_embeddings is not None else "random-signs",
            start_scaling_init_chunks=d_features)
        self.output = tabm.LinearEnsemble(cfg.d_block, state.output_dim, k=cfg.k)
        self.members = cfg.k
        self.classification = state.task == "classification"

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = []
        if x_num.shape[1]:
            parts.append(x_num if self.num_embeddings is None else self.num_embeddings(x_num).flatten(1))
        parts += [getattr(self, f"one_hot_{i}")[x_cat[:, i]] for i in self.one_hot_columns]
        parts += [emb(x_cat[:, i]) for emb, i in zip(self.cat_embeddings, self.embedded_columns)]
        x = self.ensemble_view(torch.cat(parts, dim=1))
        out = self.output(self.backbone(x))  # [n, k, d_out]
        if not self.classification:
            out = out.squeeze(-1)  # [n, k]
        if self.training:
            return out
        if self.classification:
            return torch.logsumexp(torch.log_softmax(out, dim=-1), dim=1) - math.log(self.members)
        return out.mean(dim=1)


def build_model(cfg: ModelConfig, state: PreprocessState) -> nn.Module:
    if cfg.kind == "tabm":
        return TabMEnsemble(state, cfg)
    return TabularMLP(state.numeric_width, state.cardinalities, state.output_dim, cfg)


def member_loss(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor, members: int | None) -> torch.Tensor:
    """The mean over members of each member's loss; `out` is [n, members, ...] for an
    ensemble (`members` set), [n, ...] otherwise."""
    if members is None:
        return loss_fn(out, y)
    return loss_fn(out.flatten(0, 1), y.repeat_interleave(members))
