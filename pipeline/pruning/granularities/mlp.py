"""MLP channels: the intermediate units of the gated MLP (gate/up rows, down_proj columns).

Score: channel j's RMS contribution to the residual stream, `sqrt(E[a_j^2]) * ||W_down[:, j]||`
(exact, from calibration). Removing channels cuts the inputs of `down_proj`, which least
squares then refits. The allocator cuts `mlp_step` of the base width per move, or just enough
to land on the budget when that is less.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.architecture import decoder_layers
from pipeline.pruning.granularity import Granularity, register
from pipeline.pruning.slicing import take_linear
from pipeline.pruning.structure import Arch, Counts, Structure


class MlpChannels(Granularity):
    name = "mlp"
    order = 40
    consumer = "mlp.down_proj"

    def dense(self, arch: Arch) -> dict[int, list[int]]:
        return {l: list(range(arch.mlp)) for l in range(arch.layers)}

    def count(self, s: Structure) -> int:
        return len(s["mlp"][s["layers"][0]])

    def units_to_json(self, units: dict) -> dict:
        return {str(l): v for l, v in units.items()}

    def units_from_json(self, obj: dict) -> dict:
        return {int(l): list(v) for l, v in obj.items()}

    def scores(self, imp) -> torch.Tensor:
        return imp.mlp_channel

    def select(self, s: Structure, parent: Structure, count: int, imp, arch: Arch) -> Structure:
        keep = {l: sorted(sorted(s["mlp"][l], key=lambda c: -float(imp.mlp_channel[l, c]))[:count])
                for l in s["layers"]}
        return s.replace("mlp", {**s["mlp"], **keep})

    def moves(self, s: Structure, parent: Structure, imp, arch: Arch, opts) -> list[tuple[str, Structure]]:
        n = self.count(s)
        cut = step_to_land(n, opts.step("mlp", arch.mlp), opts.multiple_of,
                           lambda k: opts.cost(s.counts().replace(mlp=k)), opts.limit)
        if cut is None:
            return []
        return [(f"MLP {n} -> {n - cut}", self.select(s, parent, n - cut, imp, arch))]

    def kept_inputs(self, layer: int, current: Structure, target: Structure, arch: Arch) -> torch.Tensor | None:
        cur, tgt = current["mlp"][layer], target["mlp"][layer]
        if cur == tgt:
            return None
        return torch.tensor([cur.index(c) for c in tgt], dtype=torch.long)

    def slice_layer(self, layer_module: nn.Module, layer: int, current: Structure, target: Structure,
                    arch: Arch) -> None:
        idx = self.kept_inputs(layer, current, target, arch)
        if idx is None:
            return
        mlp = layer_module.mlp
        mlp.gate_proj = take_linear(mlp.gate_proj, idx, 0)
        mlp.up_proj = take_linear(mlp.up_proj, idx, 0)
        mlp.down_proj = take_linear(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = len(idx)

    def remove(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> None:
        for layer_module, l in zip(decoder_layers(model), target["layers"]):
            self.slice_layer(layer_module, l, current, target, arch)

    def update_config(self, config, counts: Counts, arch: Arch) -> None:
        config.intermediate_size = counts["mlp"]

    def flops(self, counts: Counts, arch: Arch, context: int) -> int:
        return 2 * counts["layers"] * 3 * counts.get("hidden", arch.hidden) * counts["mlp"]

    def params(self, counts: Counts, arch: Arch) -> int:
        hidden = counts.get("hidden", arch.hidden)
        bias = 2 * counts["mlp"] + hidden if arch.mlp_bias else 0
        return counts["layers"] * (3 * hidden * counts["mlp"] + bias)


def step_to_land(n: int, step: int, multiple_of: int, cost_at, limit: float) -> int | None:
    """How many units to cut from `n`: `step`, or the smallest multiple of `multiple_of` below it
    that brings the cost to `limit` (so a budget rung lands on its target, not past it)."""
    if n - multiple_of < multiple_of:
        return None
    step = max(multiple_of, min(step, n - multiple_of))
    for cut in range(multiple_of, step + 1, multiple_of):
        if cost_at(n - cut) <= limit:
            return cut
    return step


register(MlpChannels())
