"""Stage `data`: calibration blocks, held-out perplexity blocks, and task items.

Reads `data.*` from params.yaml and the tokenizer from `--base`; writes `--out`
(default artifacts/data/):
- `calibration.safetensors`, `heldout.safetensors`: `input_ids` [N, L] int64,
  cut from disjoint passage sets;
- `tasks.jsonl`: one item a line, `{id, task, context, choices, gold, split}`;
- `summary.json`: counts per task and split, token counts, the split rule.
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
    from transformers import AutoTokenizer

    from pipeline.common.atomic import atomic_dir
    from pipeline.evaluation.splits import assign_split, empty_split_problem, take_in_hash_order
    from pipeline.evaluation.tasks import load_task
    from pipeline.evaluation.text import load_passages, pack_blocks, split_passages

    with st.tracked() as tracker:
        tok = AutoTokenizer.from_pretrained(st.args.base)
        passages = load_passages(d.text)
        calib_p, held_p = split_passages(passages, d.text.heldout_fraction, d.splits.salt)
        calib = pack_blocks(calib_p, tok, d.calibration.num_blocks, d.calibration.block_len, "calibration")
        held = pack_blocks(held_p, tok, d.heldout.num_blocks, d.heldout.block_len, "heldout")

        fractions = d.splits.model_dump(exclude={"salt"})
        records: list[dict] = []
        for task, tcfg in tqdm(d.tasks.items(), desc="data: tasks", unit="task"):
            items = {i.id: i for i in load_task(task, tcfg.source)}
            for item_id in take_in_hash_order(list(items), tcfg.cap, d.splits.salt):
                split = assign_split(item_id, fractions, d.splits.salt)
                records.append({**items[item_id].to_dict(), "split": split})

        problem = empty_split_problem(records, {t: c.cap for t, c in d.tasks.items()}, fractions)
        if problem:  # before writing: router, cascade and evaluate would fail on it minutes later
            raise SystemExit(f"data: {problem}")
        counts = Counter((r["task"], r["split"]) for r in records)
        per_task = {
            t: {s: counts[(t, s)] for s in fractions} | {"total": sum(counts[(t, s)] for s in fractions)}
            for t in d.tasks
        }
        summary = {
            "calibration": {"shape": list(calib.shape), "passages_available": len(calib_p)},
            "heldout": {"shape": list(held.shape), "passages_available": len(held_p)},
            "tasks": per_task,
            "items": len(records),
            "split_rule": f"sha256(salt + '\\x00' + id) -> [0,1) bucketed by {fractions}",
            "salt": d.splits.salt,
            "text_source": d.text.source,
        }
        out = Path(st.args.out)
        with atomic_dir(out) as tmp:
            save_file({"input_ids": calib.contiguous()}, str(tmp / "calibration.safetensors"))
            save_file({"input_ids": held.contiguous()}, str(tmp / "heldout.safetensors"))
            with open(tmp / "tasks.jsonl", "w", encoding="utf-8") as fh:
                for r in records:
                    fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        tracker.summary({
            "items": len(records),
            "calibration_tokens": calib.numel(),
            "heldout_tokens": held.numel(),
            **{f"items/{t}/{s}": n for t, c in per_task.items() for s, n in c.items()},
        })
    st.done(
        read=f"{len(passages)} passages ({d.text.source}), {len(d.tasks)} tasks",
        wrote=f"{out}/ (calibration {tuple(calib.shape)}, heldout {tuple(held.shape)}, "
        f"{len(records)} task items)",
    )


if __name__ == "__main__":
    main()
