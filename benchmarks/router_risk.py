"""Which risk should the router threshold: the expected gap P(harm) - P(help), or P(harm) alone?

On the built default (after `make repro`), for every risk-model family the router compares, fit it
5-fold on router-train to each risk's targets (`risk_models.risk_targets`, exactly as the router
stage does) and sweep a threshold over the out-of-fold risks: the policy of the router rule
(cheapest candidate whose risk <= t, else dense) on router-train itself. Prints, per family and
risk, the cross-validated log-loss and the largest saving of dense's cost reached with a
router-train drop against dense of at most 0.01 / 0.02 / 0.03. Router-train only: no calibration
or test query is read, so the choice it informs leaves the certificate and the test figures alone.

    .venv/bin/python benchmarks/router_risk.py     # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DROPS = (0.01, 0.02, 0.03)


def saving_at(risk, correct, cost, candidates, drop: float) -> float:
    """The largest 1 - mean cost over thresholds (every distinct risk value) whose drop <= `drop`."""
    from pipeline.routing.policies import route, routed_outcome

    best = 0.0
    for t in np.unique(risk):
        ok, spent = routed_outcome(route(risk, candidates, t), correct, cost)
        if correct[:, 0].mean() - ok.mean() <= drop + 1e-12:
            best = max(best, 1.0 - float(spent.mean()))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args()

    from pipeline.common.config import load_config
    from pipeline.evaluation.items import read_items
    from pipeline.routing import risk_models as RM
    from pipeline.routing.features import Featurizer, query_text
    from pipeline.routing.outcomes import load_routing_inputs, task_indices
    from pipeline.routing.policies import pareto_front

    cfg = load_config(args.params)
    rc = cfg.router
    o, _ = load_routing_inputs(cfg, "artifacts/eval", "artifacts/ladder", "artifacts/speed/speed.json")
    o = o.subset("router_train")
    items = {it["id"]: it for it in read_items(Path("artifacts/data/tasks.jsonl"))}
    texts = [query_text(items[i]["context"], items[i]["choices"]) for i in o.ids]
    x = Featurizer(rc.features, Path("artifacts/ladder/dense") if rc.features == "hidden_state" else None,
                   placement=cfg.model)(texts, batch_size=1, progress=True).double().numpy()
    candidates = pareto_front(o.correct.mean(0), o.cost)
    tasks = sorted(set(o.tasks))
    task = task_indices(o.tasks, tasks)
    names = RM.candidate_names(rc)
    rows = {}
    for kind in RM.RISKS:
        y = RM.risk_targets(o.correct, candidates, kind)
        cv, oof = RM.cross_validate(names, x, task, y, len(tasks), rc, rc.folds, cfg.seed)
        rows[kind] = {n: (cv[n], [saving_at(RM.risk_of(oof[n], kind), o.correct, o.cost, candidates, d) for d in DROPS])
                      for n in names}
    print(f"router-train: {len(o)} queries; candidates {[o.rungs[c] for c in candidates]}; "
          f"saving of dense's cost at a router-train drop <= {', '.join(map(str, DROPS))} (out-of-fold risks)")
    head = "| model | " + " | ".join(f"{k}: CV log-loss | {k}: saving at drop <= {'/'.join(map(str, DROPS))}"
                                    for k in RM.RISKS) + " |"
    print(head)
    print("|---" * (1 + 2 * len(RM.RISKS)) + "|")
    for n in names:
        cells = []
        for k in RM.RISKS:
            loss, sav = rows[k][n]
            cells += [f"{loss:.4f}", " / ".join(f"{v:.3f}" for v in sav)]
        print(f"| {n} | " + " | ".join(cells) + " |")
    for k in RM.RISKS:
        chosen = min(names, key=lambda n: (rows[k][n][0], names.index(n)))
        print(f"chosen by CV log-loss with risk={k}: {chosen} "
              f"(saving {' / '.join(f'{v:.3f}' for v in rows[k][chosen][1])})")


if __name__ == "__main__":
    main()
