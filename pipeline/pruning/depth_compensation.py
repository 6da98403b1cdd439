"""Compensation after whole layers leave: the kept layer before a dropped run learns what it added.

Dropping decoder layers leaves no consumer projection to refit, so until now a layer cut was
uncompensated. ReplaceMe (Shopkhoev et al., 2025) replaces a pruned run of layers by a linear map
estimated on calibration activations and folds it into the `down_proj` of the layer before the
run. We fit that `down_proj` directly (a superset of folding a map into it): with `a` its input
(the MLP's intermediate activations), `y` the residual stream after the layer's attention and
`h` what the parent computed after the last dropped layer,

    minimise E || W' a - (h - y) ||^2 + lam || W' - W ||^2,   lam = damping x mean diag E[a a^T]

so the layer adds its own MLP output *and* the run's contribution. The ridge pulls towards the
layer's own weights, not towards zero: with a large `damping` nothing changes, and with little
calibration text the fit cannot stray far from the trained layer.

`h` is the parent's dropped layers run on this model's own stream (the residual channels the rung
removed filled with zeros), one kept layer at a time in forward order, so every fit sees the
model as compensated so far (SparseGPT's sequential pass, as in `compensation.py`). Layers the
rung drops before its first kept layer have no layer to absorb them and stay uncompensated.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from pipeline.models.architecture import decoder_layers
from pipeline.pruning.compensation import layer_inputs
from pipeline.pruning.structure import Structure


def dropped_runs(model: nn.Module, current: Structure, target: Structure) -> dict[int, list[nn.Module]]:
    """{position in `target`'s layer stack: the decoder layers of `model` (shaped like `current`)
    dropped right after that kept layer}. Call before the layers are removed."""
    keep = set(target["layers"])
    runs: dict[int, list[nn.Module]] = {}
    at = -1
    for module, l in zip(decoder_layers(model), current["layers"]):
        if l in keep:
            at += 1
        elif at >= 0:
            runs.setdefault(at, []).append(module)
    return runs


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def refit_across_runs(model: nn.Module, runs: dict[int, list[nn.Module]], hidden_pos: torch.Tensor, parent_hidden: int,
                      blocks: torch.Tensor, damping: float, batch_size: int = 8) -> list[dict]:
    """Refit the `down_proj` of every kept layer in `runs` (see the module docstring).

    `model` is already cut to its target; `hidden_pos` are its residual channels' positions in the
    parent's stream (width `parent_hidden`). Returns per kept layer the relative error
    E||W a - (h - y)||^2 / E||h - y||^2 before and after the refit."""
    inputs = layer_inputs(model, blocks, batch_size)
    report = []
    layers = decoder_layers(model)
    for pos, layer in enumerate(tqdm(layers, desc="refit across dropped layers", unit="layer")):
        if pos in runs:
            down = layer.mlp.down_proj
            caught: dict[str, torch.Tensor] = {}
            hooks = [layer.post_attention_layernorm.register_forward_pre_hook(
                         lambda _m, a: caught.__setitem__("y", a[0].detach())),
                     down.register_forward_pre_hook(lambda _m, a: caught.__setitem__("a", a[0].detach()))]
            G = C = None
            rr, n = 0.0, 0
            try:
                for hidden, kwargs in inputs:
                    out = _out(layer(hidden, **kwargs))
                    h = out.new_zeros(*out.shape[:-1], parent_hidden)
                    pos_here = hidden_pos.to(out.device)
                    h[..., pos_here] = out
                    for dropped in runs[pos]:
                        h = _out(dropped(h, **kwargs))
                    a = caught["a"].reshape(-1, caught["a"].shape[-1]).double()
                    r = (h[..., pos_here] - caught["y"]).reshape(-1, out.shape[-1]).double()
                    G = a.T @ a if G is None else G + a.T @ a
                    C = a.T @ r if C is None else C + a.T @ r
                    rr += float((r * r).sum())
                    n += len(a)
            finally:
                for hk in hooks:
                    hk.remove()
            G, C, rr = G / n, C / n, rr / n
            W = down.weight.data.double().to(G.device)
            lam = damping * G.diagonal().mean()
            new = torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype, device=G.device), C + lam * W.T).T

            def err(w: torch.Tensor) -> float:  # E||w a - r||^2 / E||r||^2 from the moments
                return float(((w @ G) * w).sum() - 2 * (w * C.T).sum() + rr) / max(rr, 1e-300)

            report.append({"layer": pos, "dropped_after": len(runs[pos]), "error_before": round(err(W), 6),
                           "error_after": round(err(new), 6)})
            down.weight.data.copy_(new.to(down.weight.dtype))
        inputs = [(_out(layer(hidden, **kwargs)), kwargs) for hidden, kwargs in inputs]
    return report
