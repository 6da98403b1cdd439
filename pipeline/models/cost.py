"""Analytic cost of a llama model: parameters, non-zeros, FLOPs per token.

FLOPs/token counts a multiply-add as 2 FLOPs, for one new token attending to a
context of `context` tokens:
  per layer  2 * (q + k + v + o + gate + up + down weights)      (projections)
           + 2 * 2 * n_heads * head_dim * context                  (QK^T and AV)
  head     2 * vocab * hidden                                      (lm_head)
Embedding lookups, norms, rotary and softmax are ignored (O(hidden), not O(hidden^2)).
The same count from shapes alone, split by the granularity that owns each weight, is
`pipeline.pruning.granularity.total_flops` (the allocator plans with it; a test checks they agree).

`flops_per_token` is what a dense kernel executes: zeros inside a weight cost
the same as non-zeros on CPU. `nonzero_flops_per_token` counts only non-zero
weights: the figure sparse kernels (e.g. 2:4 sparse tensor cores) could reach.
"""

from __future__ import annotations

from torch import nn

from pipeline.models.architecture import decoder_layers, head_dim

DEFAULT_CONTEXT = 256


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for layer in decoder_layers(model) for m in layer.modules() if isinstance(m, nn.Linear)]


def model_cost(model: nn.Module, context: int = DEFAULT_CONTEXT) -> dict:
    cfg = model.config
    layers = decoder_layers(model)
    lin = _linears(model)
    proj_dense = sum(m.weight.numel() for m in lin)
    proj_nnz = sum(int(m.weight.count_nonzero()) for m in lin)
    head = model.get_output_embeddings().weight
    attn_scores = 2 * 2 * cfg.num_attention_heads * head_dim(cfg) * context * len(layers)
    unique = {id(p): p for p in model.parameters()}  # tied embeddings count once
    return {
        "params": sum(p.numel() for p in unique.values()),
        "nonzero_params": sum(int(p.count_nonzero()) for p in unique.values()),
        "flops_per_token": 2 * proj_dense + attn_scores + 2 * head.numel(),
        "nonzero_flops_per_token": 2 * proj_nnz + attn_scores + 2 * int(head.count_nonzero()),
        "context_for_flops": context,
    }


def module_sparsity(model: nn.Module) -> dict[str, float]:
    """Share of exact zeros in every weight matrix, embeddings and lm_head included."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            out[name] = round(1.0 - int(m.weight.count_nonzero()) / m.weight.numel(), 6)
    return out
