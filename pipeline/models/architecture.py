"""Where the parts of a decoder-only LM live, found from the model rather than assumed.

Llama, Qwen2 and Mistral share one layout in transformers: `model.model.embed_tokens`,
`model.model.layers[i]` with `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`,
`input_layernorm` and `post_attention_layernorm`, a final `model.model.norm`, and `lm_head`.
They differ in biases (Qwen2: q/k/v, hard-coded; Llama: every attention projection when
`attention_bias`, every MLP projection when `mlp_bias`; Mistral: none) and in what their configs
validate. Everything here is read off the model's own modules and config, so the pruning code
never names an architecture class.

**Head counts on real shapes.** transformers 5.17's `LlamaConfig` refuses
`hidden_size % num_attention_heads != 0` even when `head_dim` is explicit (`validate_architecture`,
run by `save_pretrained` and `from_pretrained`); `Qwen2Config` and `MistralConfig` check nothing of
the kind. Keeping the rule on Llama leaves almost no attention moves: on Llama-3-8B (hidden 4096,
32 query / 8 KV heads) the head counts it allows are 32, 16, 8, ... (powers of two), and from
8 x 4 neither dropping a KV group (7 x 4 = 28) nor a query head per group (8 x 3 = 24) is allowed,
so the greedy allocator could never touch attention (`tests/test_architectures.py` counts it).
So a Llama rung whose head count (or hidden size) breaks the rule is **written as Mistral**
(`storable_model`): with `sliding_window: null`, no biases and the same RoPE,
`MistralForCausalLM` computes exactly what `LlamaForCausalLM` computes (in 5.17 the two modeling
files differ only in the sliding-window mask and Llama's optional biases; RoPE, `llama3` scaling
included, comes from the shared `ROPE_INIT_FUNCTIONS` via `rope_parameters`), its config accepts
any head count with an explicit `head_dim`, and the checkpoint loads with plain
`AutoModelForCausalLM.from_pretrained`. The state-dict keys are the same, so the weights are not
copied and children cut from such a rung are slices of it as before. A test compares the logits of
the rewritten rung, reloaded in a fresh process, with the sliced Llama in memory. Qwen2 and Mistral
rungs keep their own class. The one exception is a Llama ladder whose compensation refits biases
(`ladder.compensation.bias`): those biases live in Llama's `attention_bias` / `mlp_bias`, which
Mistral cannot hold, so such a ladder keeps the Llama rule (`Arch.free_heads` is false).
"""

from __future__ import annotations

from torch import nn

SUPPORTED = ("llama", "qwen2", "mistral")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEARS = tuple(f"self_attn.{n}" for n in ATTENTION) + tuple(f"mlp.{n}" for n in MLP)

# Per architecture, the consumer projections that can hold a refitted bias: the config flag that
# switches it on, and every projection that flag gives a bias. Only Llama has such flags.
BIAS_FLAGS = {
    "llama": {"self_attn.o_proj": ("attention_bias", ("self_attn.q_proj", "self_attn.k_proj",
                                                      "self_attn.v_proj", "self_attn.o_proj")),
              "mlp.down_proj": ("mlp_bias", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))},
}

# LlamaConfig keys that MistralConfig does not have (both biases must be off to rewrite).
_LLAMA_ONLY = ("attention_bias", "mlp_bias", "pretraining_tp")


class UnsupportedArchitecture(ValueError):
    """The model's layout is not one the pruning code knows how to cut."""


def model_type_of(config) -> str | None:
    return config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)


def check_supported(config, where: str = "") -> None:
    """Raise, naming what is supported, unless the config's model_type is a known layout."""
    model_type = config if isinstance(config, str) or config is None else model_type_of(config)
    if model_type not in SUPPORTED:
        raise UnsupportedArchitecture(
            f"{where}{': ' if where else ''}model_type '{model_type}' is not supported; supported: "
            f"{', '.join(SUPPORTED)} (decoder-only models with grouped-query attention and a gated MLP)"
        )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def set_decoder_layers(model: nn.Module, layers: list[nn.Module]) -> None:
    model.model.layers = nn.ModuleList(layers)


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


def bias_flags(model_type: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Consumer projection -> (config flag, projections it gives a bias) for this architecture."""
    return BIAS_FLAGS.get(model_type, {})


def free_heads(config, bias_compensation: bool = False) -> bool:
    """Whether every rung of this base can be stored with any number of query heads.

    Qwen2 and Mistral: always. Llama: when it has no biases (and compensation adds none), since
    such a rung can be written as Mistral (see the module docstring)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    if model_type_of(config) != "llama":
        return True
    return not (bias_compensation or get("attention_bias", False) or get("mlp_bias", False))


def heads_storable(free: bool, hidden: int, n_heads: int) -> bool:
    """Whether a rung with `n_heads` query heads and this hidden size can be saved and reloaded."""
    return free or hidden % n_heads == 0


def llama_rule_broken(config) -> bool:
    return model_type_of(config) == "llama" and config.hidden_size % config.num_attention_heads != 0


def storable_model(model: nn.Module) -> tuple[nn.Module, dict | None]:
    """`model`, or the same weights as a MistralForCausalLM when it is a Llama whose config
    transformers would refuse to load; and what it was rewritten as, and why (None: unchanged).

    The new model is built on the meta device and takes over the old one's tensors (same state-dict
    keys), so nothing is copied; RoPE buffers (not in the state dict) are carried over."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    config = model.config
    if not llama_rule_broken(config):
        return model, None
    d = config.to_dict()
    if d.get("attention_bias") or d.get("mlp_bias"):
        raise UnsupportedArchitecture(
            f"a llama rung with {config.num_attention_heads} query heads and hidden_size {config.hidden_size} "
            "cannot be loaded as llama, and its biases (attention_bias / mlp_bias) cannot be stored as mistral; "
            "keep hidden_size a multiple of the head count (set ladder.compensation.bias=false to lift this)"
        )
    for k in ("model_type", "architectures", "transformers_version", *_LLAMA_ONLY):
        d.pop(k, None)
    new_config = MistralConfig.from_dict({**d, "sliding_window": None})
    with torch.device("meta"):
        new = MistralForCausalLM(new_config)
    state = model.state_dict(keep_vars=True)  # the Parameters themselves: nothing is copied
    new.load_state_dict(state, strict=True, assign=True)
    buffers = dict(model.named_buffers())
    for name, _ in list(new.named_buffers()):
        owner, _, attr = name.rpartition(".")
        setattr(new.get_submodule(owner), attr, buffers[name])
    if config.tie_word_embeddings:
        new.lm_head.weight = new.model.embed_tokens.weight
    new.generation_config = model.generation_config
    new.name_or_path = model.name_or_path
    new.train(model.training)
    why = (f"llama with {config.num_attention_heads} query heads and hidden_size {config.hidden_size}: "
           "LlamaConfig refuses hidden_size % num_attention_heads != 0; MistralForCausalLM with "
           "sliding_window null, the same weights and RoPE computes the same function")
    return new, {"model_type": "mistral", "from": "llama", "reason": why}
