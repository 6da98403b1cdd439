"""Stage `evaluate@<rung>`: quality, per-query confidence and measured cost of one rung.

Reads `artifacts/ladder/<rung>/` and `artifacts/data/`; writes `--out`
(default artifacts/eval/<rung>/):
- `records.jsonl`: one line per task item (every split): id, task, split, gold,
  per-choice log-likelihoods, predicted / correct under `acc` and `acc_norm`,
  confidence signals (max softmax probability, margin, entropy, each also on
  length-normalised scores) and tokens processed;
- `metrics.json`: perplexity on the held-out LAMBADA blocks and
  (`perplexity_other`) on the held-out blocks of another source (SQuAD's
  Wikipedia paragraphs), per-task acc / acc_norm (all items and test split),
  cost (params, non-zeros, FLOPs/token, bytes on disk, peak memory, latency,
  throughput) and the routing cost (`dvc metrics show <file>` reads it;
  `dvc exp show` shows the compact `artifacts/summary.json` instead);
- `model_card.md`: the rung's model card with a `model-index` of these results.

`acc` and `acc_norm` are lm-evaluation-harness's: argmax of the summed
log-likelihood, and of that divided by the character length of the choice
(without the leading delimiter).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--rung", required=True)
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--data", default="artifacts/data")
    ap.add_argument("--out", default=None, help="default: artifacts/eval/<rung>")


def record_for(item: dict, scored: dict) -> dict:
    """One per-query record: predictions under acc and acc_norm, and confidence signals."""
    from pipeline.evaluation.scoring import confidence
    from pipeline.evaluation.tasks import DELIM

    lls = scored["loglik"]
    chars = [max(1, len(c[len(DELIM):] if c.startswith(DELIM) else c)) for c in item["choices"]]
    norm = [ll / n for ll, n in zip(lls, chars)]
    pred = max(range(len(lls)), key=lambda i: lls[i])
    pred_norm = max(range(len(norm)), key=lambda i: norm[i])
    conf = confidence(lls)
    conf_norm = confidence(norm)
    return {
        "id": item["id"], "task": item["task"], "split": item["split"], "gold": item["gold"],
        "loglik": lls, "choice_chars": chars,
        "pred": pred, "correct": pred == item["gold"],
        "pred_norm": pred_norm, "correct_norm": pred_norm == item["gold"],
        "greedy_gold": scored["greedy"][item["gold"]],
        **{k: v for k, v in conf.items()},
        **{f"{k}_norm": v for k, v in conf_norm.items()},
        "tokens": scored["tokens"],
    }


def task_metrics(records: list[dict]) -> dict:
    """Per task and their unweighted mean (as lm-eval groups report): acc, acc_norm, the chance
    level (mean of 1 / choices), accuracy above chance, and standard errors (binomial per task;
    for the mean over T tasks, sqrt(sum of per-task variances) / T)."""
    import math

    by = defaultdict(list)
    for r in records:
        by[r["task"]].append(r)
    out = {}
    for task, rs in sorted(by.items()):
        test = [r for r in rs if r["split"] == "test"]
        n = len(rs)
        acc_norm = sum(r["correct_norm"] for r in rs) / n
        chance = sum(1 / len(r["loglik"]) for r in rs) / n
        out[task] = {
            "acc": sum(r["correct"] for r in rs) / n,
            "acc_norm": acc_norm,
            "acc_norm_se": math.sqrt(acc_norm * (1 - acc_norm) / n),
            "chance": chance,
            "above_chance": acc_norm - chance,
            "n": n,
            "test_acc_norm": sum(r["correct_norm"] for r in test) / len(test) if test else None,
            "test_n": len(test),
        }
    T = len(by)
    mean = {k: sum(v[k] for v in out.values()) / T for k in ("acc", "acc_norm", "chance", "above_chance")}
    mean["acc_norm_se"] = math.sqrt(sum(v["acc_norm_se"] ** 2 for v in out.values())) / T
    out["mean"] = {**mean, "n": len(records)}
    return out


def main(argv: list[str] | None = None) -> None:
    st = begin("evaluate", _args, argv)
    cfg, args = st.cfg, st.args
    if args.rung not in cfg.rungs:
        raise SystemExit(f"evaluate: no rung '{args.rung}'; rungs: {cfg.rungs}")
    rung_dir = Path(args.ladder_dir) / args.rung
    out = Path(args.out or f"artifacts/eval/{args.rung}")

    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from pipeline.common.atomic import atomic_dir
    from pipeline.models.loading import load_causal_lm
    from pipeline.evaluation.items import read_items
    from pipeline.evaluation.scoring import encode_item, perplexity, score_choices
    from pipeline.models.card import card_with_results
    from pipeline.models.checkpoint import verify_rung
    from pipeline.models.cost import model_cost
    from pipeline.models.measure import checkpoint_bytes, measure_speed, peak_memory, peak_rss_mb

    e = cfg.evaluate
    items = read_items(Path(args.data) / "tasks.jsonl")  # an empty or malformed task set fails here, named
    verify_rung(rung_dir)
    with st.tracked() as tracker:
        model = load_causal_lm(rung_dir, cfg.model)
        tok = AutoTokenizer.from_pretrained(rung_dir)
        held = load_file(str(Path(args.data) / "heldout.safetensors"))["input_ids"]
        held_other = load_file(str(Path(args.data) / "heldout_other.safetensors"))["input_ids"]

        t0 = time.perf_counter()
        ppl = perplexity(model, held, desc=f"{args.rung}: perplexity")
        ppl_other = perplexity(model, held_other, desc=f"{args.rung}: perplexity (other source)")
        max_len = min(getattr(model.config, "max_position_embeddings", 2048), 4096)
        encoded = [encode_item(tok, it["context"], it["choices"], max_len) for it in items]
        t1 = time.perf_counter()
        scored = score_choices(model, encoded, e.batch_tokens, desc=f"{args.rung}: tasks")
        score_secs = time.perf_counter() - t1
        records = [record_for(it, s) for it, s in zip(items, scored)]
        tokens = sum(r["tokens"] for r in records)

        cost = model_cost(model)
        speed = measure_speed(model, model.config.vocab_size, e.latency_prompt_lengths, e.throughput_batch,
                              e.throughput_length, e.warmup, e.repeats, seed=cfg.seed)
        routing_cost = (speed["latency_ms"][str(e.routing_prompt_length)] if e.routing_cost == "latency"
                        else cost["flops_per_token"])
        metrics = {
            "rung": args.rung,
            "perplexity": ppl,
            "perplexity_other": ppl_other,
            "tasks": task_metrics(records),
            "cost": {**cost, "checkpoint_bytes": checkpoint_bytes(rung_dir), **speed,
                     "peak_rss_mb": peak_rss_mb(),
                     # accelerator memory when the rung ran on a GPU ('cuda'), else the RSS above ('rss')
                     **dict(zip(("peak_memory_mb", "peak_memory_kind"), peak_memory())),
                     "unstructured_zeros_note": "zeros inside dense tensors run at dense speed on CPU"},
            "routing_cost": {"kind": e.routing_cost, "value": routing_cost,
                             "unit": "ms" if e.routing_cost == "latency" else "FLOPs/token"},
            "scoring": {"items": len(records), "tokens": tokens, "seconds": round(score_secs, 2),
                        "tokens_per_second": round(tokens / score_secs, 1)},
            "seconds": round(time.perf_counter() - t0, 2),
            "prediction": e.prediction,
        }
        data_summary = json.loads((Path(args.data) / "summary.json").read_text())["tasks"]
        card = card_with_results((rung_dir / "README.md").read_text(), metrics,
                                 {t: tuple(v["hub_dataset"]) for t, v in data_summary.items() if v.get("hub_dataset")})
        with atomic_dir(out) as tmp:
            with open(tmp / "records.jsonl", "w", encoding="utf-8") as fh:
                for r in records:
                    fh.write(json.dumps(r) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            (tmp / "model_card.md").write_text(card)  # the rung's card plus a model-index of these results
        tracker.summary({"perplexity": ppl["perplexity"], "perplexity_other": ppl_other["perplexity"],
                         "tokens_per_second": metrics["scoring"]["tokens_per_second"],
                         **{f"{t}/acc_norm": v["acc_norm"] for t, v in metrics["tasks"].items()},
                         "latency_ms": routing_cost if e.routing_cost == "latency" else None})
    st.done(
        read=f"{rung_dir}, {len(items)} items, {held.numel()} + {held_other.numel()} held-out tokens",
        wrote=f"{out}/ (ppl {ppl['perplexity']:.2f}, other {ppl_other['perplexity']:.2f}, mean acc_norm {metrics['tasks']['mean']['acc_norm']:.3f}, "
        f"{metrics['scoring']['tokens_per_second']:.0f} tok/s scoring, latency@{e.routing_prompt_length} "
        f"{speed['latency_ms'][str(e.routing_prompt_length)]:.1f} ms)",
    )


if __name__ == "__main__":
    main()
