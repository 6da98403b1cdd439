"""Routing policies on [queries x rungs] tables: which rungs may be used, the router's rule,
route-then-escalate, and the one-parameter families Learn-then-Test walks through.

- **Pareto front**: a rung is a candidate only if no other rung is at most as dear and at least as
  accurate (one of the two strictly) on router-train, and it is cheaper than dense. Dense is
  always kept: it is the fallback. `unstructured` / N:M rungs cost what dense costs and drop out.
- **Router rule**: send a query to the cheapest candidate whose predicted risk against dense (the
  expected accuracy gap, or P(rung wrong where dense is right): `risk_models.py`) is <= t, else to dense. A larger t never makes a query's rung dearer, so the
  family t_1 < t_2 < ... goes from conservative (all dense) to aggressive.
- **Route-then-escalate**: the router's rung at threshold t runs first; it answers if its own
  deferral risk (the cascade's model, from its confidence signals + task) is <= t too, else dense
  answers, and the query pays for both rungs.
- The **grid** of t is fixed on router-train before calibration is looked at: quantiles of the
  out-of-fold predicted risks at levels 1/G, ..., 1.
"""

from __future__ import annotations

import numpy as np


def pareto_front(accuracy: np.ndarray, cost: np.ndarray, dense: int = 0) -> list[int]:
    """Indices of the candidate rungs (dense excluded), cheapest first."""
    keep = []
    for r in range(len(cost)):
        if r == dense or cost[r] >= cost[dense]:
            continue
        dominated = any((cost[o] <= cost[r] and accuracy[o] >= accuracy[r]) and
                        (cost[o] < cost[r] or accuracy[o] > accuracy[r]) for o in range(len(cost)) if o != r)
        if not dominated:
            keep.append(r)
    return sorted(keep, key=lambda r: (cost[r], r))


def risk_grid(oof_risk: np.ndarray, size: int) -> np.ndarray:
    """[size] thresholds on predicted risk, ascending: quantiles of the router-train out-of-fold
    risks (every candidate pooled) at levels 1/size ... 1, each moved between two observed values.
    Risks lie in [-1, 1] (a gap) or [0, 1] (a probability); the last member passes every candidate."""
    levels = np.arange(1, size + 1) / size
    if oof_risk.size == 0:  # no candidate: every threshold routes to dense
        return np.zeros(size)
    values = np.unique(oof_risk.ravel())
    th = np.asarray([between(values, q) for q in np.quantile(oof_risk.ravel(), levels)])
    th[-1] = 1.0 + 1e-9  # no risk exceeds 1: the last member lets every candidate through
    return th


def between(values: np.ndarray, q: float) -> float:
    """`q` moved to halfway between the sorted distinct `values` around it, so no threshold equals
    a value a model can output on router-train: a last-bit difference between the stage's batched
    arithmetic and the runtime's one-query arithmetic can then never flip a decision."""
    i = int(np.searchsorted(values, q, side="right"))
    if i == 0:
        return float(values[0] - 1e-9)
    if i == len(values):
        return float(values[-1] + 1e-9)
    return float((values[i - 1] + values[i]) / 2)


def route(risk: np.ndarray, candidates: list[int], threshold: float, dense: int = 0) -> np.ndarray:
    """Per query: the first (cheapest) candidate whose risk <= threshold, else dense.

    `risk` [N, C] columns in the order of `candidates` (rung indices, cheapest first)."""
    if not candidates:
        return np.full(len(risk), dense, dtype=np.int64)
    ok = risk <= threshold
    cand = np.asarray(candidates, dtype=np.int64)
    return np.where(ok.any(1), cand[ok.argmax(1)], dense)


def routed_outcome(choice: np.ndarray, correct: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ok [N], spent [N]) of sending each query to one rung."""
    return correct[np.arange(len(choice)), choice], cost[choice]


def escalate(choice: np.ndarray, deferral_risk: np.ndarray, threshold: float, correct: np.ndarray,
             cost: np.ndarray, dense: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Route-then-escalate: the chosen rung answers if its deferral risk <= threshold, else dense.

    `deferral_risk` [N, R] per rung (columns of rungs that are never chosen are ignored).
    Returns (answered_by [N], ok [N], spent [N]); an escalated query pays its rung and dense."""
    n = len(choice)
    rows = np.arange(n)
    started = choice != dense
    keep = ~started | (deferral_risk[rows, choice] <= threshold)
    answered = np.where(keep, choice, dense)
    spent = np.where(keep, cost[choice], cost[choice] + cost[dense])
    return answered, correct[rows, answered], spent
