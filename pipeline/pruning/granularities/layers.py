"""Whole decoder layers (ShortGPT): drop the layers that turn the residual stream least.

Score: block influence `1 - cos(x_in, x_out)` or angular distance, per layer, from calibration.
The allocator tries several candidate layers per step (the lowest-scoring few), not only the
lowest, and measures each. Removal renumbers the survivors' KV-cache slots.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.architecture import decoder_layers, set_decoder_layers
from pipeline.pruning.granularity import Granularity, register
from pipeline.pruning.structure import Arch, Counts, Structure


class Layers(Granularity):
    name = "layers"
    order = 0

    def dense(self, arch: Arch) -> list[int]:
        return list(range(arch.layers))

    def count(self, s: Structure) -> int:
        return len(s["layers"])

    def scores(self, imp, metric: str = "block_influence") -> torch.Tensor:
        return getattr(imp, metric)

    def select(self, s: Structure, parent: Structure, count: int, imp, arch: Arch,
               metric: str = "block_influence") -> Structure:
        score = self.scores(imp, metric)
        keep = sorted(sorted(s["layers"], key=lambda l: -float(score[l]))[:count])
        return s.replace("layers", keep)

    def moves(self, s: Structure, parent: Structure, imp, arch: Arch, opts) -> list[tuple[str, Structure]]:
        if len(s["layers"]) <= 1:
            return []
        score = self.scores(imp, opts.layer_metric)
        candidates = sorted(s["layers"], key=lambda l: float(score[l]))[: opts.layer_candidates]
        return [(f"drop layer {l}", s.replace("layers", [k for k in s["layers"] if k != l])) for l in candidates]

    def remove(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> None:
        keep = set(target["layers"])
        drop = [i for i, l in enumerate(current["layers"]) if l not in keep]
        if drop:
            drop_layers(model, drop)

    def emulate(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> list:
        keep = set(target["layers"])
        return [layer.register_forward_hook(_identity, with_kwargs=True)
                for layer, l in zip(decoder_layers(model), current["layers"]) if l not in keep]

    def params(self, counts: Counts, arch: Arch) -> int:
        return counts["layers"] * 2 * counts.get("hidden", arch.hidden)  # the two norms of every layer


def _identity(_module, args, kwargs, _out):
    return args[0] if args else kwargs["hidden_states"]


def drop_layers(model: nn.Module, drop: list[int]) -> None:
    """Remove decoder layers by current position."""
    gone = set(drop)
    keep = [layer for i, layer in enumerate(decoder_layers(model)) if i not in gone]
    if not keep:
        raise ValueError("cannot drop every layer")
    set_decoder_layers(model, keep)
    for i, layer in enumerate(keep):
        layer.self_attn.layer_idx = i  # the KV cache is indexed by position in the stack
    cfg = model.config
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in gone]
    cfg.num_hidden_layers = len(keep)


register(Layers())
