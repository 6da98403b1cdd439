"""Attention heads, at two granularities: whole KV groups, and query heads inside each group.

Grouped-query attention: query head `q` reads KV head `q // group`. A rung keeps the same
number of KV groups in every layer and the same number of query heads in every kept group,
ordered group by group, so `q // (n_q / n_kv)` still finds its KV head after the cut. Which
heads survive is chosen per layer.

Score: a head's RMS contribution to the residual stream, `sqrt(tr(W_o,h S_h W_o,h^T))` with
`S_h` the second moment of the head's output (exact, from calibration); a KV group's score is
the sum over its query heads. Both cut the inputs of `o_proj`, which least squares then refits.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.architecture import decoder_layers, heads_storable
from pipeline.pruning.granularity import Granularity, register
from pipeline.pruning.slicing import rows_of_heads, take_linear
from pipeline.pruning.structure import Arch, Counts, Structure


def _per_layer(units: dict) -> dict:
    return {int(l): list(v) for l, v in units.items()}


class _Attention(Granularity):
    consumer = "self_attn.o_proj"

    def units_to_json(self, units: dict) -> dict:
        return {str(l): v for l, v in units.items()}

    def units_from_json(self, obj: dict) -> dict:
        return _per_layer(obj)

    def kept_inputs(self, layer: int, current: Structure, target: Structure, arch: Arch) -> torch.Tensor | None:
        cur, tgt = current["q_heads"][layer], target["q_heads"][layer]
        if cur == tgt:
            return None
        return rows_of_heads([cur.index(h) for h in _group_ordered(tgt, arch.group)], arch.head_dim)

    def slice_layer(self, layer_module: nn.Module, layer: int, current: Structure, target: Structure,
                    arch: Arch) -> None:
        cur_q, cur_kv = current["q_heads"][layer], current["kv_heads"][layer]
        tgt_q, tgt_kv = _group_ordered(target["q_heads"][layer], arch.group), sorted(target["kv_heads"][layer])
        if cur_q == tgt_q and cur_kv == tgt_kv:
            return
        attn, hd = layer_module.self_attn, arch.head_dim
        q_rows = rows_of_heads([cur_q.index(h) for h in tgt_q], hd)
        kv_rows = rows_of_heads([cur_kv.index(g) for g in tgt_kv], hd)
        attn.q_proj = take_linear(attn.q_proj, q_rows, 0)
        attn.k_proj = take_linear(attn.k_proj, kv_rows, 0)
        attn.v_proj = take_linear(attn.v_proj, kv_rows, 0)
        attn.o_proj = take_linear(attn.o_proj, q_rows, 1)
        attn.num_key_value_groups = len(tgt_q) // len(tgt_kv)

    def remove(self, model: nn.Module, current: Structure, target: Structure, arch: Arch, stats=None) -> None:
        for layer_module, l in zip(decoder_layers(model), target["layers"]):
            self.slice_layer(layer_module, l, current, target, arch)

    def update_config(self, config, counts: Counts, arch: Arch) -> None:
        config.num_attention_heads = counts["kv_heads"] * counts["q_heads"]
        config.num_key_value_heads = counts["kv_heads"]
        config.head_dim = arch.head_dim  # no longer hidden_size / num_attention_heads

    def loadable(self, counts: Counts, arch: Arch) -> bool:
        return heads_storable(arch.free_heads, counts.get("hidden", arch.hidden), counts["kv_heads"] * counts["q_heads"])


def _group_ordered(q_heads: list[int], group: int) -> list[int]:
    """Query heads ordered group by group (then by index): the layout GQA needs."""
    return sorted(q_heads, key=lambda h: (h // group, h))


class KVHeads(_Attention):
    """Whole KV groups (a K/V head and the query heads that read it)."""

    name = "kv_heads"
    order = 20

    def dense(self, arch: Arch) -> dict[int, list[int]]:
        return {l: list(range(arch.kv_heads)) for l in range(arch.layers)}

    def count(self, s: Structure) -> int:
        return len(s["kv_heads"][s["layers"][0]])

    def scores(self, imp) -> torch.Tensor:
        return imp.kv_group

    def select(self, s: Structure, parent: Structure, count: int, imp, arch: Arch) -> Structure:
        kv, q = {}, {}
        for l in s["layers"]:
            kv[l] = sorted(sorted(s["kv_heads"][l], key=lambda g: -float(imp.kv_group[l, g]))[:count])
            q[l] = [h for h in s["q_heads"][l] if h // arch.group in set(kv[l])]
        return s.replace("kv_heads", {**s["kv_heads"], **kv}).replace("q_heads", {**s["q_heads"], **q})

    def moves(self, s: Structure, parent: Structure, imp, arch: Arch, opts) -> list[tuple[str, Structure]]:
        n = self.count(s)
        return [("drop one KV group per layer", self.select(s, parent, n - 1, imp, arch))] if n > 1 else []

    def flops(self, counts: Counts, arch: Arch, context: int) -> int:  # weights only, as models/cost.py counts
        return counts["layers"] * 2 * 2 * counts.get("hidden", arch.hidden) * arch.head_dim * counts["kv_heads"]

    def params(self, counts: Counts, arch: Arch) -> int:  # k_proj and v_proj
        width = arch.head_dim * counts["kv_heads"]
        return counts["layers"] * 2 * (counts.get("hidden", arch.hidden) * width + (width if arch.qkv_bias else 0))


class QueryHeads(_Attention):
    """Query heads inside each kept KV group (the same number in every group)."""

    name = "q_heads"
    order = 30

    def dense(self, arch: Arch) -> dict[int, list[int]]:
        return {l: list(range(arch.heads)) for l in range(arch.layers)}

    def count(self, s: Structure) -> int:  # query heads per kept KV group
        l0 = s["layers"][0]
        return len(s["q_heads"][l0]) // len(s["kv_heads"][l0])

    def scores(self, imp) -> torch.Tensor:
        return imp.head

    def select(self, s: Structure, parent: Structure, count: int, imp, arch: Arch) -> Structure:
        q = {}
        for l in s["layers"]:
            q[l] = [h for g in sorted(s["kv_heads"][l]) for h in sorted(
                sorted((h for h in s["q_heads"][l] if h // arch.group == g), key=lambda h: -float(imp.head[l, h]))[:count])]
        return s.replace("q_heads", {**s["q_heads"], **q})

    def moves(self, s: Structure, parent: Structure, imp, arch: Arch, opts) -> list[tuple[str, Structure]]:
        n = self.count(s)
        return [("drop one query head per KV group", self.select(s, parent, n - 1, imp, arch))] if n > 1 else []

    def flops(self, counts: Counts, arch: Arch, context: int) -> int:
        n_q = counts["kv_heads"] * counts["q_heads"]
        proj = 2 * counts.get("hidden", arch.hidden) * arch.head_dim * n_q  # q_proj and o_proj
        return counts["layers"] * (2 * proj + 4 * n_q * arch.head_dim * context)  # + QK^T and AV

    def params(self, counts: Counts, arch: Arch) -> int:  # q_proj and o_proj
        n_q = counts["kv_heads"] * counts["q_heads"]
        hidden = counts.get("hidden", arch.hidden)
        bias = (arch.head_dim * n_q if arch.qkv_bias else 0) + (hidden if arch.o_bias else 0)
        return counts["layers"] * (2 * hidden * arch.head_dim * n_q + bias)


register(KVHeads())
register(QueryHeads())
