"""A pruning granularity is one small object, the way llm-compressor expresses a modifier.

Each granularity (layers, hidden size, KV heads, query heads, MLP channels; see
`pipeline/pruning/granularities/`) says:

- **units**: what it keeps, in base indices (`dense`, `count`, JSON round trip);
- **score**: how important each unit is, from the calibration statistics (`scores`);
- **select**: which units a rung with `count` of them keeps, inside its parent's kept set, so
  rungs nest (`select`), and which one-step cuts the allocator may try (`moves`);
- **remove**: how to cut the model physically (`remove`), how to emulate that exactly with hooks
  or weight swaps while the allocator compares candidates (`emulate`), and, for granularities
  that remove the inputs of a *consumer* projection (`o_proj` for heads, `down_proj` for MLP
  channels), which inputs survive so least squares can refit the consumer (`kept_inputs`);
- **cost**: the FLOPs per token and parameters of the weights it owns (`flops`, `params`); the
  model's cost is the sum over granularities, so every weight is owned by exactly one.

The allocator, recipes, reports and compensation iterate over `registry()`. Adding a
granularity means one new module that subclasses `Granularity` and calls `register`, plus its
name in `ladder.allocator.granularities`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.pruning.structure import Arch, Counts, Structure


class Granularity:
    name: ClassVar[str]
    order: ClassVar[int]  # coarse to fine: removal and reporting order
    consumer: ClassVar[str | None] = None  # e.g. "mlp.down_proj": the projection whose inputs it removes

    # --- units ---------------------------------------------------------------
    def dense(self, arch: Arch) -> Any:
        raise NotImplementedError

    def count(self, s: Structure) -> int:
        raise NotImplementedError

    def units_to_json(self, units: Any) -> Any:
        return units

    def units_from_json(self, obj: Any) -> Any:
        return obj

    # --- score and select ----------------------------------------------------
    def scores(self, imp) -> torch.Tensor:
        """Importance of every base unit (higher = keep), from `pipeline.pruning.importance.Importance`."""
        raise NotImplementedError

    def select(self, s: Structure, parent: Structure, count: int, imp, arch: Arch) -> Structure:
        """`s` with this granularity cut to `count` units: the most important inside `parent`'s."""
        raise NotImplementedError

    def moves(self, s: Structure, parent: Structure, imp, arch: Arch, opts) -> list[tuple[str, Structure]]:
        """One-step cuts from `s` the allocator may try: (label, candidate structure)."""
        return []

    # --- remove --------------------------------------------------------------
    def remove(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> None:
        """Cut the model (shaped like `current`) down to `target` for this granularity, physically."""
        raise NotImplementedError

    def emulate(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> list:
        """Hooks (returned as handles) that make `model` (shaped like `current`) compute exactly what
        the physically cut model would, for this granularity. Consumer granularities need none:
        the allocator swaps in their refitted consumer weights instead."""
        return []

    def kept_inputs(self, layer: int, current: Structure, target: Structure, arch: Arch) -> torch.Tensor | None:
        """For a consumer granularity: positions (in `current`'s layout) of the consumer's inputs
        that survive in base layer `layer`; None when nothing changes there."""
        return None

    def slice_layer(self, layer_module: nn.Module, layer: int, current: Structure, target: Structure,
                    arch: Arch) -> None:
        """For a consumer granularity: physically cut one decoder layer (used by the sequential pass)."""
        raise NotImplementedError

    def update_config(self, config, counts: Counts, arch: Arch) -> None:
        """Write this granularity's count into the HF config after removal."""

    # --- cost ----------------------------------------------------------------
    def flops(self, counts: Counts, arch: Arch, context: int) -> int:
        """FLOPs per generated token (2 per multiply-add) of the weights this granularity owns."""
        return 0

    def params(self, counts: Counts, arch: Arch) -> int:
        return 0

    def loadable(self, counts: Counts, arch: Arch) -> bool:
        """Whether transformers accepts a config with these counts."""
        return True


_REGISTRY: dict[str, Granularity] = {}


def register(g: Granularity) -> Granularity:
    if g.name in _REGISTRY and type(_REGISTRY[g.name]) is not type(g):
        raise ValueError(f"granularity '{g.name}' is already registered by {type(_REGISTRY[g.name]).__name__}")
    _REGISTRY[g.name] = g
    return g


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_builtins() -> None:
    import pipeline.pruning.granularities  # noqa: F401  (each module registers itself)


def registry() -> list[Granularity]:
    """Every registered granularity, coarse to fine."""
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda g: (g.order, g.name))


def get(name: str) -> Granularity:
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"no granularity '{name}'; registered: {[g.name for g in registry()]}")
    return _REGISTRY[name]


def total_flops(counts: Counts, arch: Arch, context: int) -> int:
    return sum(g.flops(counts, arch, context) for g in registry())


def total_params(counts: Counts, arch: Arch) -> int:
    return sum(g.params(counts, arch) for g in registry())


def loadable(counts: Counts, arch: Arch) -> bool:
    return all(g.loadable(counts, arch) for g in registry())
