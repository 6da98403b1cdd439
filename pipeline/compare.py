"""Stage `compare`: every routing strategy side by side on the test split, with 95% intervals.

Reads every rung's records and costs, and the test-split decisions of `router`, `cascade` and
`escalate`; writes `--out` (default artifacts/compare/):
- `table.json` (DVC metrics): one row per strategy (always dense, always each rung, router, cascade,
  route-then-escalate, random at the router's cost, the single-rung hull at the router's cost, the
  oracle), each with accuracy, relative cost, saving and drop against dense as {value, lo, hi};
  and paired differences (router - random, router - hull, each strategy - dense);
- `table.csv` and `table.md`: the same, ready for the README.

Every interval comes from one set of bootstrap resamples of the test queries (seeded), shared by
all rows, so differences are paired. A strategy's cost counts every rung it ran (the `tried`
list of its decisions).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--speed", default="artifacts/speed/speed.json", help="read only when cost.kind=latency")
    ap.add_argument("--router", default="artifacts/router")
    ap.add_argument("--cascade", default="artifacts/cascade")
    ap.add_argument("--escalate", default="artifacts/escalate")
    ap.add_argument("--out", default="artifacts/compare")


def decided(path: Path, o, te_ids: list[str]):
    """(ok [n], spent [n], answered-by rung index [n]) of a stage's test decisions, in `te_ids` order."""
    import numpy as np

    if not path.exists():
        raise SystemExit(f"compare: {path} is missing: run `dvc repro {path.parent.name}` first")
    from pipeline.common.formats import read_jsonl

    d = {x["id"]: x for x in read_jsonl(path, ("id", "rung"))}
    if set(d) != set(te_ids):
        raise SystemExit(f"compare: {path} decides other queries than the test split: re-run `dvc repro {path.parent.name}`")
    pos = {i: k for k, i in enumerate(o.ids)}
    rung = np.asarray([o.rung_index(d[i]["rung"]) for i in te_ids])
    ok = o.correct[[pos[i] for i in te_ids], rung]
    spent = np.asarray([sum(o.cost[o.rung_index(r)] for r in d[i].get("tried", [d[i]["rung"]])) for i in te_ids])
    return ok, spent, rung


def main(argv: list[str] | None = None) -> None:
    st = begin("compare", _args, argv)
    cfg, args = st.cfg, st.args

    import numpy as np

    from pipeline.common.atomic import atomic_dir
    from pipeline.routing import metrics as rm
    from pipeline.routing.bootstrap import band, resamples
    from pipeline.routing.outcomes import load_routing_inputs

    o, costs = load_routing_inputs(cfg, args.eval_dir, args.ladder_dir, args.speed)
    te = o.splits == "test"
    te_ids = [i for i, m in zip(o.ids, te) if m]
    correct = o.correct[te]
    n = len(te_ids)
    idx = resamples(n, cfg.seed)
    dense_ok = correct[:, 0]
    with st.tracked() as tracker:
        rows, per_resample = {}, {}

        def add(name, ok, spent, kind):
            rows[name] = {"kind": kind, **rm.strategy_figures(ok, spent, dense_ok, idx)}
            per_resample[name] = np.asarray(ok, dtype=np.float64)[idx].mean(1)

        for k, r in enumerate(o.rungs):
            add("dense" if r == "dense" else f"rung {r}", correct[:, k], np.full(n, o.cost[k]), "single rung")
        runs = {"router": Path(args.router), "cascade": Path(args.cascade), "route-then-escalate": Path(args.escalate)}
        routed = {}
        for name, d in runs.items():
            ok, spent, rung = decided(d / "decisions.jsonl", o, te_ids)
            add(name, ok, spent, "strategy")
            routed[name] = (ok, spent, rung)
        r_ok, r_spent, r_rung = routed["router"]
        rand_pt = rm.matched_random(r_rung, correct, o.cost)
        rand_b = rm.matched_random_resampled(r_rung, correct, idx)
        hull = rm.upper_hull(list(rm.single_rungs(correct, o.cost, o.rungs).values()))
        hull_pt = float(rm.hull_value(hull, np.asarray([r_spent.mean()]))[0])
        hull_b = rm.hull_at_cost_resampled(correct, o.cost, r_spent, idx)
        for name, pt, b in (("random at the router's cost", rand_pt[1], rand_b),
                            ("single-rung hull at the router's cost", hull_pt, hull_b)):
            rows[name] = {"kind": "baseline", "accuracy": {"value": float(pt), **band(b)},
                          "relative_cost": rows["router"]["relative_cost"],
                          "cost_saved": rows["router"]["cost_saved"],
                          "drop": {"value": float(dense_ok.mean() - pt), **band(per_resample["dense"] - b)}}
            per_resample[name] = b
        oracle = rm.oracle(correct, o.cost)
        add("oracle", correct[np.arange(n), oracle], o.cost[oracle], "bound")
        comparisons = {
            "router - random at matched cost": rm.versus(per_resample["router"], rand_b, r_ok.mean() - rand_pt[1]),
            "router - single-rung hull at its cost": rm.versus(per_resample["router"], hull_b, r_ok.mean() - hull_pt),
            **{f"{s} - dense": rm.versus(per_resample[s], per_resample["dense"],
                                         rows[s]["accuracy"]["value"] - rows["dense"]["accuracy"]["value"])
               for s in runs},
        }
        table = {"n": n, "cost_kind": costs.kind, "cost_unit": costs.unit, "bootstrap_samples": int(len(idx)),
                 "rows": rows, "comparisons": comparisons}

        def cell(f):
            return f"{f['value']:.3f} [{f['lo']:.3f}, {f['hi']:.3f}]"

        csv = ["strategy,kind," + ",".join(f"{m},{m}_lo,{m}_hi" for m in ("accuracy", "relative_cost", "cost_saved", "drop"))]
        md = [f"Test split, n = {n}; cost = {costs.kind} ({costs.unit}) relative to dense; 95% bootstrap intervals.",
              "", "| strategy | accuracy | cost x dense | saved | drop vs dense |", "|---|---|---|---|---|"]
        for name, row in rows.items():
            figs = [row[m] for m in ("accuracy", "relative_cost", "cost_saved", "drop")]
            csv.append(f"{name},{row['kind']}," + ",".join(f"{f['value']:.6f},{f['lo']:.6f},{f['hi']:.6f}" for f in figs))
            md.append(f"| {name} | " + " | ".join(cell(f) for f in figs) + " |")
        md += ["", "| paired difference in accuracy | value [95%] |", "|---|---|"]
        md += [f"| {k} | {cell(v)} |" for k, v in comparisons.items()]
        with atomic_dir(Path(args.out)) as tmp:
            (tmp / "table.json").write_text(json.dumps(table, indent=2) + "\n")
            (tmp / "table.csv").write_text("\n".join(csv) + "\n")
            (tmp / "table.md").write_text("\n".join(md) + "\n")
        tracker.summary({f"compare/{name}/{m}/{part}": v for name, row in rows.items()
                         for m, f in row.items() if isinstance(f, dict) for part, v in f.items()})
        header = csv[0].split(",")
        tracker.table("compare/test_table", [dict(zip(header, line.split(","))) for line in csv[1:]])
    st.done(read=f"{len(o.rungs)} rungs, router/cascade/escalate decisions on {n} test queries",
            wrote=f"{args.out}/ (router - random {cell(comparisons['router - random at matched cost'])}; "
            f"router - hull {cell(comparisons['router - single-rung hull at its cost'])})")


if __name__ == "__main__":
    main()
