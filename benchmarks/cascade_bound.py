"""Benchmark: does the cascade's bound hold as often as it promises? (`make bench-cascade`)

Pools the calibration and test queries of the built evaluation, then many times over:
1. **re-split**: shuffles the pool into a calibration part (the original calibration size) and a
   test part, fits both threshold rules on the first and measures the accuracy drop against dense
   on the second. A "violation" is a test drop > epsilon. The test part is finite, so part of
   what it counts is the test sample's own noise, not only the rule's;
2. **bootstrap**: draws a calibration set of the same size with replacement from the pool and
   measures the drop on the whole pool, treated as the population: exactly the setting the
   Learn-then-Test guarantee speaks about, so its violation rate must stay <= delta.

Prints the violation rate of Learn-then-Test and of the per-rung quantile baseline next to delta,
and their mean cost. The rung order and the grid come from the router-train split, as in the stage.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="benchmarks/cascade_bound.py", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--eval-dir", default="artifacts/eval")
    ap.add_argument("--repeats", type=int, default=500)
    ap.add_argument("--epsilon", type=float, default=None, help="default: cascade.epsilon")
    ap.add_argument("--delta", type=float, default=None, help="default: cascade.delta")
    args = ap.parse_args(argv)

    from pipeline.cascade import candidate_order, fit
    from pipeline.common.config import load_config
    from pipeline.routing import thresholds as T
    from pipeline.routing.outcomes import load_outcomes

    cfg = load_config(args.params)
    cc = cfg.cascade
    eps = cc.epsilon if args.epsilon is None else args.epsilon
    delta = cc.delta if args.delta is None else args.delta
    o = load_outcomes(args.eval_dir, cfg.rungs, cfg.evaluate.prediction)
    candidates = candidate_order(o.rungs, o.cost, cc.rungs)
    order = fit(o, candidates, cc.rungs is None, cc.signal, eps, delta, cc.grid, cfg.seed)["order"]
    idx = [o.rung_index(r) for r in order]
    ref = o.subset("router_train")
    levels = np.linspace(0, 1, cc.grid + 1)[1:]
    grid = T.threshold_grid(ref.confidence[cc.signal][:, idx[:-1]], levels)
    pool = (o.splits == "calibration") | (o.splits == "test")
    conf, correct, cost = o.confidence[cc.signal][pool][:, idx], o.correct[pool][:, idx], o.cost[idx]
    n_pool, n_cal = int(pool.sum()), int((o.splits == "calibration").sum())
    rng = np.random.default_rng(cfg.seed)

    def rules(cal):
        a = (conf[cal], correct[cal], correct[cal, -1])
        return {"ltt": T.learn_then_test(*a, cost, grid, levels, eps, delta, cfg.seed).thresholds,
                "quantile": T.per_rung_quantile(*a, eps).thresholds}

    def drop_cost(rows, th):
        _, ok, spent = T.simulate(conf[rows], correct[rows], cost, th)
        return correct[rows, -1].mean() - ok.mean(), spent.mean()

    results = {m: {k: [] for k in ("resplit_drop", "resplit_cost", "boot_drop", "boot_cost")} for m in ("ltt", "quantile")}
    everything = np.arange(n_pool)
    for _ in tqdm(range(args.repeats), desc="re-splits", unit="split"):
        perm = rng.permutation(n_pool)
        cal, test = perm[:n_cal], perm[n_cal:]
        for m, th in rules(cal).items():
            d, c = drop_cost(test, th)
            results[m]["resplit_drop"].append(d)
            results[m]["resplit_cost"].append(c)
        boot = rng.integers(0, n_pool, n_cal)
        for m, th in rules(boot).items():
            d, c = drop_cost(everything, th)
            results[m]["boot_drop"].append(d)
            results[m]["boot_cost"].append(c)

    print(f"cascade {' > '.join(order)}, signal {cc.signal}, epsilon {eps}, delta {delta}; "
          f"pool {n_pool} queries, calibration {n_cal}, test {n_pool - n_cal}, {args.repeats} repeats")
    print(f"{'rule':10s} {'re-split violation':>19s} {'mean cost':>10s} {'bootstrap violation':>20s} {'mean cost':>10s}  delta")
    for m, r in results.items():
        rv = np.mean(np.asarray(r["resplit_drop"]) > eps)
        bv = np.mean(np.asarray(r["boot_drop"]) > eps)
        print(f"{m:10s} {rv:19.3f} {np.mean(r['resplit_cost']):10.3f} {bv:20.3f} {np.mean(r['boot_cost']):10.3f}  {delta}")


if __name__ == "__main__":
    main()
