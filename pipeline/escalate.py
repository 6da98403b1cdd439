"""Stage `escalate`: route-then-escalate. The router picks a rung (its risk <= t); the rung answers;
if its own deferral risk (the cascade's model, from its confidence signals + the task) is above a
deferral threshold d, dense answers instead, and the query pays for both.

Reads every rung's records and costs, `artifacts/router/` (risk model outputs: `risk.jsonl`, the
threshold grid in `router.json`) and `artifacts/cascade/thresholds.json` (the deferral model);
writes `--out` (default artifacts/escalate/):
- `thresholds.json`: the certified pair (t, d), the grids they were chosen from, epsilon, delta;
- `metrics.json` (DVC metrics): the certified figures, the LTT record on calibration, and on the
  test split accuracy, cost, saving and drop against dense with 95% bootstrap intervals, the share
  started at each rung and the share escalated;
- `curves.csv` (DVC plots, with interval columns), `curves.png`; `decisions.jsonl` per test query.

The family is fixed on router-train: member j pairs the router's grid t_j (quantile level j/G of its
out-of-fold risks) with d_j, the same quantile level of the candidates' deferral risks there
(`paired_grid`), so both go from cautious to bold together whatever scale the router's risk is on
(an expected gap in [-1, 1], or a probability). It is walked from the most conservative member by
fixed-sequence Learn-then-Test (`cascade.epsilon`, `cascade.delta`), exactly as router and cascade
are certified.
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
    ap.add_argument("--out", default="artifacts/escalate")


def load_inputs(o, router_dir, cascade_dir):
    """Per query: the router's risk [N, C] (rows in the order of `o.ids`), its candidates (rung
    indices), its grid; the deferral risk [N, R] of every candidate (other columns +inf)."""
    import numpy as np

    from pipeline.common.formats import read_json, read_jsonl
    from pipeline.routing.deferral import Deferral, signal_matrix
    from pipeline.routing.outcomes import task_indices

    meta = read_json(Path(router_dir) / "router.json")
    if meta["rungs"] != o.rungs:
        raise SystemExit(f"escalate: {router_dir} was built for rungs {meta['rungs']}, not {o.rungs}: "
                         "re-run `dvc repro router`")
    by_id = {r["id"]: r["risk"] for r in read_jsonl(Path(router_dir) / "risk.jsonl", ("id", "risk"))}
    missing = [i for i in o.ids if i not in by_id]
    if missing:
        raise SystemExit(f"escalate: {router_dir}/risk.jsonl lacks {len(missing)} queries (e.g. {missing[0]}): "
                         "re-run `dvc repro router`")
    candidates = [o.rung_index(r) for r in meta["candidates"]]
    risk = np.asarray([by_id[i] for i in o.ids], dtype=np.float64).reshape(len(o), len(candidates))
    cth = read_json(Path(cascade_dir) / "thresholds.json")
    deferral = Deferral.from_json(cth["deferral"])
    lacking = [r for r in meta["candidates"] if deferral.kind == "learned" and r not in deferral.per_rung]
    if lacking:
        raise SystemExit(f"escalate: the cascade's deferral model has no rule for router candidates {lacking}: "
                         "re-run `dvc repro cascade`")
    task = task_indices(o.tasks, deferral.tasks)
    post = np.full(o.correct.shape, np.inf)
    for k, r in zip(candidates, meta["candidates"]):
        post[:, k] = deferral.risk(r, signal_matrix(o.confidence, k), task)
    return meta, risk, candidates, np.asarray(meta["grid"], dtype=np.float64), post


def paired_grid(grid, post, candidates, train):
    """[G] deferral thresholds, one per router threshold: the quantile levels 1/G ... 1 of the
    candidates' deferral risks on router-train (`risk_grid`; the last member never escalates)."""
    from pipeline.routing.policies import risk_grid

    return risk_grid(post[train][:, candidates], len(grid))


def main(argv: list[str] | None = None) -> None:
    st = begin("escalate", _args, argv)
    cfg, args = st.cfg, st.args
    cc = cfg.cascade

    import numpy as np

    from pipeline.common.atomic import atomic_dir
    from pipeline.routing import metrics as rm
    from pipeline.routing.bootstrap import band, resamples
    from pipeline.routing.outcomes import load_routing_inputs
    from pipeline.routing.plots import curves_picture
    from pipeline.routing.policies import escalate, route
    from pipeline.routing.thresholds import fixed_sequence

    o, costs = load_routing_inputs(cfg, args.eval_dir, args.ladder_dir, args.speed)
    with st.tracked() as tracker:
        meta, risk, candidates, grid, post = load_inputs(o, args.router, args.cascade)
        ca, te = o.splits == "calibration", o.splits == "test"
        dgrid = paired_grid(grid, post, candidates, o.splits == "router_train")

        def run(mask, t, d):
            choice = route(risk[mask], candidates, t)
            return escalate(choice, post[mask], d, o.correct[mask], o.cost)

        points = [run(ca, t, d)[1:] for t, d in zip(grid, dgrid)]
        best, tested = fixed_sequence(points, o.correct[ca][:, 0], float(o.cost[0]), cc.epsilon, cc.delta, cfg.seed)
        for t in tested:
            t["threshold"], t["deferral_threshold"] = float(grid[t["index"]]), float(dgrid[t["index"]])
        threshold = None if best is None else float(grid[best])
        d_threshold = None if best is None else float(dgrid[best])
        t_eff = -np.inf if threshold is None else threshold
        d_eff = np.inf if d_threshold is None else d_threshold
        n_test = int(te.sum())
        idx = resamples(n_test, cfg.seed)
        answered, ok, spent = run(te, t_eff, d_eff)
        started = route(risk[te], candidates, t_eff)
        dense_ok = o.correct[te][:, 0]
        figs = rm.strategy_figures(ok, spent, dense_ok, idx)
        curve, bands = [], []
        for t, d in zip(grid, dgrid):
            _, c_ok, c_spent = run(te, t, d)
            curve.append(rm.point(c_ok, c_spent))
            bands.append(band(c_ok[idx].mean(1)))
        singles = rm.single_rungs(o.correct[te], o.cost, o.rungs)
        c_range = (float(o.cost.min()), float(o.cost.max()))
        summary = rm.summarise("escalate", curve, rm.point(ok, spent), min(singles.values()), singles["dense"], c_range)
        test = {**figs, "bound_held": bool(figs["drop"]["value"] <= cc.epsilon), "n": n_test,
                "share_started": {r: float(s) for r, s in zip(o.rungs, np.bincount(started, minlength=len(o.rungs)) / n_test)},
                "share_escalated": float(((started != 0) & (answered == 0)).mean()),
                **{k: summary[k] for k in summary if k not in ("strategy", "accuracy", "relative_cost", "cost_saved")}}
        certified = {"epsilon": cc.epsilon, "delta": cc.delta, "threshold": threshold,
                     "deferral_threshold": d_threshold,
                     "calibration_cost": float(o.cost[0]) if best is None else tested[best]["cost"],
                     "calibration_drop": 0.0 if best is None else tested[best]["drop"],
                     "calibration_drop_upper_bound": 0.0 if best is None else tested[best]["upper_bound"],
                     "test_drop": figs["drop"]["value"], "test_bound_held": test["bound_held"],
                     "test_relative_cost": figs["relative_cost"]["value"], "test_cost_saved": figs["cost_saved"]["value"]}
        metrics = {"candidates": meta["candidates"], "cost_kind": costs.kind, "certified": certified,
                   "ltt": {"tested": tested, "rejected": sum(t["rejected"] for t in tested)}, "test": test}
        out = {"format": "ladder-escalate/2", "threshold": threshold, "deferral_threshold": d_threshold,
               "grid": meta["grid"], "deferral_grid": [float(d) for d in dgrid],
               "candidates": meta["candidates"], "epsilon": cc.epsilon, "delta": cc.delta,
               "n_calibration": int(ca.sum()),
               "rule": "route with the router at `threshold` (its risk <= threshold); the chosen rung answers if "
                       "its deferral risk (cascade thresholds.json `deferral`) <= deferral_threshold, else dense "
                       "answers; threshold null: always dense"}
        te_ids = [i for i, m in zip(o.ids, te) if m]
        with atomic_dir(Path(args.out)) as tmp:
            (tmp / "thresholds.json").write_text(json.dumps(out, indent=2) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            with open(tmp / "decisions.jsonl", "w") as fh:
                for i, s, a in zip(te_ids, started, answered):
                    tried = [o.rungs[s]] + (["dense"] if a != s else [])
                    fh.write(json.dumps({"id": i, "rung": o.rungs[a], "tried": tried}) + "\n")
            with open(tmp / "band.csv", "w") as fh:  # DVC plots: the curve and its 95% interval
                fh.write("relative_cost,accuracy,accuracy_lo,accuracy_hi\n")
                for (c, a), b in sorted(zip(curve, bands)):
                    fh.write(f"{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
            with open(tmp / "curves.csv", "w") as fh:
                fh.write("strategy,relative_cost,accuracy,accuracy_lo,accuracy_hi\n")
                for (c, a), b in sorted(zip(curve, bands)):
                    fh.write(f"route-then-escalate,{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
            curves_picture(tmp / "curves.png", f"route-then-escalate, test n={n_test}", singles,
                           {"route-then-escalate (threshold swept)": curve},
                           {"certified": rm.point(ok, spent)}, f"mean cost per query, every rung run (x dense, {costs.kind})",
                           bands={"route-then-escalate (threshold swept)": bands})
        tracker.summary({f"escalate/{k}/{part}": v for k, fig in figs.items() for part, v in fig.items()})
        tracker.summary({"escalate/bound_held": test["bound_held"], "escalate/threshold": threshold,
                         "escalate/deferral_threshold": d_threshold})
        tracker.curves("escalate", {"route-then-escalate": curve}, Path(args.out) / "curves.png",
                       bands={"route-then-escalate": bands})
    st.done(read=f"{len(o.rungs)} rungs x {len(o)} queries, router + deferral",
            wrote=f"{args.out}/ (thresholds {threshold} / {d_threshold}; test acc {figs['accuracy']['value']:.3f} "
            f"[{figs['accuracy']['lo']:.3f}, {figs['accuracy']['hi']:.3f}] at {figs['relative_cost']['value']:.2f}x "
            f"cost; drop {figs['drop']['value']:+.3f}, bound held: {test['bound_held']}; "
            f"escalated {test['share_escalated']:.2f})")


if __name__ == "__main__":
    main()
