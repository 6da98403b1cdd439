"""Cut a model from its current structure down to a target one, granularity by granularity.

Order, coarse to fine: whole layers, then hidden channels (both rewrite the model as a whole),
then the consumer granularities (attention heads, MLP channels), layer by layer, with the
consumer projections refitted by least squares on the activations of the model as pruned so far
(`pipeline/pruning/compensation.py`), or simply sliced when compensation is off. Then the layer
before each run of dropped layers has its `down_proj` refitted to add what the run added
(`pipeline/pruning/depth_compensation.py`). Finally every
granularity writes its count into the HF config, so `save_pretrained` + `from_pretrained` give
the same model.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from pipeline.models.architecture import bias_flags, decoder_layers, model_type_of
from pipeline.pruning.compensation import cut_layers_sequentially
from pipeline.pruning.depth_compensation import dropped_runs, refit_across_runs
from pipeline.pruning.granularity import registry
from pipeline.pruning.slicing import with_bias
from pipeline.pruning.structure import Arch, Structure


def consumers() -> list:
    """One granularity per consumer projection, attention before MLP (forward order)."""
    seen, out = set(), []
    for g in registry():
        if g.consumer and g.consumer not in seen:
            seen.add(g.consumer)
            out.append(g)
    return sorted(out, key=lambda g: 0 if g.consumer.startswith("self_attn") else 1)


@torch.no_grad()
def cut_to(model: nn.Module, current: Structure, target: Structure, arch: Arch, imp, blocks: torch.Tensor | None,
           compensate: bool, damping: float, fit_bias: bool, depth: tuple[torch.Tensor, float] | None = None) -> dict:
    """Physically cut `model` (shaped like `current`) to `target`; return what was done and how well.

    `depth`: (calibration blocks, damping) to compensate dropped layers; None leaves them as cut."""
    t0 = time.perf_counter()
    runs = dropped_runs(model, current, target) if depth is not None else {}
    parent_hidden = list(current["hidden"])
    for g in registry():
        if g.consumer is None:
            g.remove(model, current, target, arch, imp)
            current = current.replace(g.name, target[g.name])
    t1 = time.perf_counter()
    flags = bias_flags(model_type_of(model.config))  # only Llama can store an o_proj / down_proj bias
    layers_report: list[dict] = []
    changed = any(g.kept_inputs(l, current, target, arch) is not None for g in consumers() for l in target["layers"])
    if compensate and blocks is not None and changed:
        layers_report = cut_layers_sequentially(model, current, target, arch, consumers(), blocks, damping, fit_bias,
                                                bias_allowed={c: True for c in flags})
    else:
        for g in consumers():
            g.remove(model, current, target, arch, imp)
    t2 = time.perf_counter()
    depth_report: list[dict] = []
    if runs:
        where = {h: i for i, h in enumerate(parent_hidden)}
        pos = torch.tensor([where[h] for h in target["hidden"]])
        depth_report = refit_across_runs(model, runs, pos, len(parent_hidden), depth[0], depth[1])
        for r in depth_report:  # by base index, as every other report names layers
            r["layer"] = target["layers"][r["layer"]]
    counts = target.counts()
    for g in registry():
        g.update_config(model.config, counts, arch)
    biased = sorted({r["consumer"] for r in layers_report if r["bias"]})
    for consumer in biased:  # the config flag gives every sibling projection a bias: make them exist
        flag, family = flags[consumer]
        setattr(model.config, flag, True)
        for layer in decoder_layers(model):
            for name in family:
                owner, attr = name.split(".")
                setattr(getattr(layer, owner), attr, with_bias(layer.get_submodule(name)))
    before = [r["error_before"] for r in layers_report]
    after = [r["error_after"] for r in layers_report]
    return {
        "compensation": ("least squares, sequential" if compensate and blocks is not None else "none (sliced)")
        if changed else "none needed (no head or MLP channel removed)",
        "damping": damping, "bias": biased, "calibration_tokens": 0 if blocks is None else int(blocks.numel()),
        "mean_error_before": sum(before) / len(before) if before else None,
        "mean_error_after": sum(after) / len(after) if after else None,
        "layers": layers_report,
        "depth": {"compensation": "down_proj refit before each dropped run" if depth_report else "none",
                  "damping": None if depth is None else depth[1],
                  "calibration_tokens": 0 if depth is None else int(depth[0].numel()), "layers": depth_report},
        "seconds": {"whole_model_cuts": round(t1 - t0, 2), "layer_cuts": round(t2 - t1, 2),
                    "depth_refit": round(time.perf_counter() - t2, 2)},
    }
