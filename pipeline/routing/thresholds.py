"""Cascade thresholds: simulate a cascade, and choose its thresholds with a guarantee.

A cascade tries rungs r_1, ..., r_K in order of cost (r_K = dense). Rung k answers when its
confidence is >= t_k; otherwise the query goes on to rung k+1; dense always answers. The cost of
a query is the sum of the costs of every rung tried.

**Learn-then-Test** (Angelopoulos, Bates et al. 2021) with fixed-sequence testing:
1. A one-parameter family of threshold vectors, fixed *before* looking at the calibration labels:
   at acceptance level lambda, t_k(lambda) is the (1 - lambda) quantile of rung k's confidence on
   the router-train split, so each rung, on its own, would answer a share lambda of queries.
   lambda = 0 is always-dense; lambda grows towards "the cheapest rung answers everything".
2. For each lambda_j in increasing order, the null hypothesis H_j: "accuracy drop against dense
   > epsilon", where the drop is the mean over queries of
   loss = 1[dense right] - 1[cascade right], in {-1, 0, 1}.
   H_j is rejected when an upper confidence bound at level delta on the drop is <= epsilon.
   The bound is Waudby-Smith & Ramdas' betting bound (as in RCPS), which adapts to the
   variance: most queries have loss 0, where Hoeffding would throw that away.
3. Fixed sequence: stop at the first lambda not rejected. Every rejected lambda has
   P(its drop > epsilon) <= delta jointly (family-wise error <= delta, no multiplicity
   correction needed because the order was fixed in advance). Deploy the cheapest of them.

**Which rungs** (when `cascade.rungs` is null): every ordered subset of the rungs cheaper than
dense is scored on the router-train split (the grid's own data, disjoint from calibration), and
the one reaching the lowest cost with an empirical drop <= epsilon is kept. Choosing it away from
the calibration split keeps the LTT guarantee intact. A long cascade pays for every rung it tries:
on a CPU where the cheapest rung costs 40% of dense, two misses already cost more than dense.

**Per-rung quantile baseline** (no guarantee): each rung independently keeps the largest top
share of calibration queries, by its own confidence, on which its accuracy is within epsilon of
dense's accuracy on the same queries; its threshold is the confidence at that share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def simulate(conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, thresholds: np.ndarray):
    """Run the cascade over queries: conf/correct [N, K] in cascade order, cost [K], thresholds [K-1].

    A rung whose threshold is +inf can never answer, so it is skipped: not run, not paid for.
    Returns (answered_at [N] index into the K rungs, correct [N] bool, cost [N])."""
    n, k = correct.shape
    accept = np.concatenate([conf[:, :-1] >= thresholds[None, :], np.ones((n, 1), dtype=bool)], axis=1)
    at = accept.argmax(1)
    runs = np.append(thresholds != np.inf, True)
    spent = np.cumsum(np.where(runs, cost, 0.0))[at]
    return at, correct[np.arange(n), at], spent


def to_json(thresholds) -> list[float | None]:
    """+inf (rung skipped) -> None; -inf (rung answers everything) -> -1.0 (signals lie in [0, 1])."""
    return [None if t == np.inf else (-1.0 if t == -np.inf else float(t)) for t in thresholds]


def from_json(values: list[float | None]) -> np.ndarray:
    return np.asarray([np.inf if v is None else v for v in values], dtype=np.float64)


def wsr_upper_bound(x: np.ndarray, delta: float, iters: int = 60) -> float:
    """Upper confidence bound at level delta on the mean of x in [0, 1] (betting, WSR 2020).

    P(true mean > bound) <= delta for i.i.d. x; order of x matters only through the predictable
    bet sizes, so callers pass a fixed (seeded) order."""
    n = len(x)
    if n == 0:
        return 1.0
    i = np.arange(1, n + 1)
    mu_hat = (0.5 + np.cumsum(x)) / (1 + i)
    sigma2 = (0.25 + np.cumsum((x - mu_hat) ** 2)) / (1 + i)
    sigma2 = np.concatenate([[0.25], sigma2[:-1]])  # predictable: uses only earlier points
    nu = np.minimum(np.sqrt(2 * math.log(1 / delta) / (n * sigma2)), 1.0)

    def rejects(mu: float) -> bool:  # wealth of betting against "mean >= mu" reached 1/delta
        return np.max(np.cumsum(np.log1p(-nu * (x - mu)))) >= math.log(1 / delta)

    if not rejects(1.0 - 1e-12):
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(iters):
        mid = (lo + hi) / 2
        if rejects(mid):
            hi = mid
        else:
            lo = mid
    return hi


def drop_upper_bound(loss: np.ndarray, delta: float) -> float:
    """Upper bound on E[loss] for loss in [-1, 1]: WSR on (loss + 1) / 2."""
    return 2 * wsr_upper_bound((loss + 1) / 2, delta) - 1


def threshold_grid(reference_conf: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """[G, K-1] thresholds: rung k answers a share `level` of the reference queries on its own."""
    th = np.quantile(reference_conf, 1 - levels, axis=0)  # [G, K-1], interpolated: between data values
    th = np.where(levels[:, None] <= 0, np.inf, th)
    return np.where(levels[:, None] >= 1, -np.inf, th)


@dataclass
class Choice:
    thresholds: np.ndarray  # [K-1]
    level: float | None  # lambda (LTT) or None
    tested: list[dict]  # per hypothesis tested: level, empirical drop, upper bound, rejected


def fixed_sequence(outcomes, dense_correct: np.ndarray, dense_cost: float, epsilon: float, delta: float,
                   seed: int) -> tuple[int | None, list[dict]]:
    """Fixed-sequence Learn-then-Test over a family given in order, most conservative first.

    `outcomes` yields, per member j, (ok [N] whether the policy answered right, spent [N] its cost
    per query) on the calibration queries. H_j "drop against dense > epsilon" is rejected when the
    WSR upper bound at level delta on mean(dense_correct - ok) is <= epsilon; testing stops at the
    first member not rejected. Returns the index of the cheapest rejected member (None: none was
    rejected, deploy dense) and the record of every hypothesis tested."""
    order = np.random.default_rng(seed).permutation(len(dense_correct))
    best, best_cost, tested = None, float(dense_cost), []
    for j, (ok, spent) in enumerate(outcomes):
        loss = dense_correct.astype(float) - ok.astype(float)
        ucb = drop_upper_bound(loss[order], delta)
        rejected = ucb <= epsilon
        tested.append({"index": j, "drop": float(loss.mean()), "upper_bound": float(ucb),
                       "cost": float(spent.mean()), "rejected": bool(rejected)})
        if not rejected:
            break
        if spent.mean() < best_cost:
            best, best_cost = j, float(spent.mean())
    return best, tested


def learn_then_test(conf: np.ndarray, correct: np.ndarray, dense_correct: np.ndarray, cost: np.ndarray,
                    grid: np.ndarray, levels: np.ndarray, epsilon: float, delta: float, seed: int) -> Choice:
    """Fixed-sequence LTT over `grid` (conservative first); the cheapest valid thresholds.

    `correct`/`conf` [N, K] in cascade order, the last column dense; `dense_correct` [N]."""
    def outcomes():
        for th in grid:
            _, ok, spent = simulate(conf, correct, cost, th)
            yield ok, spent

    best, tested = fixed_sequence(outcomes(), dense_correct, float(cost[-1]), epsilon, delta, seed)
    for t in tested:
        t["level"] = float(levels[t.pop("index")])
    if best is None:  # always dense: drop 0 by construction
        return Choice(np.full(grid.shape[1], np.inf), 0.0, tested)
    return Choice(grid[best], float(levels[best]), tested)


def select_rungs(conf: np.ndarray, correct: np.ndarray, cost: np.ndarray, levels: np.ndarray,
                 epsilon: float, delta: float | None = None, seed: int = 0) -> list[int]:
    """Indices (into the K-1 cheaper rungs, ordered by cost) of the subset to cascade through,
    chosen on the reference split: the lowest cost whose drop is <= epsilon. With `delta`, the drop
    must hold with a margin: its WSR upper bound at level delta on the reference split, not its mean,
    is <= epsilon, so the subset is one that calibration can plausibly certify too."""
    from itertools import combinations

    k = conf.shape[1] - 1
    dense_ok = correct[:, -1].astype(float)
    order = np.random.default_rng(seed).permutation(len(dense_ok))
    best = (float(cost[-1]), [])
    for size in range(1, k + 1):
        for subset in combinations(range(k), size):
            cols = [*subset, k]
            grid = threshold_grid(conf[:, list(subset)], levels)
            for th in grid:
                _, ok, spent = simulate(conf[:, cols], correct[:, cols], cost[cols], th)
                loss = dense_ok - ok
                if loss.mean() > epsilon or spent.mean() >= best[0] - 1e-12:
                    continue
                if delta is None or drop_upper_bound(loss[order], delta) <= epsilon:
                    best = (float(spent.mean()), list(subset))
    return best[1]


def per_rung_quantile(conf: np.ndarray, correct: np.ndarray, dense_correct: np.ndarray,
                      epsilon: float) -> Choice:
    """Baseline: each rung's own threshold, from its calibration accuracy on its most confident queries."""
    ths = []
    for k in range(conf.shape[1] - 1):
        order = np.argsort(-conf[:, k], kind="stable")
        gap = np.cumsum(dense_correct[order].astype(float) - correct[order, k]) / np.arange(1, len(order) + 1)
        ok = np.nonzero(gap <= epsilon)[0]
        if ok.size == 0:
            ths.append(np.inf)
            continue
        m = ok.max()  # keep the top m+1 queries; threshold halfway to the next one's confidence
        nxt = conf[order[m + 1], k] if m + 1 < len(order) else -np.inf
        ths.append(float((conf[order[m], k] + nxt) / 2) if np.isfinite(nxt) else -np.inf)
    return Choice(np.asarray(ths), None, [])
