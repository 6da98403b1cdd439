"""Stage `prune@<rung>`: cut one rung of the ladder from its parent, coarse to fine.

Reads the parent checkpoint (`artifacts/base` for `dense`, else
`artifacts/ladder/<parent>`), calibration importance and blocks. Then:
  1. shape: the recipe's layer/attention/MLP counts, or the allocator's choice
     for a budget (`target_flops` / `target_params`);
  2. structured removal: drop layers, then heads, then MLP channels, keeping the
     most important units inside the parent's (so rungs nest);
  3. weights: SparseGPT / Wanda (llmcompressor) or magnitude, unstructured or N:M,
     optionally with OWL layer-wise sparsity;
  4. optional healing: distillation from the dense model on calibration text.
Writes `artifacts/ladder/<rung>/`: safetensors checkpoint, tokenizer,
`recipe.yaml`, `pruning_report.json` and a model card (`README.md`).
`--rung dense` writes the unpruned base as rung 0, so every rung looks alike.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--rung", required=True)
    ap.add_argument("--base", default="artifacts/base")
    ap.add_argument("--calibration", default="artifacts/calibrate")
    ap.add_argument("--data", default="artifacts/data")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")


def _plan(st):
    """Everything checkable from small JSON files, before loading any model."""
    from pipeline.pruning.allocator import (
        BaseShape,
        Counts,
        check_recipe,
        recipe_counts,
    )

    args, ladder = st.args, st.cfg.ladder
    base = BaseShape.from_config(json.loads((Path(args.base) / "config.json").read_text()))
    if args.rung == "dense":
        return base, None, base.dense_counts(), base.dense_counts()
    if args.rung not in ladder.rungs:
        raise SystemExit(f"prune: no rung '{args.rung}' in ladder '{ladder.name}'; rungs: {list(ladder.rungs)}")
    rung = ladder.rungs[args.rung]
    parent_dir = Path(args.ladder_dir) / rung.parent
    parent_report = json.loads((parent_dir / "pruning_report.json").read_text())
    parent_counts = Counts(**parent_report["counts"])
    where = f"ladder.rungs.{args.rung}"
    if rung.target_flops is not None or rung.target_params is not None:
        measure = "flops" if rung.target_flops is not None else "params"
        target = rung.target_flops if measure == "flops" else rung.target_params
        have = parent_report["relative"][measure]
        if have <= target:
            raise ValueError(f"{where}.target_{measure}={target}: parent '{rung.parent}' is already at {have:.3f}")
        return base, rung, parent_counts, None
    counts = recipe_counts(rung.recipe, base, parent_counts)
    check_recipe(counts, base, parent_counts, where)
    return base, rung, parent_counts, counts


def main(argv: list[str] | None = None) -> None:
    st = begin("prune", _args, argv)
    try:
        base_shape, rung, parent_counts, counts = _plan(st)
    except ValueError as exc:
        raise SystemExit(f"prune: {exc}") from None

    import torch
    import yaml
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    from pipeline.common.assets import sha256_file
    from pipeline.common.atomic import atomic_dir
    from pipeline.models.card import base_facts, model_card
    from pipeline.models.cost import model_cost, module_sparsity
    from pipeline.pruning.allocator import Structure, allocate, apply_structure, select
    from pipeline.pruning.importance import Importance
    from pipeline.pruning.sparsity import prune_weights

    args, ladder, name = st.args, st.cfg.ladder, st.args.rung
    t0 = time.perf_counter()
    parent_dir = Path(args.base) if rung is None else Path(args.ladder_dir) / rung.parent

    with st.tracked() as tracker:
        model = AutoModelForCausalLM.from_pretrained(parent_dir, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(args.base)
        dense_cost = model_cost(AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)) \
            if name != "dense" else None
        recipe_out: dict = {"rung": name, "parent": rung.parent if rung else None, "steps": []}
        trace = []
        if name == "dense":
            structure = Structure.dense(base_shape.layers, base_shape.heads, base_shape.kv_heads, base_shape.mlp)
        else:
            parent_report = json.loads((parent_dir / "pruning_report.json").read_text())
            parent_structure = Structure.from_json(parent_report["structure"])
            imp_t = load_file(str(Path(args.calibration) / "importance.safetensors"))
            imp = Importance.from_tensors(imp_t, tokens=0)
            blocks = load_file(str(Path(args.data) / "calibration.safetensors"))["input_ids"]
            metric = rung.recipe.layers.metric if rung.recipe and rung.recipe.layers else "block_influence"
            if counts is None:  # budget rung: the allocator picks the shape
                measure = "flops" if rung.target_flops is not None else "params"
                budget = rung.target_flops if measure == "flops" else rung.target_params
                alloc = allocate(model, parent_structure, imp, base_shape, ladder.allocator,
                                 blocks[: ladder.allocator.eval_blocks], budget, measure)
                counts, structure, trace = alloc.counts, alloc.structure, alloc.trace
                recipe_out["steps"].append({"allocator": {f"target_{measure}": budget,
                                                          **ladder.allocator.model_dump()}})
            else:
                structure = select(parent_structure, counts, imp, metric)
            apply_structure(model, parent_structure, structure)
            recipe_out["steps"].append({"structured": {
                "layers_kept": counts.layers, "kv_heads": counts.kv_heads, "q_per_kv": counts.q_per_kv,
                "mlp_channels": counts.mlp, "layer_metric": metric,
                "head_metric": "rms contribution to residual", "mlp_metric": "rms contribution to residual"}})
            weights = rung.recipe.weights if rung.recipe else None
            if weights is not None:
                outliers = imp.owl_outlier_ratio[torch.tensor(structure.layers)]
                applied = prune_weights(model, weights, blocks[: ladder.weight_calibration_blocks], outliers)
                recipe_out["steps"].append({"weights": applied})
            if ladder.heal.enabled:
                from pipeline.pruning.heal import distill

                teacher = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32).eval()
                recipe_out["steps"].append({"heal": distill(model, teacher, blocks, ladder.heal)})

        cost = model_cost(model)
        dense_cost = dense_cost or cost
        report = {
            "rung": name,
            "parent": rung.parent if rung else None,
            "counts": counts.__dict__,
            "structure": structure.to_json(),
            "layers_removed": [l for l in range(base_shape.layers) if l not in structure.layers],
            "heads_kept": {l: structure.q[l] for l in structure.layers},
            "kv_heads_kept": {l: structure.kv[l] for l in structure.layers},
            "mlp_channels_kept": counts.mlp,
            **cost,
            "relative": {
                "flops": cost["flops_per_token"] / dense_cost["flops_per_token"],
                "nonzero_flops": cost["nonzero_flops_per_token"] / dense_cost["flops_per_token"],
                "params": cost["params"] / dense_cost["params"],
                "nonzero_params": cost["nonzero_params"] / dense_cost["params"],
            },
            "module_sparsity": module_sparsity(model),
            "allocator_trace": trace,
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        out = Path(args.ladder_dir) / name
        with atomic_dir(out) as tmp:
            # The class method, not the instance's: llmcompressor wraps the instance's
            # save_pretrained to write its own recipe and compression config.
            PreTrainedModel.save_pretrained(model, tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            report["weights_sha256"] = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe_out, sort_keys=False))
            (tmp / "pruning_report.json").write_text(json.dumps(report, indent=2) + "\n")
            (tmp / "README.md").write_text(model_card(name, report, recipe_out, base_facts(args.base)))
        tracker.summary({k: report[k] for k in ("params", "nonzero_params", "flops_per_token")}
                        | {f"relative/{k}": v for k, v in report["relative"].items()})
    st.done(
        read=f"parent {parent_dir}",
        wrote=f"{out}/ ({counts.layers} layers, {counts.kv_heads}x{counts.q_per_kv} heads, MLP {counts.mlp}; "
        f"{report['relative']['flops']:.1%} FLOPs, {report['relative']['nonzero_params']:.1%} non-zero params)",
    )


if __name__ == "__main__":
    main()
