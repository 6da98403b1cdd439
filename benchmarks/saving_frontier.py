"""What rung quality would let the router reach a saving goal? A what-if on the built default.

The routing stages certify what the built rungs allow. To see how much better the rungs would have
to be, this takes every rung's recorded per-query outcomes and, for a share q of the queries a
rung gets wrong where dense gets them right (chosen at random, seeded), marks the rung right: a
rung that loses a share q fewer of dense's answers, its help unchanged. Then it re-runs the router
exactly as the stage does (Pareto candidates, risk targets, model chosen by 5-fold CV log-loss on
router-train, grid from out-of-fold risks, Learn-then-Test on calibration) and measures the test
split. Per q, averaged over seeds: each rung's test accuracy, the router's certified test saving
and drop, and how often the bound held. Read it as "rungs this much better would save this much";
the queries, features and costs are the build's own.

    .venv/bin/python benchmarks/saving_frontier.py --shares 0 0.1 0.2 0.3 0.4 --seeds 5   # ~6 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def improved(correct: np.ndarray, share: float, seed: int) -> np.ndarray:
    """correct [N, R] with a `share` of each rung's harm queries (rung wrong, dense right) made right."""
    out = correct.copy()
    rng = np.random.default_rng([seed, 0x5A7E])
    for r in range(1, correct.shape[1]):
        harm = ~correct[:, r] & correct[:, 0]
        out[:, r] |= harm & (rng.uniform(size=len(correct)) < share)
    return out


def run_router(correct, cost, x, task, n_tasks, splits, rc, seed) -> dict:
    """The router stage's choices on these outcomes; test figures of the certified threshold."""
    from pipeline.router import certify, fit_risk_model
    from pipeline.routing import risk_models as RM
    from pipeline.routing.policies import pareto_front, risk_grid, route, routed_outcome

    tr, ca, te = (splits == s for s in ("router_train", "calibration", "test"))
    candidates = pareto_front(correct[tr].mean(0), cost)
    chosen, _, _, p = fit_risk_model(x, task, RM.risk_targets(correct, candidates, rc.risk), tr, n_tasks, rc, seed)
    risk = RM.risk_of(p, rc.risk)
    grid = risk_grid(risk[tr], rc.grid)
    cert = certify(risk[ca], correct[ca], cost, candidates, grid, "accuracy", rc.epsilon, rc.delta, rc.budget, seed)
    t = -np.inf if cert["threshold"] is None else cert["threshold"]
    ok, spent = routed_outcome(route(risk[te], candidates, t), correct[te], cost)
    drop = float(correct[te][:, 0].mean() - ok.mean())
    return {"model": chosen, "saved": 1.0 - float(spent.mean()), "drop": drop, "held": drop <= rc.epsilon}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.4])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from tqdm import tqdm

    from pipeline.common.config import load_config
    from pipeline.evaluation.items import read_items
    from pipeline.routing.features import Featurizer, query_text
    from pipeline.routing.outcomes import load_routing_inputs, task_indices

    cfg = load_config(args.params)
    rc = cfg.router
    o, costs = load_routing_inputs(cfg, "artifacts/eval", "artifacts/ladder", "artifacts/speed/speed.json")
    items = {it["id"]: it for it in read_items(Path("artifacts/data/tasks.jsonl"))}
    texts = [query_text(items[i]["context"], items[i]["choices"]) for i in o.ids]
    x = Featurizer(rc.features, Path("artifacts/ladder/dense") if rc.features == "hidden_state" else None,
                   placement=cfg.model)(texts, batch_size=1, progress=True).double().numpy()
    tasks = sorted(set(np.asarray(o.tasks)[o.splits == "router_train"]))
    task = task_indices(o.tasks, tasks)
    te = o.splits == "test"
    print(f"{len(o)} queries ({int(te.sum())} test); rungs {o.rungs}; cost {costs.kind}; "
          f"risk {rc.risk}; epsilon {rc.epsilon}, delta {rc.delta}; {args.seeds} seeds per share")
    print("| share of harm repaired | " + " | ".join(f"{r} test acc" for r in o.rungs[1:])
          + " | router saved (mean, min-max) | test drop (mean) | bound held | models chosen |")
    print("|---" * (len(o.rungs) + 4) + "|")
    for share in args.shares:
        runs, accs = [], []
        for s in tqdm(range(args.seeds if share > 0 else 1), desc=f"share {share}", leave=False):
            c = improved(o.correct, share, s)
            accs.append(c[te].mean(0))
            runs.append(run_router(c, o.cost, x, task, len(tasks), o.splits, rc, cfg.seed))
        acc = np.mean(accs, 0)
        saved = [r["saved"] for r in runs]
        models = sorted({r["model"] for r in runs})
        print(f"| {share:g} | " + " | ".join(f"{a:.3f}" for a in acc[1:])
              + f" | {np.mean(saved):.3f} ({min(saved):.3f}-{max(saved):.3f}) | {np.mean([r['drop'] for r in runs]):.3f}"
              + f" | {sum(r['held'] for r in runs)}/{len(runs)} | {', '.join(models)} |", flush=True)
    print(f"dense test accuracy {o.correct[te][:, 0].mean():.3f}")


if __name__ == "__main__":
    main()
