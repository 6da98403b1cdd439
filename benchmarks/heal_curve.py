"""Benchmark: the healing recovery curve of the deepest structured rungs.

    make bench-heal            # = python benchmarks/heal_curve.py --rungs f60 f40

Needs the default pipeline built up to the rungs' parents (`dvc repro prune@f75`, and
`prune@f60` for f40; with the ladder's own healing setting). For each rung it cuts it from its
built parent exactly as `prune@<rung>` does but with healing off, then heals it with the ladder's
healing settings and a larger token budget (`--tokens`), and at every check measures what
matters, not only the healing objective:

- KL to the dense model on the held-out healing blocks (the early-stopping signal);
- perplexity on held-out LAMBADA (the healing text's own domain) and on the held-out Wikipedia
  paragraphs (another source no stage calibrates or heals on);
- mean acc_norm and accuracy above chance on a fixed sample of task items (`--items`, taken from
  the calibration and test splits in hash order), with its standard error.

Prints a table per rung and writes `artifacts/benchmarks/heal_curve.json` and `.png`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml


def quality(model, tok, items, held, other, batch_tokens: int = 4096, keep_records: bool = False) -> dict:
    """Perplexity on both held-out sources and mean acc_norm on `items` (with the per-item records
    under "records" when `keep_records`, for paired comparisons)."""
    from pipeline.evaluate import record_for, task_metrics
    from pipeline.evaluation.scoring import encode_item, perplexity, score_choices

    enc = [encode_item(tok, it["context"], it["choices"], 2048) for it in items]
    recs = [record_for(it, s) for it, s in zip(items, score_choices(model, enc, batch_tokens, progress=False))]
    t = task_metrics(recs)["mean"]
    return {"ppl_lambada": perplexity(model, held, progress=False)["perplexity"],
            "ppl_other": perplexity(model, other, progress=False)["perplexity"],
            "acc_norm": t["acc_norm"], "acc_norm_se": t["acc_norm_se"], "above_chance": t["above_chance"],
            **({"records": recs} if keep_records else {})}


def built_params() -> tuple[dict, list[str]]:
    """The built pipeline's params.yaml, W&B off (benchmarks rebuild stages outside DVC), and its rungs."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["tracking"]["mode"] = "disabled"
    return raw, list(raw["ladder"]["rungs"])


def held_out_blocks(data: Path = Path("artifacts/data")):
    """Every held-out block of both perplexity sources: (LAMBADA, Wikipedia)."""
    from safetensors.torch import load_file

    return tuple(load_file(str(data / f"{n}.safetensors"))["input_ids"] for n in ("heldout", "heldout_other"))


def score_checkpoint(path: Path, tok, items, held, other) -> tuple[dict, dict]:
    """`quality` of the ladder checkpoint at `path`, with per-item records, and its pruning report."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return (quality(model, tok, items, held, other, keep_records=True),
            json.loads((path / "pruning_report.json").read_text()))


def paired_acc_norm_diff(a: list[dict], b: list[dict]) -> tuple[float, float]:
    """Mean acc_norm of records `a` minus `b` (the same items), macro over tasks as `task_metrics`
    reports it, and its standard error paired over items (sqrt of the summed per-task variances
    of the item differences / T)."""
    import math

    other = {r["id"]: r["correct_norm"] for r in b}
    per_task: dict[str, list[float]] = {}
    for r in a:
        per_task.setdefault(r["task"], []).append(float(r["correct_norm"]) - float(other[r["id"]]))
    means = [sum(d) / len(d) for d in per_task.values()]
    var = sum(sum((x - m) ** 2 for x in d) / max(len(d) - 1, 1) / len(d) for d, m in zip(per_task.values(), means))
    return sum(means) / len(means), math.sqrt(var) / len(means)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rungs", nargs="+", default=["f60", "f40"])
    ap.add_argument("--tokens", type=int, default=196_608, help="healing budget per rung")
    ap.add_argument("--every", type=int, default=16, help="steps between checks")
    ap.add_argument("--items", type=int, default=600, help="task items scored at each check")
    ap.add_argument("--blocks", type=int, default=12, help="held-out blocks per perplexity set")
    ap.add_argument("--out", default="artifacts/benchmarks/heal_curve.json")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline import prune
    from pipeline.common.config import load_config
    from pipeline.pruning.heal import heal

    cfg = load_config("params.yaml")
    items = [json.loads(x) for x in Path("artifacts/data/tasks.jsonl").read_text().splitlines()]
    items = [it for it in items if it["split"] in ("calibration", "test")]
    from pipeline.evaluation.splits import unit_hash

    items = sorted(items, key=lambda it: unit_hash("heal-curve", it["id"]))[: args.items]
    held = load_file("artifacts/data/heldout.safetensors")["input_ids"][: args.blocks]
    other = load_file("artifacts/data/heldout_other.safetensors")["input_ids"][: args.blocks]
    tok = AutoTokenizer.from_pretrained("artifacts/base")
    results = {}
    dense = AutoModelForCausalLM.from_pretrained("artifacts/ladder/dense", dtype=torch.float32, use_safetensors=True).eval()
    if Path("artifacts/teacher/heal.safetensors").exists():
        teacher = {k: load_file(f"artifacts/teacher/{k}.safetensors") for k in ("heal", "heal_val")}
    else:  # the teacher stage skips the healing set when the ladder does not heal: compute it here
        from pipeline.teacher import healing_sets

        teacher = healing_sets(dense, load_file("artifacts/data/heal.safetensors")["input_ids"],
                               cfg.ladder.heal.val_blocks, cfg.ladder.teacher.topk)
    results["dense"] = quality(dense, tok, items, held, other)
    del dense
    for rung in args.rungs:
        raw = yaml.safe_load(Path("params.yaml").read_text())
        raw["ladder"]["heal"]["enabled"] = False
        raw["tracking"]["mode"] = "disabled"
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            parent = cfg.ladder.rungs[rung].parent
            shutil.copytree(f"artifacts/ladder/{parent}", tmp / "ladder" / parent)
            t = time.perf_counter()
            prune.main(["--params", str(tmp / "params.yaml"), "--rung", rung, "--ladder-dir", str(tmp / "ladder")])
            cut_secs = time.perf_counter() - t
            model = AutoModelForCausalLM.from_pretrained(tmp / "ladder" / rung, dtype=torch.float32, use_safetensors=True).eval()
        curve = []

        def check(step, tokens, m):
            q = quality(m, tok, items, held, other)
            curve.append({"step": step, "tokens": tokens, **q})
            print(f"{rung} step {step:4d} tokens {tokens:7d}: ppl lambada {q['ppl_lambada']:8.1f} "
                  f"other {q['ppl_other']:8.1f}  acc_norm {q['acc_norm']:.3f} +-{q['acc_norm_se']:.3f} "
                  f"above chance {q['above_chance']:.3f}", flush=True)

        h = cfg.ladder.heal.model_copy(update={"tokens": args.tokens, "eval_every": args.every, "patience": 10**6})
        out = heal(model, teacher["heal"], teacher["heal_val"], h, cfg.seed, on_check=check)
        for point, kl in zip(curve, out["curve"]):
            point["val_kl"] = kl["val_kl"]
        results[rung] = {"cut_seconds": round(cut_secs, 1), "heal_seconds": out["seconds"], "curve": curve,
                         "seconds_per_step": round(out["seconds"] / max(out["steps_run"], 1), 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"items": len(items), "blocks": args.blocks, **results}, indent=2) + "\n")
    _picture(results, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} (checks include scoring {len(items)} items and {2 * args.blocks} blocks)")
    return 0


def _picture(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    dense = results["dense"]
    for rung, r in results.items():
        if rung == "dense":
            continue
        tok = [p["tokens"] / 1000 for p in r["curve"]]
        ax[0].plot(tok, [p["ppl_lambada"] for p in r["curve"]], "-o", label=f"{rung} LAMBADA")
        ax[0].plot(tok, [p["ppl_other"] for p in r["curve"]], "--s", label=f"{rung} Wikipedia")
        ax[1].errorbar(tok, [p["acc_norm"] for p in r["curve"]], yerr=[1.96 * p["acc_norm_se"] for p in r["curve"]],
                       fmt="-o", capsize=3, label=rung)
        ax[2].plot(tok, [p["val_kl"] for p in r["curve"]], "-o", label=rung)
    ax[0].axhline(dense["ppl_lambada"], color="grey", lw=0.8)
    ax[0].axhline(dense["ppl_other"], color="grey", lw=0.8, ls="--")
    ax[0].set_yscale("log")
    ax[0].set_title("held-out perplexity (grey: dense)")
    ax[1].axhline(dense["acc_norm"], color="grey", lw=0.8)
    ax[1].set_title("mean acc_norm (95% interval; grey: dense)")
    ax[2].set_title("KL to dense, held-out healing blocks")
    for a in ax:
        a.set_xlabel("healing tokens (thousands)")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
