"""Stage `cascade`: start at the cheapest rung, escalate while it is unsure; thresholds with a bound.

Reads every rung's `artifacts/eval/<rung>/records.jsonl` and the rungs' costs (`cost.*`); writes
`--out` (default artifacts/cascade/):
- `thresholds.json`: rung order, the deferral rule (`pipeline/routing/deferral.py`: a logistic model
  per rung of P(rung wrong where dense is right) from all its confidence signals + the task, fitted
  on router-train; for every Pareto rung, so route-then-escalate can use it too), the deployed
  thresholds (`cascade.method`) and both rules' thresholds (Learn-then-Test and the per-rung
  quantile baseline), epsilon, delta, calibration size;
- `metrics.json` (DVC metrics): the certified figures; per rule on the test split, accuracy, mean
  cost counting every rung tried, saving and drop against dense, each with a 95% bootstrap interval,
  share answered at each rung; APGR / CPT / AIQ of the cascade's curve; the deferral model's
  cross-validated log-loss against per-task base rates; the LTT hypotheses tested on calibration;
- `curves.csv` (DVC plots, with interval columns), `curves.png`;
- `decisions.jsonl`: per test query, the rung that answered under the deployed thresholds.

A rung answers when its score, 1 - P(harm), is >= its threshold. See `pipeline/routing/thresholds.py`
for the method. Which rungs to cascade through (when `cascade.rungs` is null) is chosen among the
Pareto rungs on router-train, requiring the drop bound (not only the mean) to hold there, so that
the choice is one calibration can certify. The grid and the deferral model come from router-train,
the thresholds from calibration; the test split is used once, for the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--speed", default="artifacts/speed/speed.json", help="read only when cost.kind=latency")
    ap.add_argument("--out", default="artifacts/cascade")


def candidate_rungs(o, chosen: list[str] | None) -> list[str]:
    """Rungs that may answer before dense, cheapest first: `cascade.rungs` (those cheaper than dense),
    else the cost-quality Pareto front on router-train."""
    from pipeline.routing.policies import pareto_front

    if chosen is not None:
        pool = [r for r in chosen if r != "dense" and o.cost[o.rung_index(r)] < o.cost[0]]
        return sorted(pool, key=lambda r: (o.cost[o.rung_index(r)], o.rung_index(r)))
    train = o.subset("router_train")
    return [o.rungs[k] for k in pareto_front(train.correct.mean(0), o.cost)]


def deferral_scores(o, deferral, rungs: list[str], task) -> "np.ndarray":  # noqa: F821
    """[N, len(rungs)] score = 1 - P(harm) of each rung; dense (if listed) scores 1."""
    import numpy as np

    from pipeline.routing.deferral import signal_matrix

    cols = [np.ones(len(o)) if r == "dense" else 1.0 - deferral.risk(r, signal_matrix(o.confidence, o.rung_index(r)), task)
            for r in rungs]
    return np.stack(cols, axis=1) if cols else np.zeros((len(o), 0))


def fit(o, cc, seed: int) -> dict:
    """The deferral model and rung order on router-train, then both rules' thresholds on calibration."""
    import numpy as np

    from pipeline.routing import thresholds as T
    from pipeline.routing.deferral import Deferral, cross_validated_fit, signal_matrix
    from pipeline.routing.outcomes import task_indices

    candidates = candidate_rungs(o, cc.rungs)
    tr, ca = o.splits == "router_train", o.splits == "calibration"
    tasks = sorted(set(np.asarray(o.tasks)[tr]))
    task = task_indices(o.tasks, tasks)
    signals = {r: signal_matrix(o.confidence, o.rung_index(r)) for r in candidates}
    harm = {r: (~o.correct[:, o.rung_index(r)]) & o.correct[:, 0] for r in candidates}
    deferral = Deferral(cc.deferral, tasks, cc.signal, cc.deferral_l2).fit(
        candidates, {r: s[tr] for r, s in signals.items()}, task[tr], {r: h[tr] for r, h in harm.items()})
    cv = cross_validated_fit(candidates, {r: s[tr] for r, s in signals.items()}, task[tr],
                             {r: h[tr] for r, h in harm.items()}, len(tasks), cc.deferral_l2, 5, seed)
    levels = np.linspace(0, 1, cc.grid + 1)[1:]
    order = candidates + ["dense"]
    score = deferral_scores(o, deferral, order, task)
    correct = o.correct[:, [o.rung_index(r) for r in order]]
    cost = o.cost[[o.rung_index(r) for r in order]]
    if cc.rungs is None and len(candidates) > 1:
        keep = T.select_rungs(score[tr], correct[tr], cost, levels, cc.epsilon, cc.delta, seed)
        order = [candidates[i] for i in keep] + ["dense"]
    cols = [(candidates + ["dense"]).index(r) for r in order]
    score, correct, cost = score[:, cols], correct[:, cols], cost[cols]
    grid = T.threshold_grid(score[tr][:, :-1], levels)
    args = (score[ca], correct[ca], correct[ca][:, -1])
    ltt = T.learn_then_test(*args, cost, grid, levels, cc.epsilon, cc.delta, seed)
    quantile = T.per_rung_quantile(*args, cc.epsilon)
    return {"order": order, "candidates": candidates, "deferral": deferral, "deferral_cv": cv, "ltt": ltt,
            "quantile": quantile, "grid": grid, "levels": levels, "n_calibration": int(ca.sum()),
            "score": score, "correct": correct, "cost": cost, "task": task}


def test_figures(fitted, te, thresholds, epsilon, idx) -> tuple[dict, "np.ndarray"]:  # noqa: F821
    import numpy as np

    from pipeline.routing import metrics as rm
    from pipeline.routing.thresholds import simulate, to_json

    order = fitted["order"]
    correct = fitted["correct"][te]
    at, ok, spent = simulate(fitted["score"][te], correct, fitted["cost"], thresholds)
    dense_ok = correct[:, -1]
    share = np.bincount(at, minlength=len(order)) / len(at)
    figs = rm.strategy_figures(ok, spent, dense_ok, idx)
    return {**figs, "bound_held": bool(figs["drop"]["value"] <= epsilon),
            "share_answered": {r: float(s) for r, s in zip(order, share)},
            "thresholds": dict(zip(order[:-1], to_json(thresholds))), "n": int(len(at))}, at


def main(argv: list[str] | None = None) -> None:
    st = begin("cascade", _args, argv)
    cfg, args = st.cfg, st.args
    cc = cfg.cascade


    from pipeline.common.atomic import atomic_dir
    from pipeline.routing import metrics as rm
    from pipeline.routing.bootstrap import band, resamples
    from pipeline.routing.outcomes import load_routing_inputs
    from pipeline.routing.plots import curves_picture
    from pipeline.routing.thresholds import simulate, to_json

    o, costs = load_routing_inputs(cfg, args.eval_dir, args.ladder_dir, args.speed)
    for s in ("router_train", "calibration", "test"):
        if not (o.splits == s).any():
            raise SystemExit(f"cascade: the {s} split is empty; give data.splits.{s} a share and more items")
    with st.tracked() as tracker:
        fitted = fit(o, cc, cfg.seed)
        order = fitted["order"]
        if len(order) < 2:  # a valid, if useless, cascade: say so rather than fail the build
            st.log.warning("cascade: no rung below dense is usable (relative costs %s); the cascade is dense only",
                           dict(zip(o.rungs, o.cost.round(3))))
        te = o.splits == "test"
        n_test = int(te.sum())
        idx = resamples(n_test, cfg.seed)
        rules = {}
        for name in ("ltt", "quantile"):
            figures, at = test_figures(fitted, te, fitted[name].thresholds, cc.epsilon, idx)
            rules[name] = figures
            if name == cc.method:
                deployed_at = at
        # The cascade's curve on the test split: every acceptance level of the grid, with its interval.
        te_args = (fitted["score"][te], fitted["correct"][te], fitted["cost"])
        dense_ok = fitted["correct"][te][:, -1]
        curve, bands = [(float(fitted["cost"][-1]), float(dense_ok.mean()))], [band(dense_ok[idx].mean(1))]
        for th in fitted["grid"]:
            _, ok, spent = simulate(*te_args, th)
            curve.append(rm.point(ok, spent))
            bands.append(band(ok[idx].mean(1)))
        singles = rm.single_rungs(o.correct[te], o.cost, o.rungs)
        weak, strong = min(singles.values()), singles["dense"]
        c_range = (float(o.cost.min()), float(o.cost.max()))
        deployed = rules[cc.method]
        summary = rm.summarise("cascade", curve, (deployed["relative_cost"]["value"], deployed["accuracy"]["value"]),
                               weak, strong, c_range)
        ltt = fitted["ltt"]
        accepted = [t for t in ltt.tested if t["rejected"] and t["level"] == ltt.level]
        certified = {"epsilon": cc.epsilon, "delta": cc.delta, "method": cc.method, "level": ltt.level,
                     "calibration_cost": accepted[0]["cost"] if accepted else float(fitted["cost"][-1]),
                     "calibration_drop": accepted[0]["drop"] if accepted else 0.0,
                     "calibration_drop_upper_bound": accepted[0]["upper_bound"] if accepted else 0.0,
                     "test_drop": rules["ltt"]["drop"]["value"], "test_bound_held": rules["ltt"]["bound_held"],
                     "test_relative_cost": rules["ltt"]["relative_cost"]["value"],
                     "test_cost_saved": rules["ltt"]["cost_saved"]["value"]}
        metrics = {
            "order": order, "candidates": fitted["candidates"], "deferral": cc.deferral, "signal": cc.signal,
            "method": cc.method, "epsilon": cc.epsilon, "delta": cc.delta,
            "cost_kind": costs.kind, "cost_unit": costs.unit,
            "relative_cost": {r: float(c) for r, c in zip(o.rungs, o.cost)},
            "n_calibration": fitted["n_calibration"], "deferral_cv": fitted["deferral_cv"],
            "certified": certified,
            "test": {**rules, "curve": {k: summary[k] for k in summary
                                        if k not in ("strategy", "accuracy", "relative_cost", "cost_saved")},
                     "single_rung_hull_aiq": rm.aiq(list(singles.values()), *c_range)},
            "ltt": {"level": ltt.level, "hypotheses_tested": len(ltt.tested),
                    "rejected": sum(t["rejected"] for t in ltt.tested), "tested": ltt.tested},
        }
        thresholds = {
            "format": "ladder-cascade/2", "order": order, "candidates": fitted["candidates"],
            "method": cc.method, "deferral": fitted["deferral"].to_json(),
            "thresholds": to_json(fitted[cc.method].thresholds),
            "rules": {n: to_json(fitted[n].thresholds) for n in ("ltt", "quantile")},
            "ltt_level": ltt.level, "epsilon": cc.epsilon, "delta": cc.delta,
            "n_calibration": fitted["n_calibration"], "prediction": cfg.evaluate.prediction,
            "rule": "rung k answers when 1 - deferral risk >= thresholds[k]; null: the rung is skipped (never run); "
                    "dense always answers",
        }
        marks = {f"{n} (deployed)" if n == cc.method else n: (r["relative_cost"]["value"], r["accuracy"]["value"])
                 for n, r in rules.items()}
        te_ids = [i for i, m in zip(o.ids, te) if m]
        with atomic_dir(Path(args.out)) as tmp:
            (tmp / "thresholds.json").write_text(json.dumps(thresholds, indent=2) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            with open(tmp / "decisions.jsonl", "w") as fh:
                runs = [t is not None for t in thresholds["thresholds"]] + [True]  # null: skipped, never run
                for i, k in zip(te_ids, deployed_at):
                    tried = [r for j, r in enumerate(order[:k + 1]) if runs[j]]
                    fh.write(json.dumps({"id": i, "rung": order[k], "tried": tried}) + "\n")
            with open(tmp / "band.csv", "w") as fh:  # DVC plots: the curve and its 95% interval
                fh.write("relative_cost,accuracy,accuracy_lo,accuracy_hi\n")
                for (c, a), b in sorted(zip(curve, bands)):
                    fh.write(f"{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
            with open(tmp / "curves.csv", "w") as fh:
                fh.write("strategy,relative_cost,accuracy,accuracy_lo,accuracy_hi\n")
                for (c, a), b in sorted(zip(curve, bands)):
                    fh.write(f"cascade,{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
                for name, (c, a) in singles.items():
                    b = band(o.correct[te][:, o.rung_index(name)][idx].mean(1))
                    fh.write(f"rung {name},{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
            curves_picture(tmp / "curves.png", f"cascade ({cc.deferral}; {' > '.join(order)}), test n={n_test}",
                           singles, {"cascade (acceptance level swept)": curve}, marks,
                           f"mean cost per query, every rung tried (x dense, {costs.kind})",
                           bands={"cascade (acceptance level swept)": bands})
        tracker.summary({f"cascade/{n}/{k}/{part}": v for n, r in rules.items() for k, fig in r.items()
                         if isinstance(fig, dict) and "value" in fig for part, v in fig.items()})
        tracker.summary({"cascade/apgr": summary["apgr"], "cascade/aiq": summary["aiq"],
                         "cascade/bound_held": rules["ltt"]["bound_held"]})
        tracker.curves("cascade", {"cascade": curve}, Path(args.out) / "curves.png", bands={"cascade": bands})
    d = rules[cc.method]
    st.done(read=f"{len(o.rungs)} rungs x {len(o)} queries",
            wrote=f"{args.out}/ ({cc.method}, {' > '.join(order)}: test acc {d['accuracy']['value']:.3f} "
            f"[{d['accuracy']['lo']:.3f}, {d['accuracy']['hi']:.3f}] vs dense "
            f"{rules['ltt']['accuracy']['value'] + rules['ltt']['drop']['value']:.3f} at "
            f"{d['relative_cost']['value']:.2f}x cost; drop {d['drop']['value']:+.3f} <= {cc.epsilon}: {d['bound_held']}; "
            f"LTT rejected {metrics['ltt']['rejected']}/{len(fitted['levels'])} levels)")


if __name__ == "__main__":
    main()
