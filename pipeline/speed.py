"""Stage `speed`: measured latency of every rung, timed in one process, interleaved.

Reads every rung in `artifacts/ladder/`; writes `--out` (default artifacts/speed/speed.json,
DVC metrics): per rung, the median over `cost.speed.repeats` of
- `query_ms`: one forward pass over a query of `cost.prompt_tokens` + `cost.scored_tokens` tokens,
  batch 1, with `lm_head` on the scored positions only (what `cost.kind=flops` counts);
- `prefill_ms`: the prompt alone, logits for its last position only (generation's prefill);
- `decode_ms_per_token`: `cost.speed.decode_tokens` greedy steps with the KV cache, batch 1;
and each figure relative to dense. Rungs are timed in a different rotation every repeat, so a
machine that slows down (another job starting) shifts every rung alike rather than one rung.
With `cost.kind=latency`, router, cascade and route-then-escalate use `query_ms` as the cost;
with the default (flops) they ignore this file, and it is reported beside the analytic cost.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--out", default="artifacts/speed/speed.json")


def main(argv: list[str] | None = None) -> None:
    st = begin("speed", _args, argv)
    cfg, args = st.cfg, st.args
    c = cfg.cost
    for r in cfg.rungs:
        if not (Path(args.ladder_dir) / r / "config.json").exists():
            raise SystemExit(f"speed: {Path(args.ladder_dir) / r} is missing; build the ladder first (`dvc repro`)")

    import torch
    from tqdm import tqdm

    from pipeline.common.atomic import atomic_write_json
    from pipeline.models.loading import load_causal_lm
    from pipeline.models.measure import time_decode, time_forward

    with st.tracked() as tracker:
        models = {r: load_causal_lm(Path(args.ladder_dir) / r, cfg.model) for r in cfg.rungs}
        vocab = models["dense"].config.vocab_size
        g = torch.Generator().manual_seed(cfg.seed)
        # Drawn on the CPU (the same ids on any device), then moved to where the rungs are.
        query = torch.randint(0, vocab, (1, c.prompt_tokens + c.scored_tokens), generator=g).to(models["dense"].device)
        prompt = query[:, :c.prompt_tokens]
        times = {r: {"query_ms": [], "prefill_ms": [], "decode_ms_per_token": []} for r in cfg.rungs}
        rounds = c.speed.warmup + c.speed.repeats
        n = len(cfg.rungs)
        for rep in tqdm(range(rounds), desc="speed (all rungs, interleaved)", unit="round"):
            for k in range(n):
                r = cfg.rungs[(k + rep) % n]  # a different rotation every round
                m = models[r]
                q = time_forward(m, query, logits_to_keep=c.scored_tokens)
                p = time_forward(m, prompt, logits_to_keep=1)
                d = time_decode(m, prompt, c.speed.decode_tokens)
                if rep >= c.speed.warmup:
                    times[r]["query_ms"].append(q)
                    times[r]["prefill_ms"].append(p)
                    times[r]["decode_ms_per_token"].append(d)
        out = {"prompt_tokens": c.prompt_tokens, "scored_tokens": c.scored_tokens,
               "decode_tokens": c.speed.decode_tokens, "repeats": c.speed.repeats, "warmup": c.speed.warmup,
               "threads": torch.get_num_threads(), "statistic": "median over repeats", "rungs": {}}
        dense = {k: statistics.median(v) for k, v in times["dense"].items()}
        for r in cfg.rungs:
            med = {k: statistics.median(v) for k, v in times[r].items()}
            out["rungs"][r] = {**{k: round(v, 4) for k, v in med.items()},
                               **{f"relative_{k}": round(v / dense[k], 4) for k, v in med.items()},
                               "spread_query_ms": [round(min(times[r]["query_ms"]), 4),
                                                   round(max(times[r]["query_ms"]), 4)]}
        atomic_write_json(args.out, out)
        tracker.summary({f"speed/{r}/{k}": v for r, d in out["rungs"].items() for k, v in d.items()
                         if isinstance(v, float)})
    st.done(read=f"{n} rungs", wrote=f"{args.out} (" + ", ".join(
        f"{r} {d['query_ms']:.1f} ms ({d['relative_query_ms']:.2f}x)" for r, d in out["rungs"].items()) + ")")


if __name__ == "__main__":
    main()
