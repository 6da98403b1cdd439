"""Importance at every granularity from one hooked pass over calibration tokens.

For a llama-style decoder (layers of attention + gated MLP) it measures:

- layer: block influence `1 - cos(x_in, x_out)` (ShortGPT) and angular distance
  `arccos(cos(x_in, x_out)) / pi`, averaged over tokens: how much a layer turns
  the residual stream. Low = the layer is close to an identity, cheap to drop.
- attention head: RMS norm of the head's contribution to the residual stream,
  `sqrt(E ||W_o[:, h] x_h||^2) = sqrt(tr(W_h S_h W_h^T))` with `S_h = E[x_h x_h^T]`
  the second moment of the head's output (the `o_proj` input). Exact, not a bound.
- KV group: the sum over the query heads that share it (grouped-query attention).
- MLP channel: RMS contribution of channel j to the residual,
  `sqrt(E[a_j^2]) * ||W_down[:, j]||` with `a` the `down_proj` input. Exact too.
- OWL outlier ratio per layer: share of Wanda scores `|W_ij| * ||X_j||` above
  `M x` their layer mean, over every linear of the layer (Yin et al., 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


@dataclass
class Importance:
    """Scores per granularity; tensors indexed [layer, unit]."""

    block_influence: torch.Tensor  # [L]
    angular_distance: torch.Tensor  # [L]
    head: torch.Tensor  # [L, H]
    kv_group: torch.Tensor  # [L, KV]
    mlp_channel: torch.Tensor  # [L, I]
    owl_outlier_ratio: torch.Tensor  # [L]
    tokens: int

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], tokens: int) -> "Importance":
        return cls(**{k: t[k] for k in cls.__dataclass_fields__ if k != "tokens"}, tokens=tokens)


class _Accumulator:
    """Forward hooks that add up the sufficient statistics for every score."""

    def __init__(self, model: nn.Module):
        cfg = model.config
        self.layers = decoder_layers(model)
        L, H, hd = len(self.layers), cfg.num_attention_heads, cfg.head_dim
        self.H, self.hd = H, hd
        self.cos_sum = torch.zeros(L, dtype=torch.float64)
        self.ang_sum = torch.zeros(L, dtype=torch.float64)
        self.head_second_moment = torch.zeros(L, H, hd, hd, dtype=torch.float64)
        self.feat_sq = {(i, n): torch.zeros(self._linear(i, n).in_features, dtype=torch.float64)
                        for i in range(L) for n in LINEARS}
        self.tokens = 0
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
            for n in LINEARS:
                self.handles.append(self._linear(i, n).register_forward_pre_hook(self._linear_hook(i, n)))

    def _linear(self, i: int, name: str) -> nn.Linear:
        return self.layers[i].get_submodule(name)

    def _layer_hook(self, i: int):
        def hook(_module, args, kwargs, out):
            x_in = (args[0] if args else kwargs["hidden_states"]).float()
            x_out = (out[0] if isinstance(out, tuple) else out).float()
            cos = nn.functional.cosine_similarity(x_in, x_out, dim=-1).clamp(-1.0, 1.0).flatten()
            self.cos_sum[i] += cos.sum().double()
            self.ang_sum[i] += (torch.arccos(cos) / math.pi).sum().double()
            if i == 0:
                self.tokens += cos.numel()
        return hook

    def _linear_hook(self, i: int, name: str):
        def hook(_module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            self.feat_sq[(i, name)] += (x * x).sum(0).double()
            if name == "self_attn.o_proj":
                xh = x.view(-1, self.H, self.hd)
                self.head_second_moment[i] += torch.einsum("nhi,nhj->hij", xh, xh).double()
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @torch.no_grad()
    def finish(self, owl_m: float) -> Importance:
        n = max(self.tokens, 1)
        L = len(self.layers)
        heads, groups, channels, owl = [], [], [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            w_o = attn.o_proj.weight.double().view(-1, self.H, self.hd)  # [D, H, hd]
            s = self.head_second_moment[i] / n  # [H, hd, hd]
            head = torch.einsum("dhi,hij,dhj->h", w_o, s, w_o).clamp_min(0).sqrt()
            heads.append(head)
            kv = attn.k_proj.out_features // self.hd
            groups.append(head.view(kv, self.H // kv).sum(-1))
            a_rms = (self.feat_sq[(i, "mlp.down_proj")] / n).sqrt()
            channels.append(a_rms * layer.mlp.down_proj.weight.double().norm(dim=0))
            owl.append(self._outlier_ratio(i, owl_m))
        return Importance(
            block_influence=(1 - self.cos_sum / n).float(),
            angular_distance=(self.ang_sum / n).float(),
            head=torch.stack(heads).float(),
            kv_group=torch.stack(groups).float(),
            mlp_channel=torch.stack(channels).float(),
            owl_outlier_ratio=torch.tensor(owl, dtype=torch.float32).view(L),
            tokens=self.tokens,
        )

    def _outlier_ratio(self, i: int, m: float) -> float:
        n = max(self.tokens, 1)
        scores = [
            (self._linear(i, name).weight.abs().double() * (self.feat_sq[(i, name)] / n).sqrt()).flatten()
            for name in LINEARS
        ]
        s = torch.cat(scores)
        return float((s > m * s.mean()).double().mean())


@torch.no_grad()
def measure_importance(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, owl_m: float = 5.0,
                       desc: str = "calibrate") -> Importance:
    acc = _Accumulator(model)
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
            model(input_ids=blocks[start:start + batch_size], use_cache=False)
    finally:
        acc.remove()
    return acc.finish(owl_m)


@torch.no_grad()
def plain_forward(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, desc: str = "forward") -> None:
    for start in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
        model(input_ids=blocks[start:start + batch_size], use_cache=False)


def owl_layer_sparsity(outlier_ratio: torch.Tensor, target: float, lam: float) -> list[float]:
    """OWL: per-layer sparsity in [target - lam, target + lam] with mean `target`;
    layers with more outliers are pruned less (the paper's reference formula)."""
    r = outlier_ratio.double()
    span = r.max() - r.min()
    if span <= 0:
        return [target] * len(r)
    density = (r - r.min()) / span * (2 * lam)
    density = density - density.mean() + (1 - target)
    return [float(min(max(1 - d, 0.0), 1.0)) for d in density]
