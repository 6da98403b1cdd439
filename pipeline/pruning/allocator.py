"""The budget allocator: which units a rung keeps to meet a FLOPs (or parameter) budget.

Greedy, one move at a time: every registered granularity named in `ladder.allocator.granularities`
proposes its one-step cuts (several candidate layers; one KV group or one query head per group;
a slice of MLP width or hidden size), and the move with the smallest increase of the loss per unit
of cost saved (times the granularity's `loss_weights` entry, 1 by default) is taken, until the
budget holds.

Candidates are scored as they will be built: the parent model is made to compute exactly what the
cut model would (hooks for dropped layers and hidden channels, and for heads and MLP channels the
consumer projection swapped for its least-squares refit on the parent's activations), and the
loss is the KL to the dense model's cached top-k distribution (or the LM loss) on
`eval_blocks` calibration blocks: by default the last ones, which no refit reads (`calibration_blocks.py`). Divisible granularities size their last move to land on the
budget; indivisible moves that would overshoot it by more than `tolerance` are only taken when
nothing else is left, so a budget rung lands within `tolerance` of its target.

Memory: the refits' fp64 Gram matrices of every layer are gathered once (57 GB at 8B: `gram_store`
puts them in host memory when they would crowd the GPU), and refitted weights are cached by kept
set up to `refit_cache_gb`, beyond the accepted structure's and the round's best candidate's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from pipeline.models.architecture import decoder_layers
from pipeline.pruning.compensation import GramHook, refit
from pipeline.pruning.cut import consumers
from pipeline.pruning.distill import mean_kl
from pipeline.pruning.granularity import (
    get,
    loadable,
    registry,
    total_flops,
    total_params,
)
from pipeline.pruning.structure import Arch, Counts, Structure


@dataclass
class MoveOptions:
    """What granularities need to propose moves (from `ladder.allocator`)."""

    layer_metric: str
    layer_candidates: int
    steps: dict[str, float]  # granularity -> share of the base size cut per coarse move
    multiple_of: int
    cost: callable  # Counts -> cost relative to dense
    limit: float  # relative cost the rung must reach

    def step(self, name: str, base_size: int) -> int:
        share = self.steps.get(name, 0.0625)
        return max(self.multiple_of, int(round(base_size * share / self.multiple_of)) * self.multiple_of)


def cost_fn(arch: Arch, measure: str, context: int):
    """Counts -> cost relative to the dense base, in FLOPs/token or parameters."""
    dense = Structure.dense(arch).counts()
    if measure == "flops":
        ref = total_flops(dense, arch, context)
        return lambda c: total_flops(c, arch, context) / ref
    ref = total_params(dense, arch)
    return lambda c: total_params(c, arch) / ref


def gram_store(device: torch.device, nbytes: int, setting: str) -> torch.device:
    """Where the allocator keeps its Gram matrices: on `device`, on the `host`, or (`auto`) on the
    device unless they would take more than a quarter of its free memory (an 8B model's are 57 GB)."""
    if setting == "host":
        return torch.device("cpu")
    if setting == "auto" and device.type == "cuda" and nbytes > 0.25 * torch.cuda.mem_get_info(device)[0]:
        return torch.device("cpu")
    return device


class RefitCache:
    """Refitted consumer weights by (layer, consumer, kept inputs), least recently used first out
    past `max_bytes`. Entries of the structures the allocator holds (the accepted one and the best
    candidate of the round) are never evicted: it is sure to need them again. Eviction only costs
    time: an entry is a deterministic function of its key."""

    def __init__(self, max_bytes: float):
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.held: dict[str, set[tuple]] = {}

    def get(self, key: tuple, make) -> torch.Tensor:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = make()
        self.bytes += value.nbytes
        self._evict()
        return value

    def hold(self, role: str, keys) -> None:
        self.held[role] = set(keys)
        self._evict()

    def _evict(self) -> None:
        held = set().union(*self.held.values())
        for key in list(self.entries):
            if self.bytes <= self.max_bytes:
                break
            if key not in held:
                self.bytes -= self.entries.pop(key).nbytes


class Emulator:
    """Makes the parent model compute what a candidate structure would, without copying it."""

    def __init__(self, model: nn.Module, parent: Structure, arch: Arch, imp, gram_blocks: torch.Tensor | None,
                 compensate: bool, damping: float, batch_size: int = 8, gram_setting: str = "auto",
                 cache_bytes: float = float("inf")):
        self.model, self.parent, self.arch, self.imp = model, parent, arch, imp
        self.compensate, self.damping = compensate, damping
        self.consumers = consumers()
        self.grams: dict[tuple[int, str], torch.Tensor] = {}
        self.cache = RefitCache(cache_bytes)
        if compensate and gram_blocks is not None:
            self._gather_grams(gram_blocks, batch_size, gram_setting)

    def _layers(self):
        return zip(decoder_layers(self.model), self.parent["layers"])

    @torch.no_grad()
    def _gather_grams(self, blocks: torch.Tensor, batch_size: int, setting: str) -> None:
        modules = {(l, g.consumer): layer.get_submodule(g.consumer) for layer, l in self._layers() for g in self.consumers}
        device = next(self.model.parameters()).device
        store = gram_store(device, sum((m.in_features + 1) ** 2 * 8 for m in modules.values()), setting)
        hooks = {k: GramHook(m, stop=False, store=store) for k, m in modules.items()}
        try:
            for s in tqdm(range(0, len(blocks), batch_size), desc="allocator: consumer Gram matrices", unit="batch"):
                self.model(input_ids=blocks[s:s + batch_size].to(device), use_cache=False)
        finally:
            self.grams = {k: h.result() for k, h in hooks.items()}

    def keys(self, target: Structure) -> list[tuple]:
        """The refit-cache keys `target` uses: (layer, consumer, kept inputs) where inputs leave."""
        out = []
        for _, l in self._layers():
            if l in target["layers"]:
                for g in self.consumers:
                    keep = g.kept_inputs(l, self.parent, target, self.arch)
                    if keep is not None:
                        out.append((l, g.consumer, tuple(keep.tolist())))
        return out

    def _consumer_weight(self, l: int, name: str, module: nn.Linear, keep: torch.Tensor) -> torch.Tensor:
        def make():
            w = module.weight.data
            full = torch.zeros_like(w)
            if self.compensate and (l, name) in self.grams:
                r = refit(w, module.bias.data if module.bias is not None else None, self.grams[(l, name)],
                          keep, self.damping, fit_bias=False)  # refit moves a host Gram to w's device
                full[:, keep.to(w.device)] = r.weight
            else:
                full[:, keep.to(w.device)] = w[:, keep.to(w.device)]
            return full

        return self.cache.get((l, name, tuple(keep.tolist())), make)

    def __call__(self, target: Structure) -> "_Applied":
        handles, saved = [], []
        for g in registry():
            if g.consumer is None:
                handles += g.emulate(self.model, self.parent, target, self.arch, self.imp)
        for layer, l in self._layers():
            if l not in target["layers"]:
                continue
            for g in self.consumers:
                keep = g.kept_inputs(l, self.parent, target, self.arch)
                if keep is None:
                    continue
                module = layer.get_submodule(g.consumer)
                saved.append((module, module.weight.data))
                module.weight.data = self._consumer_weight(l, g.consumer, module, keep)
        return _Applied(handles, saved)


class _Applied:
    def __init__(self, handles, saved):
        self.handles, self.saved = handles, saved

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for module, w in self.saved:
            module.weight.data = w


@dataclass
class Allocation:
    structure: Structure
    trace: list[dict] = field(default_factory=list)
    seconds_per_candidate: float | None = None


def allocate(model: nn.Module, parent: Structure, imp, arch: Arch, cfg, budget: float, measure: str,
             loss_fn, gram_blocks: torch.Tensor | None, context: int) -> Allocation:
    """Greedily cut the move with least loss increase per unit of cost saved until cost <= budget.

    `model` is the parent checkpoint (shaped like `parent`); `loss_fn(model) -> float` scores it
    (KL to the dense model, or LM loss) on the allocator's evaluation blocks."""
    import time

    cost = cost_fn(arch, measure, context)
    opts = MoveOptions(cfg.layer_metric, cfg.layer_candidates, {"mlp": cfg.mlp_step, "hidden": cfg.hidden_step},
                       cfg.multiple_of, cost, budget)
    emulate = Emulator(model, parent, arch, imp, gram_blocks, cfg.compensate, cfg.damping,
                       gram_setting=cfg.gram_store, cache_bytes=cfg.refit_cache_gb * 1e9)
    names = list(cfg.granularities)
    unknown = [n for n in names if n not in {g.name for g in registry()}]
    if unknown:
        raise ValueError(f"ladder.allocator.granularities: unknown {unknown}; registered: {[g.name for g in registry()]}")
    weights = dict(cfg.loss_weights)
    unknown = [n for n in weights if n not in {g.name for g in registry()}]
    if unknown:
        raise ValueError(f"ladder.allocator.loss_weights: unknown {unknown}; registered: {[g.name for g in registry()]}")

    def loss_of(s: Structure) -> float:
        with emulate(s):
            return loss_fn(model)

    s, counts = parent, parent.counts()
    current_loss = loss_of(parent)
    trace = [{"move": "start", "counts": counts.to_json(), "cost": cost(counts), "loss": current_loss}]
    bar = tqdm(desc=f"allocate to {budget:.0%} {measure}", unit="move")
    timed, n_timed = 0.0, 0
    while cost(counts) > budget + 1e-12:
        cands = []
        for name in names:
            for label, cand in get(name).moves(s, parent, imp, arch, opts):
                c = cand.counts()
                if loadable(c, arch) and cost(c) < cost(counts):
                    cands.append((name, label, cand, c))
        if not cands:
            raise ValueError(f"cannot reach {budget:.0%} of dense {measure} with granularities {names} "
                             f"(stuck at {cost(counts):.3f})")
        within = [x for x in cands if cost(x[3]) >= budget - cfg.tolerance]
        cands = within or cands  # overshoot only when nothing lands within tolerance
        best, tried = None, []
        for name, label, cand, c in cands:
            t = time.perf_counter()
            loss = loss_of(cand)
            timed += time.perf_counter() - t
            n_timed += 1
            score = weights.get(name, 1.0) * (loss - current_loss) / (cost(counts) - cost(c))
            tried.append({"move": name, "detail": label, "cost": round(cost(c), 5), "loss": round(loss, 6)})
            if best is None or score < best[0]:
                best = (score, name, label, cand, c, loss)
                emulate.cache.hold("best", emulate.keys(cand))
        _, name, label, s, counts, current_loss = best
        emulate.cache.hold("current", emulate.keys(s))
        if math.isnan(current_loss):
            raise ValueError("the allocator's loss became NaN")
        trace.append({"move": name, "detail": label, "counts": counts.to_json(), "cost": cost(counts),
                      "loss": current_loss, "candidates": len(cands), "tried": tried})
        bar.update(1)
        bar.set_postfix(cost=f"{cost(counts):.3f}", loss=f"{current_loss:.4f}")
    bar.close()
    return Allocation(s, trace, timed / max(n_timed, 1))


def kl_loss(cache: dict[str, torch.Tensor], batch_size: int = 4):
    return lambda model: mean_kl(model, cache, batch_size)


def lm_loss(blocks: torch.Tensor):
    from pipeline.evaluation.scoring import perplexity

    return lambda model: perplexity(model, blocks, progress=False)["nll_per_token"]


def counts_cost(counts: Counts, arch: Arch, context: int) -> dict:
    """Analytic cost of a shape: FLOPs/token and parameters, and per granularity."""
    return {"flops_per_token": total_flops(counts, arch, context), "params": total_params(counts, arch),
            "by_granularity": {g.name: {"flops": g.flops(counts, arch, context), "params": g.params(counts, arch)}
                               for g in registry()}}
