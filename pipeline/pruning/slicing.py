"""Tensor surgery: shrink linears, embeddings and norms in place, keeping dtype and device.

The granularities (`pipeline/pruning/granularities/`) decide *what* to keep; these helpers do
the cutting. Counts stay uniform across layers (an HF config has one `num_attention_heads`,
one `intermediate_size`, one `hidden_size`), but which units survive is chosen per layer.
"""

from __future__ import annotations

import torch
from torch import nn


def take_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping `index` along the weight's `dim` (0 = outputs, 1 = inputs)."""
    index = index.to(linear.weight.device)
    w = linear.weight.data.index_select(dim, index).clone()
    has_bias = linear.bias is not None
    new = nn.Linear(w.shape[1], w.shape[0], bias=has_bias, dtype=w.dtype, device=w.device)
    new.weight.data = w
    if has_bias:
        new.bias.data = linear.bias.data.index_select(0, index).clone() if dim == 0 else linear.bias.data.clone()
    return new


def set_linear(parent: nn.Module, name: str, new: nn.Linear) -> None:
    """Replace `parent.<name>` (a dotted path like 'self_attn.o_proj') by `new`."""
    owner, _, attr = name.rpartition(".")
    setattr(parent.get_submodule(owner) if owner else parent, attr, new)


def with_bias(linear: nn.Linear) -> nn.Linear:
    """The same Linear with a (zero) bias, for configs that switch biases on for a whole family."""
    if linear.bias is not None:
        return linear
    w = linear.weight.data
    new = nn.Linear(w.shape[1], w.shape[0], bias=True, dtype=w.dtype, device=w.device)
    new.weight.data = w
    new.bias.data.zero_()
    return new


def rows_of_heads(heads: list[int], head_dim: int) -> torch.Tensor:
    """Row (or column) indices of whole heads in a [heads * head_dim] projection."""
    return torch.tensor([h * head_dim + d for h in heads for d in range(head_dim)], dtype=torch.long)


def slice_norm(norm: nn.Module, index: torch.Tensor, scale: float = 1.0) -> None:
    """Keep `index` channels of an RMSNorm weight, optionally rescaled (see hidden pruning)."""
    w = norm.weight.data.index_select(0, index.to(norm.weight.device)).clone() * scale
    norm.weight = nn.Parameter(w, requires_grad=norm.weight.requires_grad)
    if hasattr(norm, "hidden_size"):
        norm.hidden_size = len(index)


def slice_embedding(emb: nn.Embedding, index: torch.Tensor) -> None:
    """Keep `index` columns (hidden channels) of an embedding table, in place."""
    w = emb.weight.data.index_select(1, index.to(emb.weight.device)).clone()
    emb.weight = nn.Parameter(w, requires_grad=emb.weight.requires_grad)
    emb.embedding_dim = w.shape[1]
