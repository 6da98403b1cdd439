"""Hidden size (Minitron's embedding channels): residual-stream channels, removed everywhere.

A channel of the residual stream lives in the embedding table's columns (and the tied `lm_head`),
every projection's input (q/k/v/gate/up columns) or output (o/down rows), and every RMSNorm.
Removing it shrinks all of them and `lm_head`, the one cost nothing else can touch (20% of dense
FLOPs/token for SmolLM2-135M, most of a small rung's decode time).

Score (Minitron): the RMS of each channel at the output of every RMSNorm, summed over norms.

RMSNorm divides by the RMS over *all* channels, so dropping channels changes every token's
normaliser. Each norm's weight is rescaled by `sqrt(mean_K E[x_c^2] / mean_all E[x_c^2])`, the
ratio of the mean square over kept channels to that over all, from calibration statistics, and
`rms_norm_eps` by `D / |K|` (it sits inside the same mean); for channels that are exactly zero
this makes removal exact (a test checks), for the rest it keeps the average scale.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.architecture import (
    ATTENTION,
    MLP,
    decoder_layers,
    heads_storable,
    norms,
)
from pipeline.pruning.granularities.mlp import step_to_land
from pipeline.pruning.granularity import Granularity, register
from pipeline.pruning.slicing import slice_embedding, slice_norm, take_linear
from pipeline.pruning.structure import Arch, Counts, Structure

_INPUT_SIDE = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
_OUTPUT_SIDE = ("self_attn.o_proj", "mlp.down_proj")
assert set(_INPUT_SIDE) | set(_OUTPUT_SIDE) == {f"self_attn.{n}" for n in ATTENTION} | {f"mlp.{n}" for n in MLP}


class HiddenChannels(Granularity):
    name = "hidden"
    order = 10

    def dense(self, arch: Arch) -> list[int]:
        return list(range(arch.hidden))

    def count(self, s: Structure) -> int:
        return len(s["hidden"])

    def scores(self, imp) -> torch.Tensor:
        return imp.hidden_channel

    def select(self, s: Structure, parent: Structure, count: int, imp, arch: Arch) -> Structure:
        return s.replace("hidden", sorted(sorted(s["hidden"], key=lambda c: -float(imp.hidden_channel[c]))[:count]))

    def moves(self, s: Structure, parent: Structure, imp, arch: Arch, opts) -> list[tuple[str, Structure]]:
        n, counts = self.count(s), s.counts()
        n_q = counts["kv_heads"] * counts["q_heads"]
        unit = opts.multiple_of
        # The cut must leave a size transformers accepts with the current head count.
        def ok(k):
            return heads_storable(arch.free_heads, k, n_q)
        cut = step_to_land(n, opts.step("hidden", arch.hidden), unit,
                           lambda k: opts.cost(counts.replace(hidden=k)) if ok(k) else float("inf"), opts.limit)
        while cut is not None and n - cut >= unit and not ok(n - cut):
            cut += unit
        if cut is None or n - cut < unit:
            return []
        return [(f"hidden {n} -> {n - cut}", self.select(s, parent, n - cut, imp, arch))]

    def norm_scales(self, model: nn.Module, current: Structure, target: Structure, stats) -> list[float]:
        """Per RMSNorm in forward order: the weight rescale that keeps its output's average scale."""
        idx = _positions(current["hidden"], target["hidden"])
        scales = []
        for name, _ in norms(model):
            ms = _norm_input_ms(stats, name, current)
            scales.append(float((ms[idx].mean() / ms.mean()).clamp_min(1e-12).sqrt()) if ms is not None else 1.0)
        return scales

    def remove(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> None:
        if current["hidden"] == target["hidden"]:
            return
        idx = _positions(current["hidden"], target["hidden"])
        scales = self.norm_scales(model, current, target, stats)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        slice_embedding(model.get_input_embeddings(), idx)
        for layer in decoder_layers(model):
            for name in _INPUT_SIDE:
                _replace(layer, name, take_linear(layer.get_submodule(name), idx, 1))
            for name in _OUTPUT_SIDE:
                _replace(layer, name, take_linear(layer.get_submodule(name), idx, 0))
        eps_scale = len(current["hidden"]) / len(target["hidden"])
        for (_, norm), scale in zip(norms(model), scales):
            slice_norm(norm, idx, scale)
            norm.variance_epsilon *= eps_scale
        model.config.rms_norm_eps *= eps_scale
        head = model.get_output_embeddings()
        if tied:
            head.weight = model.get_input_embeddings().weight
            head.in_features = len(idx)
        else:
            model.set_output_embeddings(take_linear(head, idx, 1))
        for layer in decoder_layers(model):
            if hasattr(layer, "hidden_size"):
                layer.hidden_size = len(idx)

    def emulate(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> list:
        if current["hidden"] == target["hidden"]:
            return []
        keep = torch.zeros(len(current["hidden"]), dtype=torch.bool)
        keep[_positions(current["hidden"], target["hidden"])] = True
        handles = [model.get_input_embeddings().register_forward_hook(_zero_outputs(keep))]
        for layer in decoder_layers(model):
            for name in _OUTPUT_SIDE:
                handles.append(layer.get_submodule(name).register_forward_hook(_zero_outputs(keep)))
        eps_scale = len(current["hidden"]) / len(target["hidden"])
        for (_, norm), scale in zip(norms(model), self.norm_scales(model, current, target, stats)):
            handles.append(norm.register_forward_hook(_masked_rms_norm(keep, scale, eps_scale)))
        return handles

    def update_config(self, config, counts: Counts, arch: Arch) -> None:
        config.hidden_size = counts["hidden"]
        config.head_dim = arch.head_dim

    def loadable(self, counts: Counts, arch: Arch) -> bool:
        return heads_storable(arch.free_heads, counts["hidden"], counts["kv_heads"] * counts["q_heads"])

    def flops(self, counts: Counts, arch: Arch, context: int) -> int:
        return 2 * arch.vocab * counts["hidden"]  # lm_head, once per generated token

    def params(self, counts: Counts, arch: Arch) -> int:
        tables = 1 if arch.tied else 2
        return tables * arch.vocab * counts["hidden"] + counts["hidden"]  # embeddings, lm_head, final norm


def _positions(current: list[int], target: list[int]) -> torch.Tensor:
    return torch.tensor([current.index(c) for c in target], dtype=torch.long)


def _replace(layer: nn.Module, name: str, new: nn.Linear) -> None:
    owner, attr = name.split(".")
    setattr(getattr(layer, owner), attr, new)


def _norm_input_ms(stats, name: str, current: Structure) -> torch.Tensor | None:
    """Mean square of each *current* hidden channel at this norm's input (base statistics)."""
    if stats is None:
        return None
    # Norm names in the pruned model use positions; statistics are by base layer index.
    if name == "norm":
        ms = stats.norm_input_ms[-1]
    else:
        _, pos, which = name.split(".")
        l = current["layers"][int(pos)]
        ms = stats.norm_input_ms[2 * l + (0 if which == "input_layernorm" else 1)]
    return ms.double()[torch.tensor(current["hidden"])]


def _zero_outputs(keep: torch.Tensor):
    def hook(_module, _args, out):
        return out * keep.to(device=out.device, dtype=out.dtype)
    return hook


def _masked_rms_norm(keep: torch.Tensor, scale: float, eps_scale: float):
    """RMSNorm over the kept channels only, zero elsewhere: what the cut norm computes."""
    def hook(module, args, _out):
        x = args[0]
        m = keep.to(device=x.device)
        xf = x.to(torch.float32) * m  # as transformers' RMSNorm computes
        ms = xf.pow(2).sum(-1, keepdim=True) / m.sum()
        y = xf * torch.rsqrt(ms + module.variance_epsilon * eps_scale)
        return (module.weight * scale * y.to(x.dtype) * m.to(x.dtype))
    return hook


register(HiddenChannels())
