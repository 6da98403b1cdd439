"""From a rung's recipe to the units it keeps, checked before any model is loaded.

A recipe gives absolute counts (layers dropped, KV groups, query heads per group, MLP and hidden
share kept); unspecified granularities stay as the parent has them. `check_counts` refuses
what the model cannot do or what would not be a sub-network of the parent, naming the key.
`select_structure` then picks, granularity by granularity, the most important units inside the
parent's kept sets, so rungs nest by construction.
"""

from __future__ import annotations

from pipeline.pruning.granularity import loadable, registry
from pipeline.pruning.structure import Arch, Counts, Structure


def _rounded(size: int, keep: float, multiple_of: int) -> int:
    return min(size, max(multiple_of, int(round(size * keep / multiple_of)) * multiple_of))


def recipe_counts(recipe, arch: Arch, parent: Counts) -> Counts:
    """The counts a recipe asks for (absolute, relative to the base)."""
    c = dict(parent)
    if recipe is None:
        return Counts(c)
    if recipe.layers is not None:
        c["layers"] = arch.layers - recipe.layers.drop
    if recipe.attention is not None:
        c["kv_heads"] = recipe.attention.kv_heads or c["kv_heads"]
        c["q_heads"] = recipe.attention.q_per_kv or c["q_heads"]
    if recipe.mlp is not None:
        c["mlp"] = _rounded(arch.mlp, recipe.mlp.keep, recipe.mlp.multiple_of)
    if recipe.hidden is not None:
        c["hidden"] = _rounded(arch.hidden, recipe.hidden.keep, recipe.hidden.multiple_of)
    return Counts(c)


RECIPE_KEY = {"layers": "layers.drop", "kv_heads": "attention.kv_heads", "q_heads": "attention.q_per_kv",
              "mlp": "mlp.keep", "hidden": "hidden.keep"}


def check_counts(counts: Counts, arch: Arch, parent: Counts, where: str) -> None:
    """Fail before any work if a rung asks for the impossible or is not a sub-network of its parent."""
    dense = Structure.dense(arch).counts()
    for name, value in counts.items():
        key = f"{where}.recipe.{RECIPE_KEY.get(name, name)}"
        if not 1 <= value <= dense[name]:
            raise ValueError(f"{key}: out of range (the base model has {dense[name]} {name}; at least 1 must remain)")
        if value > parent[name]:
            raise ValueError(f"{where}: keeps more {name} ({value}) than its parent ({parent[name]}); "
                             "a child must be a sub-network of its parent")
    if not loadable(counts, arch):
        n_q = counts["kv_heads"] * counts["q_heads"]
        raise ValueError(f"{where}.recipe: {n_q} query heads do not divide hidden_size {counts['hidden']}; "
                         f"transformers refuses such a {arch.model_type} config, and this ladder's rungs cannot "
                         "be stored as mistral instead (llama with attention_bias / mlp_bias, or "
                         "ladder.compensation.bias=true)")


def select_structure(parent: Structure, counts: Counts, imp, arch: Arch,
                     layer_metric: str = "block_influence") -> Structure:
    """The units `counts` keeps: the most important ones inside the parent's kept sets."""
    s = parent
    for g in registry():
        if g.name in counts and counts[g.name] != g.count(s):
            kw = {"metric": layer_metric} if g.name == "layers" else {}
            s = g.select(s, parent, counts[g.name], imp, arch, **kw)
    return s


def is_nested(child: Structure, parent: Structure) -> list[str]:
    """Granularities whose kept units are not a subset of the parent's (empty: nested)."""
    bad = []
    for g in registry():
        c, p = child[g.name], parent[g.name]
        if isinstance(c, dict):
            if any(not set(c[l]) <= set(p[l]) for l in child["layers"]):
                bad.append(g.name)
        elif not set(c) <= set(p):
            bad.append(g.name)
    return bad

