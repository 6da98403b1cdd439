"""Analytic cost of a decoder-only model (llama, qwen2, mistral): parameters, non-zeros, FLOPs per token.

FLOPs/token counts a multiply-add as 2 FLOPs, for one new token attending to a
context of `context` tokens:
  per layer  2 * (q + k + v + o + gate + up + down weights)      (projections)
           + 2 * 2 * n_heads * head_dim * context                  (QK^T and AV)
  head     2 * vocab * hidden                                      (lm_head)
Embedding lookups, norms, biases, rotary and softmax are ignored (O(hidden), not O(hidden^2)).
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


def query_flops(config: dict, prompt_tokens: int, scored_tokens: int) -> dict:
    """FLOPs of answering one multiple-choice query, from a rung's `config.json` alone.

    What is counted (a multiply-add = 2 FLOPs), for a prompt of `prompt_tokens` followed by
    `scored_tokens` answer tokens (the choices' continuations, scored by log-likelihood):
    - every position (prompt + scored) runs every decoder layer: the q, k, v, o, gate, up and
      down projections at their pruned shapes (`num_key_value_heads`, `head_dim`,
      `intermediate_size`, `num_hidden_layers` of this rung);
    - causal attention: position i (0-based) attends to i + 1 keys, QK^T and AV each
      2 * n_heads * head_dim FLOPs per key, summed over all positions;
    - `lm_head` (vocab x hidden) runs only on the scored positions: prompt positions need no
      logits when choices are scored by log-likelihood (the evaluation skips them too).
    Not counted: embedding lookups, norms, rotary, softmax (O(hidden) per position). Zeros inside
    dense tensors (unstructured / N:M rungs) are counted: dense CPU kernels execute them.
    Deterministic: no timing, only shapes."""
    L = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    inter = int(config["intermediate_size"])
    vocab = int(config["vocab_size"])
    n = int(prompt_tokens) + int(scored_tokens)
    proj_per_token = 2 * (hidden * head_dim * (2 * n_heads + 2 * n_kv) + 3 * hidden * inter)
    projections = L * n * proj_per_token
    attention = L * 4 * n_heads * head_dim * (n * (n + 1) // 2)
    head = 2 * vocab * hidden * int(scored_tokens)
    return {"total": projections + attention + head, "projections": projections, "attention": attention,
            "lm_head": head, "prompt_tokens": int(prompt_tokens), "scored_tokens": int(scored_tokens)}
