"""Benchmark: should the allocator weigh dropping layers below what KL to dense says it costs?

    .venv/bin/python benchmarks/allocator_weights.py --weights 1 0.5   # after `make repro`; ~50 min

KL to the dense model overstates what dropping a layer costs in task accuracy on SmolLM2-135M
(`make bench-scoring-text`; depth-only keeps 89% of dense's above-chance accuracy at 0.9x FLOPs,
the default 63%). `ladder.allocator.loss_weights.layers` multiplies a layer move's loss increase
when the allocator ranks moves (0.25 by default, chosen with this benchmark from 1, 0.5 and
0.25 by the mean over rungs of acc_norm on router-train). For each `--weights` value this
rebuilds the default ladder's rungs outside DVC, under `artifacts/benchmarks/allocator_weights/w<weight>/`, from the built
calibrate and teacher outputs, and scores them on the task items of `--splits` (router-train by
default: the split the router fits on, so a weight chosen here leaves the calibration and test
splits unseen) and on both held-out perplexity sources. The built ladder (its weight is
`params.yaml`'s) and the built depth-only baseline, if present, are scored the same way. It
prints one table with each rung's accuracy difference against the built rung, paired over items.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

A = Path("artifacts")
OUT = A / "benchmarks" / "allocator_weights"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5], help="layer-move loss weights")
    ap.add_argument("--splits", nargs="+", default=["router_train"], help="task splits to score")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from heal_curve import built_params, held_out_blocks, paired_acc_norm_diff, score_checkpoint

    tok = AutoTokenizer.from_pretrained(A / "base")
    raw, rungs = built_params()
    built = raw["ladder"]["allocator"].get("loss_weights", {}).get("layers", 1.0)
    ladders = {f"w={built:g} (built)": A / "ladder"}
    for w in args.weights:
        out = OUT / f"w{w:g}"
        shutil.rmtree(out, ignore_errors=True)
        (out / "ladder").mkdir(parents=True)
        (out / "ladder" / "dense").symlink_to((A / "ladder" / "dense").resolve())
        cfg = json.loads(json.dumps(raw))
        cfg["ladder"]["allocator"]["loss_weights"] = {**cfg["ladder"]["allocator"].get("loss_weights", {}), "layers": w}
        (out / "params.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        for rung in rungs:
            subprocess.run([sys.executable, "-m", "pipeline.prune", "--params", str(out / "params.yaml"),
                            "--rung", rung, "--ladder-dir", str(out / "ladder")], check=True)
        ladders[f"w={w:g}"] = out / "ladder"
    if (A / "baselines/depth_only/ladder").is_dir():
        ladders["depth-only"] = A / "baselines/depth_only/ladder"

    items = [json.loads(x) for x in (A / "data/tasks.jsonl").read_text().splitlines()]
    items = [it for it in items if it["split"] in args.splits]
    held, other = held_out_blocks()
    first = next(iter(ladders))
    rows = {}
    for rung, name in [("dense", first)] + [(r, n) for r in rungs for n in ladders]:
        q, report = score_checkpoint(ladders[name] / rung, tok, items, held, other)
        q["counts"] = report["counts"] if rung != "dense" else {}
        q["flops"] = report["relative"]["flops"] if rung != "dense" else 1.0
        rows[(rung, name)] = q
        print(rung, name, {k: round(v, 4) for k, v in q.items() if isinstance(v, float)}, q["counts"], flush=True)

    dense = rows[("dense", first)]
    print(f"\n{len(items)} items ({', '.join(args.splits)}); {len(held)} x {held.shape[1]} held-out blocks per source. "
          f"Dense: ppl LAMBADA {dense['ppl_lambada']:.1f}, Wikipedia {dense['ppl_other']:.1f}, "
          f"acc_norm {dense['acc_norm']:.3f} ± {dense['acc_norm_se']:.3f}, above chance {dense['above_chance']:.3f}\n")
    print("| rung | ladder | FLOPs x | shape (layers / hidden / KV x q/KV / MLP) | ppl LAMBADA | ppl Wikipedia (x dense) "
          "| mean acc_norm ± SE | above-chance kept | − built (paired SE) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rung in rungs:
        for name in ladders:
            q, s = rows[(rung, name)], rows[(rung, name)]["counts"]
            diff = "" if name == first else "{:+.3f} ({:.3f})".format(
                *paired_acc_norm_diff(q["records"], rows[(rung, first)]["records"]))
            print(f"| `{rung}` | {name} | {q['flops']:.3f} | {s['layers']} / {s['hidden']} / {s['kv_heads']} x "
                  f"{s['q_heads']} / {s['mlp']} | {q['ppl_lambada']:.1f} | {q['ppl_other']:.1f} "
                  f"({q['ppl_other'] / dense['ppl_other']:.2f}x) | {q['acc_norm']:.3f} ± {q['acc_norm_se']:.3f} | "
                  f"{q['above_chance'] / dense['above_chance']:.0%} | {diff} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(json.dumps(
        {"weights": args.weights, "splits": args.splits, "items": len(items),
         "rows": [{"rung": r, "ladder": n, **{k: v for k, v in q.items() if k != "records"}}
                  for (r, n), q in rows.items()]}, indent=2) + "\n")
    print(f"wrote {OUT}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
