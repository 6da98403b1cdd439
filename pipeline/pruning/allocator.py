"""Which units a rung keeps, and how the budget allocator chooses them.

A `Structure` names the surviving units by their index in the *base* model:
kept layers, and per kept layer the kept KV heads, query heads and MLP
channels. Selection always ranks by the base model's calibration importance and
picks inside the parent's kept sets, so a child's units are a subset of its
parent's: the ladder is a chain of sub-networks by construction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from pipeline.common.config import AllocatorConfig, Recipe
from pipeline.evaluation.scoring import perplexity
from pipeline.models.cost import config_flops_per_token
from pipeline.pruning.importance import Importance, decoder_layers
from pipeline.pruning.slicing import drop_layers, prune_heads, prune_mlp


@dataclass
class Structure:
    layers: list[int]  # base indices of kept layers, ascending
    kv: dict[int, list[int]]  # base layer -> kept base KV heads, ascending
    q: dict[int, list[int]]  # base layer -> kept base query heads, in model order (group by group)
    mlp: dict[int, list[int]]  # base layer -> kept base MLP channels, ascending
    group: int  # query heads per KV head in the base model

    @classmethod
    def dense(cls, n_layers: int, n_heads: int, n_kv: int, intermediate: int) -> "Structure":
        return cls(
            layers=list(range(n_layers)),
            kv={l: list(range(n_kv)) for l in range(n_layers)},
            q={l: list(range(n_heads)) for l in range(n_layers)},
            mlp={l: list(range(intermediate)) for l in range(n_layers)},
            group=n_heads // n_kv,
        )

    @classmethod
    def from_json(cls, d: dict) -> "Structure":
        as_int = lambda m: {int(k): v for k, v in m.items()}  # noqa: E731 (JSON keys are strings)
        return cls(d["layers"], as_int(d["kv"]), as_int(d["q"]), as_int(d["mlp"]), d["group"])

    def to_json(self) -> dict:
        return asdict(self)

    def counts(self) -> "Counts":
        l0 = self.layers[0]
        return Counts(len(self.layers), len(self.kv[l0]), len(self.q[l0]) // len(self.kv[l0]), len(self.mlp[l0]))


@dataclass(frozen=True)
class Counts:
    """The uniform shape of a rung: what the HF config can express."""

    layers: int
    kv_heads: int
    q_per_kv: int
    mlp: int

    def flops(self, base: "BaseShape") -> int:
        return config_flops_per_token(self.layers, base.hidden, self.kv_heads * self.q_per_kv, self.kv_heads,
                                      base.head_dim, self.mlp, base.vocab)

    def params(self, base: "BaseShape") -> int:
        per_layer = (base.hidden * base.head_dim * (2 * self.kv_heads * self.q_per_kv + 2 * self.kv_heads)
                     + 3 * base.hidden * self.mlp + 2 * base.hidden)
        head = 0 if base.tied else base.vocab * base.hidden
        return self.layers * per_layer + base.vocab * base.hidden + head + base.hidden


@dataclass(frozen=True)
class BaseShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, c) -> "BaseShape":
        get = c.get if isinstance(c, dict) else lambda k, d=None: getattr(c, k, d)
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        return cls(get("num_hidden_layers"), hidden, heads, get("num_key_value_heads"),
                   get("head_dim") or hidden // heads, get("intermediate_size"), get("vocab_size"),
                   bool(get("tie_word_embeddings", False)))

    def dense_counts(self) -> Counts:
        return Counts(self.layers, self.kv_heads, self.heads // self.kv_heads, self.mlp)


def recipe_counts(recipe: Recipe | None, base: BaseShape, parent: Counts) -> Counts:
    """The shape a recipe asks for; unspecified granularities stay as the parent has them."""
    c = parent
    if recipe is None:
        return c
    if recipe.layers is not None:
        c = Counts(base.layers - recipe.layers.drop, c.kv_heads, c.q_per_kv, c.mlp)
    if recipe.attention is not None:
        a = recipe.attention
        c = Counts(c.layers, a.kv_heads or c.kv_heads, a.q_per_kv or c.q_per_kv, c.mlp)
    if recipe.mlp is not None:
        m = recipe.mlp
        width = max(m.multiple_of, int(round(base.mlp * m.keep / m.multiple_of)) * m.multiple_of)
        c = Counts(c.layers, c.kv_heads, c.q_per_kv, min(width, base.mlp))
    return c


def heads_loadable(c: Counts, base: BaseShape) -> bool:
    # transformers 5 validates hidden_size % num_attention_heads == 0 even with explicit head_dim.
    return base.hidden % (c.kv_heads * c.q_per_kv) == 0


def check_recipe(counts: Counts, base: BaseShape, parent: Counts, where: str) -> None:
    """Fail before any work if a rung asks for the impossible or is not a sub-network of its parent."""
    limits = {
        "layers.drop": (counts.layers, 1, base.layers, "at least one layer must remain"),
        "attention.kv_heads": (counts.kv_heads, 1, base.kv_heads, f"the model has {base.kv_heads} KV heads"),
        "attention.q_per_kv": (counts.q_per_kv, 1, base.heads // base.kv_heads,
                               f"the model has {base.heads // base.kv_heads} query heads per KV head"),
        "mlp.keep": (counts.mlp, 1, base.mlp, f"the model has {base.mlp} MLP channels"),
    }
    for key, (value, lo, hi, why) in limits.items():
        if not lo <= value <= hi:
            raise ValueError(f"{where}.recipe.{key}: out of range ({why})")
    if not heads_loadable(counts, base):
        raise ValueError(
            f"{where}.recipe.attention: {counts.kv_heads * counts.q_per_kv} query heads do not divide "
            f"hidden_size {base.hidden}; transformers refuses such a config"
        )
    for f in ("layers", "kv_heads", "q_per_kv", "mlp"):
        if getattr(counts, f) > getattr(parent, f):
            raise ValueError(
                f"{where}: keeps more {f} ({getattr(counts, f)}) than its parent ({getattr(parent, f)}); "
                "a child must be a sub-network of its parent"
            )


def select(parent: Structure, counts: Counts, imp: Importance, layer_metric: str = "block_influence") -> Structure:
    """The units `counts` keeps: the most important ones inside the parent's kept sets."""
    layer_score = getattr(imp, layer_metric)
    layers = sorted(sorted(parent.layers, key=lambda l: -float(layer_score[l]))[: counts.layers])
    kv, q, mlp = {}, {}, {}
    for l in layers:
        kv[l] = sorted(sorted(parent.kv[l], key=lambda g: -float(imp.kv_group[l, g]))[: counts.kv_heads])
        q[l] = [
            h
            for g in kv[l]
            for h in sorted(
                sorted((h for h in parent.q[l] if h // parent.group == g), key=lambda h: -float(imp.head[l, h]))[
                    : counts.q_per_kv
                ]
            )
        ]
        mlp[l] = sorted(sorted(parent.mlp[l], key=lambda c: -float(imp.mlp_channel[l, c]))[: counts.mlp])
    return Structure(layers, kv, q, mlp, parent.group)


def apply_structure(model: nn.Module, current: Structure, target: Structure) -> None:
    """Physically cut `model` (shaped like `current`) down to `target`."""
    drop = [i for i, l in enumerate(current.layers) if l not in set(target.layers)]
    if drop:
        drop_layers(model, drop)
    if any(target.q[l] != current.q[l] or target.kv[l] != current.kv[l] for l in target.layers):
        keep_q = [[current.q[l].index(h) for h in target.q[l]] for l in target.layers]
        keep_kv = [[current.kv[l].index(g) for g in target.kv[l]] for l in target.layers]
        prune_heads(model, keep_q, keep_kv)
    if any(target.mlp[l] != current.mlp[l] for l in target.layers):
        prune_mlp(model, [[current.mlp[l].index(c) for c in target.mlp[l]] for l in target.layers])


# --- budget allocation -------------------------------------------------------


class _Masks:
    """Forward hooks that make `model` (shaped like `current`) behave as `target`, exactly.

    Dropping a layer = returning its input; removing a query head = zeroing its
    `o_proj` input slice; removing an MLP channel = zeroing its `down_proj` input.
    These equal physical removal, and cost nothing to switch between candidates.
    """

    def __init__(self, model: nn.Module, current: Structure, target: Structure):
        self.handles = []
        hd = model.config.head_dim
        for i, (layer, l) in enumerate(zip(decoder_layers(model), current.layers)):
            if l not in target.layers:
                self.handles.append(layer.register_forward_hook(_identity, with_kwargs=True))
                continue
            q_keep = torch.tensor([h in set(target.q[l]) for h in current.q[l]], dtype=torch.float32)
            if not bool(q_keep.all()):
                mask = q_keep.repeat_interleave(hd)
                self.handles.append(layer.self_attn.o_proj.register_forward_pre_hook(_scale(mask)))
            c_keep = torch.tensor([c in set(target.mlp[l]) for c in current.mlp[l]], dtype=torch.float32)
            if not bool(c_keep.all()):
                self.handles.append(layer.mlp.down_proj.register_forward_pre_hook(_scale(c_keep)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _identity(_module, args, kwargs, _out):
    return args[0] if args else kwargs["hidden_states"]


def _scale(mask: torch.Tensor):
    def hook(_module, args):
        return (args[0] * mask.to(args[0].dtype),)
    return hook


def lm_loss(model: nn.Module, blocks: torch.Tensor) -> float:
    """Mean next-token cross-entropy over `blocks`, as the evaluation's perplexity defines it."""
    return perplexity(model, blocks, progress=False)["nll_per_token"]


@dataclass
class Allocation:
    counts: Counts
    structure: Structure
    trace: list[dict] = field(default_factory=list)


def _moves(c: Counts, base: BaseShape, alloc: AllocatorConfig) -> dict[str, Counts]:
    step = max(8, int(round(base.mlp * alloc.mlp_step / 8)) * 8)
    options = {
        "layers": Counts(c.layers - 1, c.kv_heads, c.q_per_kv, c.mlp) if c.layers > 1 else None,
        "kv_heads": Counts(c.layers, c.kv_heads - 1, c.q_per_kv, c.mlp) if c.kv_heads > 1 else None,
        "q_heads": Counts(c.layers, c.kv_heads, c.q_per_kv - 1, c.mlp) if c.q_per_kv > 1 else None,
        "mlp": Counts(c.layers, c.kv_heads, c.q_per_kv, c.mlp - step) if c.mlp > step else None,
    }
    return {k: v for k, v in options.items()
            if v is not None and k in alloc.granularities and heads_loadable(v, base)}


def allocate(model: nn.Module, parent: Structure, imp: Importance, base: BaseShape, alloc: AllocatorConfig,
             blocks: torch.Tensor, budget: float, measure: str = "flops") -> Allocation:
    """Greedily cut the move with the least calibration-loss increase per unit of cost saved,
    until cost <= budget x dense cost. `model` is the parent checkpoint."""
    cost = (lambda c: c.flops(base)) if measure == "flops" else (lambda c: c.params(base))  # noqa: E731
    limit = budget * cost(base.dense_counts())
    counts, structure = parent.counts(), parent

    def loss_of(s: Structure) -> float:
        masks = _Masks(model, parent, s)
        try:
            return lm_loss(model, blocks)
        finally:
            masks.remove()

    current_loss = loss_of(parent)
    trace = [{"move": "start", "counts": asdict(counts), "cost": cost(counts) / cost(base.dense_counts()),
              "loss": current_loss}]
    # Upper bound on moves, for the progress bar only.
    bar = tqdm(desc=f"allocate to {budget:.0%} {measure}", unit="move", total=None)
    while cost(counts) > limit:
        best = None
        for name, cand in _moves(counts, base, alloc).items():
            s = select(parent, cand, imp)
            loss = loss_of(s)
            saved = cost(counts) - cost(cand)
            score = (loss - current_loss) / saved
            if best is None or score < best[0]:
                best = (score, name, cand, s, loss)
        if best is None:
            raise ValueError(f"cannot reach {budget:.0%} of dense {measure} with granularities {alloc.granularities}")
        _, name, counts, structure, current_loss = best
        trace.append({"move": name, "counts": asdict(counts), "cost": cost(counts) / cost(base.dense_counts()),
                      "loss": current_loss})
        bar.update(1)
        bar.set_postfix(cost=f"{trace[-1]['cost']:.3f}", loss=f"{current_loss:.3f}")
    bar.close()
    if math.isnan(current_loss):
        raise ValueError("calibration loss became NaN during allocation")
    return Allocation(counts, structure, trace)
