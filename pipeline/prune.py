"""Stage `prune@<rung>`: cut one rung of the ladder from its parent, coarse to fine, then heal it.

Reads the parent checkpoint (`artifacts/base` for `dense`, else `artifacts/ladder/<parent>`), the
calibration importance and blocks, and the dense model's cached distribution
(`artifacts/teacher/`). Then:
  1. shape: the recipe's counts, or for a budget (`target_flops` / `target_params`) the
     allocator's choice, scored with compensation against the dense model
     (`pipeline/pruning/allocator.py`);
  2. structured removal, granularity by granularity (`pipeline/pruning/granularities/`), keeping
     the most important units inside the parent's so rungs nest, with the consumer projections
     refitted by least squares layer by layer (`pipeline/pruning/compensation.py`);
  3. weights: SparseGPT / Wanda (llmcompressor) or magnitude, unstructured or N:M, optionally with
     OWL layer-wise sparsity (`pipeline/pruning/sparsity.py`);
  4. healing (`ladder.heal.enabled`): distillation from the dense model (`pipeline/pruning/heal.py`).
Writes `artifacts/ladder/<rung>/`: safetensors checkpoint, tokenizer, `recipe.yaml` (the exact
steps with their parameters), `pruning_report.json` and a model card (`README.md`).
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
    ap.add_argument("--teacher", default="artifacts/teacher")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")


def _plan(st):
    """Everything checkable from small JSON files, before loading any model."""
    from pipeline.models.architecture import bias_flags, check_supported
    from pipeline.pruning.granularity import registry
    from pipeline.pruning.plan import check_counts, recipe_counts
    from pipeline.pruning.structure import Arch, Structure

    args, ladder = st.args, st.cfg.ladder
    base_config = json.loads((Path(args.base) / "config.json").read_text())
    check_supported(base_config, str(Path(args.base) / "config.json"))
    if ladder.compensation.bias and not bias_flags(base_config["model_type"]):
        raise ValueError(f"ladder.compensation.bias=true: a {base_config['model_type']} model has no o_proj / "
                         "down_proj bias to store the refitted intercept in (only llama's attention_bias / "
                         "mlp_bias can); set ladder.compensation.bias=false")
    arch = Arch.from_config(base_config, bias_compensation=ladder.compensation.bias)
    if args.rung == "dense":
        return arch, None, None, Structure.dense(arch).counts()
    if args.rung not in ladder.rungs:
        raise ValueError(f"no rung '{args.rung}' in ladder '{ladder.name}'; rungs: {list(ladder.rungs)}")
    rung = ladder.rungs[args.rung]
    where = f"ladder.rungs.{args.rung}"
    parent_report = json.loads((Path(args.ladder_dir) / rung.parent / "pruning_report.json").read_text())
    parent = Structure.from_json(parent_report["structure"], arch)
    if rung.target_flops is not None or rung.target_params is not None:
        measure = "flops" if rung.target_flops is not None else "params"
        target = rung.target_flops if measure == "flops" else rung.target_params
        have = parent_report["relative"][measure]
        if have <= target:
            raise ValueError(f"{where}.target_{measure}={target}: parent '{rung.parent}' is already at {have:.3f}")
        known = {g.name for g in registry()}
        for key in ("granularities", "loss_weights"):
            unknown = [g for g in getattr(ladder.allocator, key) if g not in known]
            if unknown:
                raise ValueError(f"ladder.allocator.{key}: unknown {unknown}; registered: {sorted(known)}")
        return arch, rung, parent, None
    counts = recipe_counts(rung.recipe, arch, parent.counts())
    check_counts(counts, arch, parent.counts(), where)
    return arch, rung, parent, counts


def main(argv: list[str] | None = None) -> None:
    st = begin("prune", _args, argv)
    try:
        arch, rung, parent, counts = _plan(st)
    except ValueError as exc:
        raise SystemExit(f"prune: {exc}") from None

    import yaml
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, PreTrainedModel

    from pipeline.common.atomic import atomic_dir
    from pipeline.common.timings import timings_path, write_timings
    from pipeline.models.architecture import storable_model
    from pipeline.models.loading import load_causal_lm
    from pipeline.models.card import base_facts, model_card
    from pipeline.models.checkpoint import file_digests, save_tokenizer
    from pipeline.models.cost import DEFAULT_CONTEXT, model_cost, module_sparsity
    from pipeline.pruning.allocator import allocate, counts_cost, kl_loss, lm_loss
    from pipeline.pruning.calibration_blocks import split_blocks
    from pipeline.pruning.cut import cut_to
    from pipeline.pruning.importance import Importance
    from pipeline.pruning.plan import select_structure
    from pipeline.pruning.sparsity import prune_weights
    from pipeline.pruning.structure import Structure

    args, ladder, name = st.args, st.cfg.ladder, st.args.rung
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    parent_dir = Path(args.base) if rung is None else Path(args.ladder_dir) / rung.parent

    with st.tracked() as tracker:
        model = load_causal_lm(parent_dir, st.cfg.model)
        tok = AutoTokenizer.from_pretrained(args.base)
        recipe_out: dict = {"rung": name, "parent": rung.parent if rung else None, "steps": []}
        trace, cut_report, heal_report = [], None, None
        if rung is None:
            structure = Structure.dense(arch)
        else:
            imp = Importance.from_tensors(load_file(str(Path(args.calibration) / "importance.safetensors")))
            # The allocator scores on reserved blocks; refits and weight pruning fit on the others.
            scoring, blocks = split_blocks(load_file(str(Path(args.data) / "calibration.safetensors"))["input_ids"],
                                           ladder.allocator)
            if counts is None:  # budget rung: the allocator picks the shape
                a = ladder.allocator
                measure = "flops" if rung.target_flops is not None else "params"
                budget = rung.target_flops if measure == "flops" else rung.target_params
                if a.loss == "kl":
                    loss_fn = kl_loss(load_file(str(Path(args.teacher) / "allocator.safetensors")))
                else:
                    loss_fn = lm_loss(scoring)
                t = time.perf_counter()
                alloc = allocate(model, parent, imp, arch, _allocator_options(a, ladder.compensation), budget,
                                 measure, loss_fn, blocks[: a.gram_blocks] if a.compensate else None, DEFAULT_CONTEXT)
                seconds["allocate"] = round(time.perf_counter() - t, 1)
                structure, trace = alloc.structure, alloc.trace
                if alloc.seconds_per_candidate is not None:
                    seconds["allocate_per_candidate"] = round(alloc.seconds_per_candidate, 2)
                recipe_out["steps"].append({"allocator": {f"target_{measure}": budget, **a.model_dump()}})
            else:
                metric = rung.recipe.layers.metric if rung.recipe and rung.recipe.layers else "block_influence"
                structure = select_structure(parent, counts, imp, arch, metric)
            comp = ladder.compensation
            t = time.perf_counter()
            cut_report = cut_to(model, parent, structure, arch, imp,
                                blocks[: comp.blocks] if comp.enabled else None, comp.enabled, comp.damping, comp.bias,
                                depth=(blocks[: comp.depth_blocks], comp.depth_damping) if comp.enabled and comp.depth else None)
            model, stored_as = storable_model(model)  # a Llama head count LlamaConfig refuses: as Mistral
            seconds["cut_and_compensate"] = round(time.perf_counter() - t, 1)
            seconds.update({f"cut/{k}": v for k, v in cut_report.pop("seconds").items()})
            c = structure.counts()
            recipe_out["steps"].append({"structured": {
                "granularities": {g: c[g] for g in c},
                "scores": {"layers": "block influence" if not (rung.recipe and rung.recipe.layers)
                           else rung.recipe.layers.metric, "hidden": "rms at every norm output (Minitron)",
                           "kv_heads": "rms contribution to residual", "q_heads": "rms contribution to residual",
                           "mlp": "rms contribution to residual"},
                "compensation": {**ladder.compensation.model_dump(), "applied": cut_report["compensation"]},
                **({"stored_as": stored_as} if stored_as else {})}})
            if stored_as:
                cut_report["stored_as"] = stored_as
            weights = rung.recipe.weights if rung.recipe else None
            if weights is not None:
                t = time.perf_counter()
                applied = prune_weights(model, weights, blocks[: ladder.weight_calibration_blocks], structure, arch, imp)
                seconds["weights"] = round(time.perf_counter() - t, 1)
                recipe_out["steps"].append({"weights": applied})
            if ladder.heal.enabled:
                from pipeline.pruning.heal import heal

                teacher = Path(args.teacher)
                t = time.perf_counter()
                heal_report = heal(model, load_file(str(teacher / "heal.safetensors")),
                                   load_file(str(teacher / "heal_val.safetensors")), ladder.heal, st.cfg.seed)
                seconds["heal"] = round(time.perf_counter() - t, 1)
                heal_report.pop("seconds")
                recipe_out["steps"].append({"heal": {k: v for k, v in heal_report.items() if k != "curve"}})

        smoke = _complete(model, tok, st.cfg.model.smoke_prompt, st.cfg.model.smoke_tokens)
        cost = model_cost(model)
        dense_cost = counts_cost(Structure.dense(arch).counts(), arch, DEFAULT_CONTEXT)
        c = structure.counts()
        report = {
            "rung": name,
            "parent": rung.parent if rung else None,
            "counts": c.to_json(),
            "structure": structure.to_json(),
            "layers_removed": [l for l in range(arch.layers) if l not in structure["layers"]],
            **cost,
            "relative": {
                "flops": cost["flops_per_token"] / dense_cost["flops_per_token"],
                "nonzero_flops": cost["nonzero_flops_per_token"] / dense_cost["flops_per_token"],
                "params": cost["params"] / dense_cost["params"],
                "nonzero_params": cost["nonzero_params"] / dense_cost["params"],
            },
            "flops_by_granularity": counts_cost(c, arch, DEFAULT_CONTEXT)["by_granularity"],
            "module_sparsity": module_sparsity(model),
            "allocator_trace": trace,
            "compensation": cut_report,
            "heal": heal_report,
            "smoke": {"prompt": st.cfg.model.smoke_prompt, "completion": smoke},
        }
        out = Path(args.ladder_dir) / name
        with atomic_dir(out) as tmp:
            # The class method, not the instance's: llmcompressor wraps the instance's
            # save_pretrained to write its own recipe and compression config.
            PreTrainedModel.save_pretrained(model, tmp, safe_serialization=True,
                                            max_shard_size=st.cfg.model.max_shard_size)
            save_tokenizer(tok, tmp)
            report["files_sha256"] = file_digests(tmp)  # every file a loader reads: checked downstream
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe_out, sort_keys=False))
            (tmp / "pruning_report.json").write_text(json.dumps(report, indent=2) + "\n")
            (tmp / "README.md").write_text(model_card(name, report, recipe_out, base_facts(args.base)))
        # Seconds stay out of the rung's directory: the same config and seed give the same files, so
        # a rebuild with the same result changes nothing downstream (pipeline/common/timings.py).
        seconds["total"] = round(time.perf_counter() - t0, 1)
        write_timings(timings_path(Path(args.ladder_dir).parent, "prune", name), seconds)
        tracker.summary({k: report[k] for k in ("params", "nonzero_params", "flops_per_token")}
                        | {f"relative/{k}": v for k, v in report["relative"].items()}
                        | {f"seconds/{k}": v for k, v in seconds.items()})
    st.done(
        read=f"parent {parent_dir}",
        wrote=f"{out}/ ({', '.join(f'{k} {v}' for k, v in c.items())}; {report['relative']['flops']:.1%} FLOPs, "
        f"{report['relative']['nonzero_params']:.1%} non-zero params; smoke {smoke.strip()[:40]!r})",
    )


def _allocator_options(a, comp):
    """The allocator's settings, with the compensation damping it refits candidates with."""
    from types import SimpleNamespace

    return SimpleNamespace(**a.model_dump(), damping=comp.damping)


def _complete(model, tok, prompt: str, n: int) -> str:
    import torch

    ids = tok(prompt, return_tensors="pt").to(next(model.parameters()).device)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


if __name__ == "__main__":
    main()
