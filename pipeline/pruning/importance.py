"""Importance at every granularity, from one hooked pass over calibration tokens.

For a decoder of attention + gated-MLP layers (`pipeline/models/architecture.py`) it measures:

- layer: block influence `1 - cos(x_in, x_out)` (ShortGPT) and angular distance
  `arccos(cos(x_in, x_out)) / pi`, averaged over tokens: how much a layer turns the residual
  stream. Low = the layer is close to an identity, cheap to drop.
- attention head: RMS norm of the head's contribution to the residual stream,
  `sqrt(E ||W_o[:, h] x_h||^2) = sqrt(tr(W_h S_h W_h^T))` with `S_h = E[x_h x_h^T]` the second
  moment of the head's output (the `o_proj` input). Exact, not a bound.
- KV group: the sum over the query heads that share it (grouped-query attention).
- MLP channel: RMS contribution of channel j to the residual,
  `sqrt(E[a_j^2]) * ||W_down[:, j]||` with `a` the `down_proj` input. Exact too.
- hidden channel (Minitron): RMS of channel c at every RMSNorm's output, summed over norms.

It also keeps the sufficient statistics later steps need: the mean square of every channel at
every norm's input (hidden-size pruning rescales norms with it) and at every linear's input (OWL
outlier ratios are computed from it at prune time, at the recipe's own threshold).
Accumulators are float64 on the device that computes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.models.architecture import LINEARS, decoder_layers, head_dim, norms

# Linear inputs we keep statistics for; q/k/v share one input, as do gate/up.
INPUT_GROUPS = {"attn_in": "self_attn.q_proj", "o_in": "self_attn.o_proj",
                "mlp_in": "mlp.gate_proj", "down_in": "mlp.down_proj"}
GROUP_OF = {"self_attn.q_proj": "attn_in", "self_attn.k_proj": "attn_in", "self_attn.v_proj": "attn_in",
            "self_attn.o_proj": "o_in", "mlp.gate_proj": "mlp_in", "mlp.up_proj": "mlp_in",
            "mlp.down_proj": "down_in"}


@dataclass
class Importance:
    """Scores and statistics of the base model; tensors indexed by base layer / unit."""

    block_influence: torch.Tensor  # [L]
    angular_distance: torch.Tensor  # [L]
    head: torch.Tensor  # [L, H]
    kv_group: torch.Tensor  # [L, KV]
    mlp_channel: torch.Tensor  # [L, I]
    hidden_channel: torch.Tensor  # [D]
    norm_input_ms: torch.Tensor  # [2L + 1, D]: input_layernorm, post_attention_layernorm per layer, final norm
    attn_in_ms: torch.Tensor  # [L, D]   mean square of q/k/v inputs
    o_in_ms: torch.Tensor  # [L, H*hd]
    mlp_in_ms: torch.Tensor  # [L, D]   gate/up inputs
    down_in_ms: torch.Tensor  # [L, I]
    tokens: int

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous().cpu() for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], tokens: int = 0) -> "Importance":
        return cls(**{k: t[k] for k in cls.__dataclass_fields__ if k != "tokens"}, tokens=tokens)

    def input_ms(self, layer: int, linear: str) -> torch.Tensor:
        """Mean square of each input feature of `linear` in base layer `layer`."""
        return getattr(self, f"{GROUP_OF[linear]}_ms")[layer]


class _Accumulator:
    """Forward hooks that add up the sufficient statistics for every score."""

    def __init__(self, model: nn.Module):
        cfg = model.config
        self.layers = decoder_layers(model)
        self.norms = norms(model)
        L, H, hd = len(self.layers), cfg.num_attention_heads, head_dim(cfg)
        dev = next(model.parameters()).device
        self.H, self.hd = H, hd
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=dev)  # noqa: E731
        self.cos_sum, self.ang_sum = z(L), z(L)
        self.head_second_moment = z(L, H, hd, hd)
        self.in_sq = {(i, g): z(self.layers[i].get_submodule(n).in_features)
                      for i in range(L) for g, n in INPUT_GROUPS.items()}
        D = cfg.hidden_size
        self.norm_in_sq = z(len(self.norms), D)
        self.norm_out_sq = z(len(self.norms), D)
        self.tokens = 0
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
            for g, n in INPUT_GROUPS.items():
                self.handles.append(layer.get_submodule(n).register_forward_pre_hook(self._linear_hook(i, g)))
        for k, (_, norm) in enumerate(self.norms):
            self.handles.append(norm.register_forward_hook(self._norm_hook(k)))

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

    def _linear_hook(self, i: int, group: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            self.in_sq[(i, group)] += (x * x).sum(0)
            if group == "o_in":
                xh = x.view(-1, self.H, self.hd)
                self.head_second_moment[i] += torch.einsum("nhi,nhj->hij", xh, xh)
        return hook

    def _norm_hook(self, k: int):
        def hook(_module, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            y = out.detach().reshape(-1, out.shape[-1]).double()
            self.norm_in_sq[k] += (x * x).sum(0)
            self.norm_out_sq[k] += (y * y).sum(0)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @torch.no_grad()
    def finish(self) -> Importance:
        n = max(self.tokens, 1)
        heads, groups, channels = [], [], []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            w_o = attn.o_proj.weight.double().view(-1, self.H, self.hd)  # [D, H, hd]
            s = self.head_second_moment[i] / n  # [H, hd, hd]
            head = torch.einsum("dhi,hij,dhj->h", w_o, s, w_o).clamp_min(0).sqrt()
            heads.append(head)
            kv = attn.k_proj.out_features // self.hd
            groups.append(head.view(kv, self.H // kv).sum(-1))
            a_rms = (self.in_sq[(i, "down_in")] / n).sqrt()
            channels.append(a_rms * layer.mlp.down_proj.weight.double().norm(dim=0))
        L = len(self.layers)
        ms = {g: torch.stack([self.in_sq[(i, g)] / n for i in range(L)]) for g in INPUT_GROUPS}
        return Importance(
            block_influence=(1 - self.cos_sum / n).float(),
            angular_distance=(self.ang_sum / n).float(),
            head=torch.stack(heads).float(),
            kv_group=torch.stack(groups).float(),
            mlp_channel=torch.stack(channels).float(),
            hidden_channel=(self.norm_out_sq / n).sqrt().sum(0).float(),
            norm_input_ms=(self.norm_in_sq / n).float(),
            attn_in_ms=ms["attn_in"].float(), o_in_ms=ms["o_in"].float(),
            mlp_in_ms=ms["mlp_in"].float(), down_in_ms=ms["down_in"].float(),
            tokens=self.tokens,
        )


@torch.no_grad()
def measure_importance(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8,
                       desc: str = "calibrate") -> Importance:
    acc = _Accumulator(model)
    device = next(model.parameters()).device
    try:
        for start in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
            model(input_ids=blocks[start:start + batch_size].to(device), use_cache=False)
    finally:
        acc.remove()
    return acc.finish()


@torch.no_grad()
def owl_outlier_ratios(model: nn.Module, layers: list[int], imp: Importance, m: float,
                       inputs_kept: dict[tuple[int, str], torch.Tensor] | None = None) -> torch.Tensor:
    """OWL (Yin et al., 2024): per layer, the share of Wanda scores `|W_ij| * ||X_j||` above `m` x
    their layer mean, over every linear of the layer. `model`'s layers are the base layers
    `layers`; `inputs_kept[(l, linear)]` maps its (possibly cut) inputs to base feature indices."""
    out = []
    for layer_module, l in zip(decoder_layers(model), layers):
        scores = []
        for name in LINEARS:
            w = layer_module.get_submodule(name).weight
            norm = imp.input_ms(l, name).double().sqrt().to(w.device)
            if inputs_kept is not None and (l, name) in inputs_kept:
                norm = norm[inputs_kept[(l, name)].to(w.device)]
            scores.append((w.abs().double() * norm).flatten())
        s = torch.cat(scores)
        out.append(float((s > m * s.mean()).double().mean()))
    return torch.tensor(out, dtype=torch.float32)


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


@torch.no_grad()
def plain_forward(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, desc: str = "forward") -> None:
    """The same pass without hooks (a timing reference for their overhead)."""
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(blocks), batch_size), desc=desc, unit="batch"):
        model(input_ids=blocks[start:start + batch_size].to(device), use_cache=False)
