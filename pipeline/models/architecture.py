"""Where the parts of a decoder-only LM live, found from the model rather than assumed.

Llama, Qwen2 and Mistral share one layout in transformers: `model.model.embed_tokens`,
`model.model.layers[i]` with `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`,
`input_layernorm` and `post_attention_layernorm`, a final `model.model.norm`, and `lm_head`.
They differ in biases (Qwen2: q/k/v; Llama: every attention projection when `attention_bias`,
every MLP projection when `mlp_bias`) and in what their configs validate (Llama insists that
`hidden_size` is a multiple of `num_attention_heads`). Everything here is read off the model's
own modules and config, so the pruning code never names an architecture class.
"""

from __future__ import annotations

from torch import nn

SUPPORTED = ("llama", "qwen2", "mistral")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEARS = tuple(f"self_attn.{n}" for n in ATTENTION) + tuple(f"mlp.{n}" for n in MLP)


class UnsupportedArchitecture(ValueError):
    """The model's layout is not one the pruning code knows how to cut."""


def check_supported(config) -> None:
    """Raise, naming what is supported, unless the config's model_type is a known layout."""
    model_type = getattr(config, "model_type", None) if not isinstance(config, dict) else config.get("model_type")
    if model_type not in SUPPORTED:
        raise UnsupportedArchitecture(
            f"model_type '{model_type}' is not supported; supported: {', '.join(SUPPORTED)} "
            "(decoder-only models with grouped-query attention and a gated MLP)"
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def decoder_layer_class(model: nn.Module) -> str:
    """The class name llm-compressor targets for one-shot sparsity (e.g. 'Qwen2DecoderLayer')."""
    return type(decoder_layers(model)[0]).__name__


def norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every RMSNorm over the residual stream, in forward order: (name, module)."""
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        out.append((f"layers.{i}.input_layernorm", layer.input_layernorm))
        out.append((f"layers.{i}.post_attention_layernorm", layer.post_attention_layernorm))
    out.append(("norm", model.model.norm))
    return out


def linear(layer: nn.Module, name: str) -> nn.Linear:
    return layer.get_submodule(name)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def heads_divide_hidden(config_or_type, hidden: int, n_heads: int) -> bool:
    """Whether transformers will load a config with these sizes.

    LlamaConfig validates `hidden_size % num_attention_heads == 0` even when `head_dim` is explicit;
    Qwen2 and Mistral do not. A rung that breaks the rule would save but never load, so the
    allocator and recipes only take moves that keep it."""
    model_type = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    return model_type != "llama" or hidden % n_heads == 0
