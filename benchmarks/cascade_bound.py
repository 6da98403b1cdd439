"""Benchmark: do the certified strategies keep their bound as often as they promise? (`make bench-cascade`)

For the router, the cascade and route-then-escalate, each as the built stages define it (the risk
model, the deferral rule, the rung order and every threshold family fixed on router-train, read
from `artifacts/router` and `artifacts/cascade`), pools the calibration and test queries, then many
times over:
1. **re-split**: shuffles the pool into a calibration part (the original calibration size) and a
   test part, certifies a threshold by fixed-sequence Learn-then-Test on the first and measures the
   accuracy drop against dense on the second. A "violation" is a test drop > epsilon. The test part
   is finite, so part of what it counts is the test sample's own noise, not only the rule's;
2. **bootstrap**: draws a calibration set of the same size with replacement from the pool and
   measures the drop on the whole pool, treated as the population: exactly the setting the
   Learn-then-Test guarantee speaks about, so its violation rate must stay <= delta.

Prints, per strategy, the violation rates next to delta and the mean cost; the cascade's per-rung
quantile rule (no guarantee) is shown beside it. `--out` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm


def families(cfg, o, router_dir: Path, cascade_dir: Path):
    """Per strategy: (ok [G, N], spent [G, N]) of every member of its family on every query, in the
    family's testing order (most conservative first)."""
    from pipeline.cascade import deferral_scores
    from pipeline.escalate import load_inputs, paired_grid
    from pipeline.routing import thresholds as T
    from pipeline.routing.deferral import Deferral
    from pipeline.routing.outcomes import task_indices
    from pipeline.routing.policies import escalate, route, routed_outcome

    meta, risk, candidates, grid, post = load_inputs(o, router_dir, cascade_dir)
    out = {}
    rows = [routed_outcome(route(risk, candidates, t), o.correct, o.cost) for t in grid]
    out["router"] = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
    dgrid = paired_grid(grid, post, candidates, o.splits == "router_train")
    rows = [escalate(route(risk, candidates, t), post, d, o.correct, o.cost)[1:] for t, d in zip(grid, dgrid)]
    out["route-then-escalate"] = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
    cth = json.loads((cascade_dir / "thresholds.json").read_text())
    deferral = Deferral.from_json(cth["deferral"])
    order = cth["order"]
    score = deferral_scores(o, deferral, order, task_indices(o.tasks, deferral.tasks))
    correct = o.correct[:, [o.rung_index(r) for r in order]]
    cost = o.cost[[o.rung_index(r) for r in order]]
    levels = np.linspace(0, 1, cfg.cascade.grid + 1)[1:]
    tr = o.splits == "router_train"
    cgrid = T.threshold_grid(score[tr][:, :-1], levels)
    rows = [T.simulate(score, correct, cost, th)[1:] for th in cgrid]
    out["cascade"] = (np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]))
    return out, order, (score, correct, cost)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="benchmarks/cascade_bound.py", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--ladder-dir", default="artifacts/ladder")
    ap.add_argument("--speed", default="artifacts/speed/speed.json")
    ap.add_argument("--router", default="artifacts/router")
    ap.add_argument("--cascade", default="artifacts/cascade")
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--epsilon", type=float, default=None, help="default: router.epsilon / cascade.epsilon")
    ap.add_argument("--delta", type=float, default=None, help="default: router.delta / cascade.delta")
    ap.add_argument("--out", default=None, help="also write the figures here (JSON)")
    args = ap.parse_args(argv)

    from pipeline.common.config import load_config
    from pipeline.routing import thresholds as T
    from pipeline.routing.outcomes import load_routing_inputs

    cfg = load_config(args.params)
    o, _ = load_routing_inputs(cfg, args.eval_dir, args.ladder_dir, args.speed)
    fams, order, (score, correct, cost) = families(cfg, o, Path(args.router), Path(args.cascade))
    settings = {"router": (cfg.router.epsilon, cfg.router.delta),
                "cascade": (cfg.cascade.epsilon, cfg.cascade.delta),
                "route-then-escalate": (cfg.cascade.epsilon, cfg.cascade.delta)}
    if args.epsilon is not None or args.delta is not None:
        settings = {k: (args.epsilon if args.epsilon is not None else e, args.delta if args.delta is not None else d)
                    for k, (e, d) in settings.items()}
    pool = np.nonzero((o.splits == "calibration") | (o.splits == "test"))[0]
    n_pool, n_cal = len(pool), int((o.splits == "calibration").sum())
    dense_ok = o.correct[:, 0]
    rng = np.random.default_rng(cfg.seed)

    def certify(name, cal):
        ok, spent = fams[name]
        eps, delta = settings[name]
        best, _ = T.fixed_sequence(((ok[j, cal], spent[j, cal]) for j in range(len(ok))), dense_ok[cal], 1.0,
                                   eps, delta, cfg.seed)
        return best

    def measure(name, j, rows):
        if j is None:  # nothing certified: always dense
            return 0.0, 1.0
        ok, spent = fams[name]
        return float(dense_ok[rows].mean() - ok[j, rows].mean()), float(spent[j, rows].mean())

    def quantile_rule(cal):
        th = T.per_rung_quantile(score[cal], correct[cal], correct[cal, -1], settings["cascade"][0]).thresholds
        return th

    def quantile_measure(th, rows):
        _, ok, spent = T.simulate(score[rows], correct[rows], cost, th)
        return float(correct[rows, -1].mean() - ok.mean()), float(spent.mean())

    names = [*fams, "cascade, per-rung quantile (no guarantee)"]
    results = {m: {k: [] for k in ("resplit_drop", "resplit_cost", "boot_drop", "boot_cost")} for m in names}
    for _ in tqdm(range(args.repeats), desc="re-splits", unit="split"):
        perm = pool[rng.permutation(n_pool)]
        cal, test = perm[:n_cal], perm[n_cal:]
        boot = pool[rng.integers(0, n_pool, n_cal)]
        for mode, c, rows in (("resplit", cal, test), ("boot", boot, pool)):
            for name in fams:
                d, s = measure(name, certify(name, c), rows)
                results[name][f"{mode}_drop"].append(d)
                results[name][f"{mode}_cost"].append(s)
            d, s = quantile_measure(quantile_rule(c), rows)
            results[names[-1]][f"{mode}_drop"].append(d)
            results[names[-1]][f"{mode}_cost"].append(s)

    print(f"pool {n_pool} queries (calibration {n_cal}, test {n_pool - n_cal}), {args.repeats} repeats; "
          f"cascade {' > '.join(order)}")
    print(f"{'strategy':45s} {'eps':>5s} {'re-split viol.':>15s} {'mean cost':>10s} {'bootstrap viol.':>16s} "
          f"{'mean cost':>10s} {'delta':>6s}")
    summary = {}
    for m, r in results.items():
        eps, delta = settings.get(m, settings["cascade"])
        rv = float(np.mean(np.asarray(r["resplit_drop"]) > eps))
        bv = float(np.mean(np.asarray(r["boot_drop"]) > eps))
        summary[m] = {"epsilon": eps, "delta": delta, "resplit_violation": rv, "resplit_mean_cost": float(np.mean(r["resplit_cost"])),
                      "bootstrap_violation": bv, "bootstrap_mean_cost": float(np.mean(r["boot_cost"]))}
        print(f"{m:45s} {eps:5.2f} {rv:15.3f} {np.mean(r['resplit_cost']):10.3f} {bv:16.3f} "
              f"{np.mean(r['boot_cost']):10.3f} {delta:6.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"pool": n_pool, "calibration": n_cal, "repeats": args.repeats,
                                              "strategies": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
