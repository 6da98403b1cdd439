"""Stage `cascade`: start at the cheapest rung, escalate while confidence is low; thresholds with a bound.

Reads every rung's `artifacts/eval/<rung>/records.jsonl` + `metrics.json`; writes `--out`
(default artifacts/cascade/):
- `thresholds.json`: rung order, signal, the deployed thresholds (`cascade.method`) and both rules'
  thresholds (Learn-then-Test and the per-rung quantile baseline), epsilon, delta, calibration size;
- `metrics.json` (DVC metrics): per rule on the test split, accuracy, mean cost counting every rung
  tried, share answered at each rung, the drop against dense and whether it stayed <= epsilon;
  APGR / CPT / AIQ of the cascade's curve; the LTT hypotheses tested on calibration;
- `curves.csv`, `curves.png`: the cascade swept over its acceptance level, the deployed points, the
  single rungs;
- `decisions.jsonl`: per test query, the rung that answered under the deployed thresholds.

See `pipeline/thresholds.py` for the method. The grid is built from the router-train split, the
thresholds are tested on the calibration split, the test split is used once, for the figures.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--out", default="artifacts/cascade")


def candidate_order(rungs: list[str], cost, chosen: list[str] | None) -> list[str]:
    """Rungs that may be tried before dense, by cost: `cascade.rungs` or every rung cheaper than dense."""
    pool = [r for r in (chosen if chosen is not None else rungs) if r != "dense"]
    c = dict(zip(rungs, cost))
    return [r for r in sorted(pool, key=lambda r: c[r]) if c[r] < c["dense"]] + ["dense"]


def fit(o, candidates: list[str], auto: bool, signal: str, epsilon: float, delta: float, grid_size: int,
        seed: int) -> dict:
    """The rung order (chosen on router-train when `auto`), then both rules' thresholds on calibration."""
    import numpy as np

    from pipeline.routing import thresholds as T

    ref, cal = o.subset("router_train"), o.subset("calibration")
    levels = np.linspace(0, 1, grid_size + 1)[1:]
    order = candidates
    if auto and len(candidates) > 2:
        idx = [o.rung_index(r) for r in candidates]
        keep = T.select_rungs(ref.confidence[signal][:, idx], ref.correct[:, idx], o.cost[idx], levels, epsilon)
        order = [candidates[i] for i in keep] + ["dense"]
    idx = [o.rung_index(r) for r in order]
    grid = T.threshold_grid(ref.confidence[signal][:, idx[:-1]], levels)
    cost = o.cost[idx]
    args = (cal.confidence[signal][:, idx], cal.correct[:, idx], cal.correct[:, 0])
    ltt = T.learn_then_test(*args, cost, grid, levels, epsilon, delta, seed)
    quantile = T.per_rung_quantile(*args, epsilon)
    return {"order": order, "ltt": ltt, "quantile": quantile, "grid": grid, "levels": levels,
            "n_calibration": len(cal)}


def test_figures(o, order, signal, thresholds, epsilon) -> dict:
    import numpy as np

    from pipeline.routing.thresholds import simulate, to_json

    idx = [o.rung_index(r) for r in order]
    te = o.subset("test")
    at, ok, spent = simulate(te.confidence[signal][:, idx], te.correct[:, idx], o.cost[idx], thresholds)
    dense_acc = float(te.correct[:, 0].mean())
    drop = dense_acc - float(ok.mean())
    share = np.bincount(at, minlength=len(order)) / len(at)
    return {"accuracy": float(ok.mean()), "relative_cost": float(spent.mean()), "cost_saved": 1 - float(spent.mean()),
            "dense_accuracy": dense_acc, "drop": drop, "bound_held": bool(drop <= epsilon),
            "share_answered": {r: float(s) for r, s in zip(order, share)},
            "thresholds": dict(zip(order[:-1], to_json(thresholds))), "n": len(te)}, at


def main(argv: list[str] | None = None) -> None:
    st = begin("cascade", _args, argv)
    cfg, args = st.cfg, st.args
    cc = cfg.cascade


    from pipeline.common.atomic import atomic_dir
    from pipeline.routing import metrics as rm
    from pipeline.routing.outcomes import load_outcomes
    from pipeline.routing.plots import curves_picture
    from pipeline.routing.thresholds import simulate, to_json

    o = load_outcomes(args.eval_dir, cfg.rungs, cfg.evaluate.prediction)
    for s in ("router_train", "calibration", "test"):
        if not (o.splits == s).any():
            raise SystemExit(f"cascade: the {s} split is empty; give data.splits.{s} a share and more items")
    candidates = candidate_order(o.rungs, o.cost, cc.rungs)
    if len(candidates) < 2:  # a valid, if useless, cascade: say so rather than fail the build
        st.log.warning("cascade: no rung is cheaper than dense (relative costs %s); the cascade is dense only",
                       dict(zip(o.rungs, o.cost.round(3))))
    with st.tracked() as tracker:
        fitted = fit(o, candidates, cc.rungs is None, cc.signal, cc.epsilon, cc.delta, cc.grid, cfg.seed)
        order = fitted["order"]
        rules = {}
        for name in ("ltt", "quantile"):
            figures, at = test_figures(o, order, cc.signal, fitted[name].thresholds, cc.epsilon)
            rules[name] = figures
            if name == cc.method:
                deployed_at = at
        # The cascade's curve on the test split: every acceptance level of the grid.
        idx = [o.rung_index(r) for r in order]
        te = o.subset("test")
        te_args = (te.confidence[cc.signal][:, idx], te.correct[:, idx], o.cost[idx])
        curve = [(1.0, float(te.correct[:, 0].mean()))]
        for th in fitted["grid"]:
            _, ok, spent = simulate(*te_args, th)
            curve.append(rm.point(ok, spent))
        singles = rm.single_rungs(te.correct, o.cost, o.rungs)
        cheapest = min(singles.values())
        weak, strong = cheapest, singles["dense"]
        c_range = (float(o.cost.min()), float(o.cost.max()))
        deployed = rules[cc.method]
        summary = rm.summarise("cascade", curve, (deployed["relative_cost"], deployed["accuracy"]), weak, strong,
                               c_range)
        ltt = fitted["ltt"]
        metrics = {
            "order": order, "candidates": candidates, "signal": cc.signal, "method": cc.method, "epsilon": cc.epsilon, "delta": cc.delta,
            "cost_kind": cfg.evaluate.routing_cost, "n_calibration": fitted["n_calibration"],
            "test": {**rules, "curve": {k: summary[k] for k in summary if k not in ("strategy",)},
                     "single_rung_hull_aiq": rm.aiq(list(singles.values()), *c_range)},
            "ltt": {"level": ltt.level, "hypotheses_tested": len(ltt.tested),
                    "rejected": sum(t["rejected"] for t in ltt.tested), "tested": ltt.tested},
        }
        thresholds = {
            "format": "ladder-cascade/1", "order": order, "signal": cc.signal, "method": cc.method,
            "thresholds": to_json(fitted[cc.method].thresholds),
            "rules": {n: to_json(fitted[n].thresholds) for n in ("ltt", "quantile")},
            "ltt_level": ltt.level, "epsilon": cc.epsilon, "delta": cc.delta,
            "n_calibration": fitted["n_calibration"], "prediction": cfg.evaluate.prediction,
            "rule": "rung k answers when its confidence >= thresholds[k]; null: the rung is skipped (never run); "
                    "dense always answers",
        }
        marks = {f"{n} (deployed)" if n == cc.method else n: (r["relative_cost"], r["accuracy"])
                 for n, r in rules.items()}
        with atomic_dir(Path(args.out)) as tmp:
            (tmp / "thresholds.json").write_text(json.dumps(thresholds, indent=2) + "\n")
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            with open(tmp / "decisions.jsonl", "w") as fh:
                for i, k in zip(te.ids, deployed_at):
                    fh.write(json.dumps({"id": i, "rung": order[k], "tried": order[:k + 1]}) + "\n")
            with open(tmp / "curves.csv", "w") as fh:
                fh.write("strategy,relative_cost,accuracy\n")
                for c, a in sorted(curve):
                    fh.write(f"cascade,{c:.6f},{a:.6f}\n")
                for name, (c, a) in singles.items():
                    fh.write(f"rung {name},{c:.6f},{a:.6f}\n")
            curves_picture(tmp / "curves.png", f"cascade ({cc.signal}; {' > '.join(order)}), test n={len(te)}",
                           singles, {"cascade (acceptance level swept)": curve}, marks,
                           f"mean cost per query, every rung tried (x dense, {cfg.evaluate.routing_cost})")
        tracker.summary({f"cascade/{n}/{k}": v for n, r in rules.items()
                         for k, v in r.items() if isinstance(v, (int, float, bool))})
        tracker.summary({"cascade/apgr": summary["apgr"], "cascade/aiq": summary["aiq"]})
        tracker.curves("cascade", {"cascade": curve}, Path(args.out) / "curves.png")
    d = rules[cc.method]
    st.done(read=f"{len(o.rungs)} rungs x {len(o)} queries",
            wrote=f"{args.out}/ ({cc.method}: test acc {d['accuracy']:.3f} vs dense {d['dense_accuracy']:.3f} at "
            f"{d['relative_cost']:.2f}x cost; drop {d['drop']:+.3f} <= {cc.epsilon}: {d['bound_held']}; "
            f"LTT rejected {metrics['ltt']['rejected']}/{len(fitted['levels'])} levels)")


if __name__ == "__main__":
    main()
