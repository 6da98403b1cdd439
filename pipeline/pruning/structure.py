"""What a rung keeps of the base model: its shape, and the surviving units by base index.

`Arch` is the base model's shape, read from its config. A `Structure` names, per granularity,
the units a rung keeps, by their index in the *base* model (so a child's units can be checked
against its parent's). `Counts` is the uniform shape a Hugging Face config can express: one
number per granularity (layers kept, KV heads per layer, query heads per KV head, MLP width,
hidden size). What each granularity's units look like is up to the granularity
(`pipeline/pruning/granularity.py`); this module only holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from pipeline.models.architecture import free_heads


@dataclass(frozen=True)
class Arch:
    """The base model's shape (what every rung is cut from)."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    tied: bool
    qkv_bias: bool  # biases on q/k/v (Qwen2 always; Llama with attention_bias)
    o_bias: bool  # bias on o_proj (Llama with attention_bias)
    mlp_bias: bool
    # Whether a rung may keep any number of query heads (else hidden % heads == 0 must hold); see
    # pipeline/models/architecture.py: Llama rungs breaking the rule are stored as Mistral.
    free_heads: bool = True

    @property
    def group(self) -> int:
        """Query heads per KV head in the base model."""
        return self.heads // self.kv_heads

    @classmethod
    def from_config(cls, c, bias_compensation: bool = False) -> "Arch":
        """The base's shape; `bias_compensation`: the ladder refits o_proj / down_proj biases."""
        get = c.get if isinstance(c, dict) else lambda k, d=None: getattr(c, k, d)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        model_type = get("model_type") or "llama"
        attention_bias = bool(get("attention_bias", False))
        return cls(
            model_type=model_type, layers=get("num_hidden_layers"), hidden=hidden, heads=heads,
            kv_heads=get("num_key_value_heads") or heads, head_dim=get("head_dim") or hidden // heads,
            mlp=get("intermediate_size"), vocab=get("vocab_size"),
            tied=bool(get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias, o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(get("mlp_bias", False)), free_heads=free_heads(c, bias_compensation),
        )


class Counts(Mapping[str, int]):
    """Granularity name -> uniform count, e.g. {'layers': 29, 'kv_heads': 2, 'q_heads': 3, ...}.

    `q_heads` counts query heads per KV head; the others count units per layer (or in all)."""

    def __init__(self, values: Mapping[str, int]):
        self._v = {k: int(v) for k, v in values.items()}

    def __getitem__(self, k: str) -> int:
        return self._v[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._v)

    def __len__(self) -> int:
        return len(self._v)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._v.items())))

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return "Counts(" + ", ".join(f"{k}={v}" for k, v in self._v.items()) + ")"

    def replace(self, **changes: int) -> "Counts":
        return Counts({**self._v, **changes})

    def to_json(self) -> dict[str, int]:
        return dict(self._v)


@dataclass(frozen=True)
class Structure:
    """Per granularity name, the units kept (in base indices), in the granularity's own form."""

    units: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.units[name]

    def replace(self, name: str, units: Any) -> "Structure":
        return Structure({**self.units, name: units})

    def counts(self) -> Counts:
        from pipeline.pruning.granularity import registry

        return Counts({g.name: g.count(self) for g in registry() if g.name in self.units})

    @property
    def layers(self) -> list[int]:
        return self.units["layers"]

    @classmethod
    def dense(cls, arch: Arch) -> "Structure":
        from pipeline.pruning.granularity import registry

        return cls({g.name: g.dense(arch) for g in registry()})

    def to_json(self) -> dict:
        from pipeline.pruning.granularity import get

        return {name: get(name).units_to_json(u) for name, u in self.units.items()}

    @classmethod
    def from_json(cls, d: dict, arch: Arch) -> "Structure":
        """Read a structure; granularities the file does not mention are dense (older reports)."""
        from pipeline.pruning.granularity import get, registry

        units = {g.name: g.dense(arch) for g in registry()}
        units.update({name: get(name).units_from_json(u) for name, u in d.items()})
        return cls(units)
