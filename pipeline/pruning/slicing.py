"""Physically remove whole layers, attention heads and MLP channels from a llama model.

Each function shrinks the tensors in place and updates `model.config` so that
`save_pretrained` + `AutoModelForCausalLM.from_pretrained` gives the same model.
Counts stay uniform across layers (the HF config has one `num_attention_heads`,
one `num_key_value_heads`, one `intermediate_size`); which units survive is
chosen per layer. `head_dim` is written explicitly because it no longer equals
`hidden_size / num_attention_heads` once heads are gone.

Grouped-query attention: query head `q` reads KV head `q // (H / KV)`. We keep
whole KV groups and the same number of query heads inside every kept group,
ordered group by group, so that mapping still holds after pruning.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.pruning.importance import decoder_layers


def _take(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping `index` along the weight's `dim` (0 = outputs, 1 = inputs)."""
    w = linear.weight.data.index_select(dim, index).clone()
    bias = linear.bias is not None
    b = (linear.bias.data.index_select(0, index).clone() if dim == 0 else linear.bias.data.clone()) if bias else None
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias, dtype=w.dtype, device=w.device)
    new.weight.data = w
    if bias:
        new.bias.data = b
    return new


def drop_layers(model: nn.Module, drop: list[int]) -> None:
    """Remove decoder layers by current index."""
    layers = decoder_layers(model)
    keep = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    if not keep:
        raise ValueError("cannot drop every layer")
    model.model.layers = nn.ModuleList(keep)
    for i, layer in enumerate(keep):
        layer.self_attn.layer_idx = i  # the KV cache is indexed by position in the stack
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in set(drop)]
    cfg.num_hidden_layers = len(keep)


def prune_heads(model: nn.Module, keep_q: list[list[int]], keep_kv: list[list[int]]) -> None:
    """Keep, per layer, the query heads `keep_q[l]` and KV heads `keep_kv[l]` (current indices).

    Every layer must keep the same numbers, and each kept query head's KV head
    must be kept, with the same number of query heads in every kept group.
    """
    cfg = model.config
    hd, H, KV = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    group = H // KV
    n_q, n_kv = len(keep_q[0]), len(keep_kv[0])
    if n_kv == 0 or n_q % n_kv:
        raise ValueError(f"kept query heads ({n_q}) must be a positive multiple of kept KV heads ({n_kv})")
    for l, (q, kv) in enumerate(zip(keep_q, keep_kv)):
        if len(q) != n_q or len(kv) != n_kv:
            raise ValueError(f"layer {l}: head counts must be uniform across layers")
        per_group = {g: [h for h in q if h // group == g] for g in kv}
        if sorted(h // group for h in q) != sorted(g for g in kv for _ in range(n_q // n_kv)) or any(
            len(v) != n_q // n_kv for v in per_group.values()
        ):
            raise ValueError(f"layer {l}: query heads {q} do not split evenly over kept KV heads {kv}")
    for layer, q, kv in zip(decoder_layers(model), keep_q, keep_kv):
        attn = layer.self_attn
        # Order query heads group by group so q // (n_q / n_kv) still finds its KV head.
        q_sorted = [h for g in sorted(kv) for h in sorted(q) if h // group == g]
        q_rows = torch.tensor([h * hd + d for h in q_sorted for d in range(hd)])
        kv_rows = torch.tensor([g * hd + d for g in sorted(kv) for d in range(hd)])
        attn.q_proj = _take(attn.q_proj, q_rows, 0)
        attn.k_proj = _take(attn.k_proj, kv_rows, 0)
        attn.v_proj = _take(attn.v_proj, kv_rows, 0)
        attn.o_proj = _take(attn.o_proj, q_rows, 1)
        attn.num_key_value_groups = n_q // n_kv
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = n_q, n_kv, hd


def prune_mlp(model: nn.Module, keep: list[list[int]]) -> None:
    """Keep, per layer, the MLP channels `keep[l]` (current indices; same count everywhere)."""
    n = len(keep[0])
    if n == 0 or any(len(k) != n for k in keep):
        raise ValueError("MLP channel counts must be positive and uniform across layers")
    for layer, k in zip(decoder_layers(model), keep):
        idx = torch.tensor(sorted(k))
        mlp = layer.mlp
        mlp.gate_proj = _take(mlp.gate_proj, idx, 0)
        mlp.up_proj = _take(mlp.up_proj, idx, 0)
        mlp.down_proj = _take(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = n
    model.config.intermediate_size = n
