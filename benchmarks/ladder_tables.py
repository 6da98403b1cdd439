"""Print the README's ladder and quality tables from a built pipeline's artifacts (no compute).

    .venv/bin/python benchmarks/ladder_tables.py            # from artifacts/ of this checkout

Shape, cost and compensation from each rung's `pruning_report.json`, build seconds from
`artifacts/timings/prune/<rung>.json` (kept out of the rung's directory); quality from
`artifacts/eval/<rung>/metrics.json`; prefill and decode from `artifacts/speed/speed.json` (timed
interleaved in one process); the routing table is `artifacts/compare/table.md` as written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from pipeline.common.timings import read_timings


def main() -> int:
    art = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("artifacts")
    rungs = yaml.safe_load(Path("params.yaml").read_text())["rungs"]
    rep = {r: json.loads((art / "ladder" / r / "pruning_report.json").read_text()) for r in rungs}
    met = {r: json.loads((art / "eval" / r / "metrics.json").read_text()) for r in rungs}
    speed = json.loads((art / "speed" / "speed.json").read_text())["rungs"] if (art / "speed/speed.json").exists() else {}

    print("| rung | parent | layers | hidden | KV x q/KV | MLP | FLOPs/token x dense | params | "
          "compensation error before → after | dropped-run error before → after | "
          "seconds (allocate / cut+compensate / heal) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rungs:
        p, c = rep[r], rep[r]["counts"]
        comp = p.get("compensation") or {}
        err = (f"{comp['mean_error_before']:.3f} → {comp['mean_error_after']:.3f}"
               if comp.get("mean_error_before") is not None else "-")
        runs = (comp.get("depth") or {}).get("layers") or []  # mean over the kept layers refitted
        depth = (f"{sum(x['error_before'] for x in runs) / len(runs):.3f} → "
                 f"{sum(x['error_after'] for x in runs) / len(runs):.3f} ({len(runs)})" if runs else "-")
        s = read_timings(art / "timings" / "prune" / f"{r}.json") or p.get("seconds") or {}  # older builds: the report
        secs = " / ".join(str(s.get(k, "-")) for k in ("allocate", "cut_and_compensate", "heal")) if s else "-"
        print(f"| `{r}` | {p['parent'] or '-'} | {c['layers']} | {c['hidden']} | {c['kv_heads']} x {c['q_heads']} "
              f"| {c['mlp']} | {p['relative']['flops']:.3f} | {p['params'] / 1e6:.1f}M | {err} | {depth} | {secs} |")
    print()
    d = met["dense"]
    d_above = d["tasks"]["mean"]["above_chance"]
    print("| rung | FLOPs x | ppl LAMBADA (x dense) | ppl Wikipedia (x dense) | mean acc_norm ± SE | "
          "above-chance kept | prefill x | decode x | \"The capital of France is\" |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rungs:
        m, t = met[r], met[r]["tasks"]["mean"]
        ppl, other = m["perplexity"]["perplexity"], m["perplexity_other"]["perplexity"]
        sp = speed.get(r, {})
        smoke = rep[r]["smoke"]["completion"].strip().replace("\n", " ").replace("|", "/")[:48]
        print(f"| `{r}` | {rep[r]['relative']['flops']:.3f} | {ppl:.1f} ({ppl / d['perplexity']['perplexity']:.2f}x) "
              f"| {other:.1f} ({other / d['perplexity_other']['perplexity']:.2f}x) "
              f"| {t['acc_norm']:.3f} ± {t['acc_norm_se']:.3f} | {t['above_chance'] / d_above:.0%} "
              f"| {sp.get('relative_prefill_ms', float('nan')):.2f} | {sp.get('relative_decode_ms_per_token', float('nan')):.2f} "
              f"| \"{smoke}\" |")
    print()
    print("Per task acc_norm (n items):")
    tasks = [t for t in met["dense"]["tasks"] if t != "mean"]
    print("| rung | " + " | ".join(tasks) + " |")
    print("|---|" + "---|" * len(tasks))
    print("| chance | " + " | ".join(f"{met['dense']['tasks'][t]['chance']:.2f}" for t in tasks) + " |")
    for r in rungs:
        print(f"| `{r}` | " + " | ".join(f"{met[r]['tasks'][t]['acc_norm']:.3f}" for t in tasks) + " |")
    print("| n | " + " | ".join(str(met["dense"]["tasks"][t]["n"]) for t in tasks) + " |")
    table = art / "compare" / "table.md"
    if table.exists():
        print()
        print(table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
