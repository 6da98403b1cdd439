"""Compensation after structured removal: refit each consumer projection by least squares.

When attention heads or MLP channels leave a layer, the projection that consumes them
(`o_proj`, `down_proj`) loses input columns. Instead of slicing those columns away, we refit
the surviving ones so the projection's output on calibration activations is reproduced
(FLAP's bias compensation, SlimGPT / ZipLM's least-squares reconstruction):

    minimise E || W x + b - W' x_K - b' ||^2   over W' (and b' when `bias` is on)

with x the consumer's full input, K the kept inputs. With z = [x; 1] and G = E[z z^T], the
solution is `[W' b'] = [W b] G[:, K'] (G[K', K'] + damping)^-1` (K' = K plus the constant when
the bias is refitted). The damping is a share of the mean diagonal, as in SparseGPT.

Activations come from the model *as pruned so far*, layer by layer, like SparseGPT's sequential
pass: layer i's Gram matrices are gathered on the outputs of the already cut and refitted layers
before it, so errors do not compound silently. Within a layer, attention is cut first and the
MLP's Gram is gathered on the cut attention's output. Each Gram needs one forward pass of the
layer up to the consumer (the hook stops it there), and the cut layer runs once more to produce
the next layer's input: about two forward passes of the model in all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.models.architecture import decoder_layers


@dataclass
class Refit:
    weight: torch.Tensor  # [out, k]
    bias: torch.Tensor | None  # [out] (None: keep the layer's bias as it is)
    error_before: float  # relative output error of plain slicing
    error_after: float  # relative output error after the refit


def refit(weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, keep: torch.Tensor,
          damping: float, fit_bias: bool) -> Refit:
    """Least-squares refit of a consumer's kept input columns. `gram` is E[z z^T], z = [x; 1]."""
    W = weight.double()
    n = W.shape[1]
    G = gram.double().to(W.device)
    b = bias.double() if bias is not None else torch.zeros(W.shape[0], dtype=torch.float64, device=W.device)
    T = torch.cat([W, b[:, None]], 1)  # the map on z the layer computes today
    keep = keep.to(W.device)
    cols = torch.cat([keep, torch.tensor([n], device=W.device)]) if fit_bias else keep
    if fit_bias:
        target = T  # reproduce W x + b with W' x_K + b'
    else:  # the bias stays; reproduce W x
        target = torch.cat([W, torch.zeros_like(b)[:, None]], 1)
    A = G[cols][:, cols]
    A = A + damping * A.diagonal().mean() * torch.eye(len(cols), dtype=A.dtype, device=A.device)
    rhs = target @ G[:, cols]  # [out, |cols|]
    V = torch.linalg.solve(A, rhs.T).T  # rhs A^-1 (A symmetric)
    new_w = V[:, : len(keep)]
    new_b = V[:, -1] if fit_bias else None

    def err(approx: torch.Tensor) -> float:
        d = T - approx
        ref = ((T @ G) * T).sum()
        return float(((d @ G) * d).sum() / ref.clamp_min(1e-300))

    sliced = torch.zeros_like(T)
    sliced[:, keep] = W[:, keep]
    sliced[:, n] = b
    fitted = torch.zeros_like(T)
    fitted[:, keep] = new_w
    fitted[:, n] = new_b if fit_bias else b
    return Refit(new_w.to(weight.dtype), None if new_b is None else new_b.to(weight.dtype), err(sliced), err(fitted))


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the statistic it needs is gathered."""


class GramHook:
    """Accumulates E[z z^T], z = [x; 1], of a module's input; optionally stops the forward there.

    The product is computed in float64 on the input's device; `store` (default: that device) is
    where the running sum lives, so an 8B model's 32 down_proj Grams (1.6 GB each) can sit in host
    memory while each batch's product is still computed on the GPU."""

    def __init__(self, module: nn.Module, stop: bool = True, store: torch.device | None = None):
        self.gram, self.count, self.stop, self.store = None, 0, stop, store
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, _module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
        g = z.T @ z
        if self.store is not None:
            g = g.to(self.store)
        self.gram = g if self.gram is None else self.gram + g
        self.count += len(z)
        if self.stop:
            raise _Stop

    def result(self) -> torch.Tensor:
        self.handle.remove()
        return self.gram / max(self.count, 1)


@torch.no_grad()
def layer_inputs(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, dict]]:
    """The first decoder layer's input (hidden states and keyword arguments) for every batch."""
    captured = []

    def grab(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden.detach(), dict(kwargs)))
        raise _Stop

    device = next(model.parameters()).device
    handle = decoder_layers(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for s in range(0, len(blocks), batch_size):
            try:
                model(input_ids=blocks[s:s + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _run(layer: nn.Module, inputs: list[tuple[torch.Tensor, dict]]) -> list[torch.Tensor]:
    out = []
    for hidden, kwargs in inputs:
        try:
            y = layer(hidden, **kwargs)
        except _Stop:
            continue
        out.append(y[0] if isinstance(y, tuple) else y)
    return out


@torch.no_grad()
def cut_layers_sequentially(model: nn.Module, current, target, arch, consumers: list, blocks: torch.Tensor,
                            damping: float, fit_bias: bool, batch_size: int = 8,
                            bias_allowed: dict[str, bool] | None = None) -> list[dict]:
    """Cut every decoder layer of `model` (shaped like `current`) down to `target` for the consumer
    granularities, refitting each consumer by least squares on activations of the model as pruned
    so far. `consumers` lists one granularity per consumer projection, in forward order.
    Returns the per-layer report (reconstruction error before and after)."""
    bias_allowed = bias_allowed or {}
    inputs = layer_inputs(model, blocks, batch_size)
    report = []
    layers = list(zip(decoder_layers(model), target["layers"]))
    for layer_module, l in tqdm(layers, desc="cut + refit layers", unit="layer"):
        for g in consumers:
            keep = g.kept_inputs(l, current, target, arch)
            if keep is None:
                continue
            consumer = layer_module.get_submodule(g.consumer)
            hook = GramHook(consumer)
            _run(layer_module, inputs)
            gram = hook.result()
            g.slice_layer(layer_module, l, current, target, arch)
            new = layer_module.get_submodule(g.consumer)  # the sliced consumer
            use_bias = fit_bias and bias_allowed.get(g.consumer, False)
            r = refit(consumer.weight.data, consumer.bias.data if consumer.bias is not None else None, gram,
                      keep, damping, use_bias)
            new.weight.data.copy_(r.weight)
            if r.bias is not None:
                if new.bias is None:
                    new.bias = nn.Parameter(r.bias.clone())
                else:
                    new.bias.data.copy_(r.bias)
            report.append({"layer": l, "consumer": g.consumer, "kept_inputs": len(keep),
                           "inputs": consumer.in_features, "bias": use_bias,
                           "error_before": round(r.error_before, 6), "error_after": round(r.error_after, 6)})
        inputs = [(y, kw) for y, (_, kw) in zip(_run(layer_module, inputs), inputs)]
    return report
