"""How good is a routing strategy: accuracy against cost, and the usual summaries of that curve.

A *strategy* gives every query a rung (router) or a sequence of rungs tried (cascade); on a
split it lands at one point (mean cost relative to dense, accuracy). Sweeping its threshold
gives a curve. Definitions, with N rungs:

- **weak** = always the cheapest rung, **strong** = always dense.
- **PGR** (RouteLLM's performance gap recovered) of a point: (acc - acc_weak) / (acc_strong - acc_weak).
- **normalised cost** x = (cost - cost_weak) / (cost_strong - cost_weak): 0 = all cheapest,
  1 = all dense. With two rungs this is exactly RouteLLM's "share of calls to the strong model",
  which is how the two-model metrics generalise to N rungs.
- **APGR** = area under PGR(x) for x in [0, 1] (points sorted by x, linear between them, flat
  beyond the ends).
- **CPT(p)** = the smallest normalised cost x at which the curve reaches PGR >= p (None if never).
- **AIQ** (RouterBench) = the mean, over relative cost from the cheapest to the dearest rung, of
  the non-decreasing convex hull of the strategy's points: what the strategy buys per unit of
  cost range when one may also mix its operating points at random.
- The **hull of the single rungs** (RouterBench's zero router) is the baseline any router must beat.
"""

from __future__ import annotations

import numpy as np


def upper_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Vertices of the non-decreasing concave hull, by cost: from the cheapest point up to the
    most accurate one (beyond it, the hull is flat)."""
    pts = sorted(set((float(c), float(a)) for c, a in points))
    hull: list[tuple[float, float]] = []
    for p in pts:  # Andrew's monotone chain, upper half
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    top = max(range(len(hull)), key=lambda i: (hull[i][1], -hull[i][0]))
    return hull[:top + 1]


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_value(hull: list[tuple[float, float]], cost: np.ndarray) -> np.ndarray:
    xs, ys = zip(*hull)
    # np.interp holds the end values flat: the non-decreasing extension to the right; to the
    # left of the cheapest point nothing is reachable, and the ranges we integrate start there.
    return np.interp(cost, xs, ys)


def aiq(points: list[tuple[float, float]], c_lo: float, c_hi: float, grid: int = 2001) -> float:
    c = np.linspace(c_lo, c_hi, grid)
    return float(np.trapezoid(hull_value(upper_hull(points), c), c) / (c_hi - c_lo))


def apgr_cpt(points: list[tuple[float, float]], weak: tuple[float, float], strong: tuple[float, float],
             levels: tuple[float, ...] = (0.5, 0.8, 0.95)) -> dict:
    """APGR and CPT(levels) of a curve given as (relative cost, accuracy) points."""
    (cw, aw), (cs, as_) = weak, strong
    if cs <= cw or as_ == aw:
        return {"apgr": None, **{f"cpt_{round(p * 100)}": None for p in levels},
                "note": "undefined: dense is not dearer and more accurate than the cheapest rung on this split"}
    xs = np.asarray([(c - cw) / (cs - cw) for c, _ in points])
    pgr = np.asarray([(a - aw) / (as_ - aw) for _, a in points])
    order = np.lexsort((pgr, xs))
    xs, pgr = xs[order], pgr[order]
    grid = np.linspace(0.0, 1.0, 1001)
    apgr = float(np.trapezoid(np.interp(grid, xs, pgr), grid))
    out = {"apgr": apgr}
    for p in levels:
        ok = xs[pgr >= p]
        out[f"cpt_{round(p * 100)}"] = float(max(0.0, ok.min())) if ok.size else None
    return out


def point(correct: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """(mean relative cost, accuracy) of per-query outcomes."""
    return float(cost.mean()), float(correct.mean())


def single_rungs(correct: np.ndarray, cost: np.ndarray, rungs: list[str]) -> dict[str, tuple[float, float]]:
    return {r: (float(cost[k]), float(correct[:, k].mean())) for k, r in enumerate(rungs)}


def oracle(correct: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per query, the cheapest rung that answers correctly (the cheapest rung if none does)."""
    by_cost = np.argsort(cost, kind="stable")
    ok = correct[:, by_cost]
    first = np.where(ok.any(1), ok.argmax(1), 0)
    return by_cost[first]


def matched_random(choice: np.ndarray, correct: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Expected point of a router that sends each query to a rung at random with the same share per
    rung as `choice`: same cost exactly, accuracy = share-weighted single-rung accuracy."""
    share = np.bincount(choice, minlength=correct.shape[1]) / len(choice)
    return float(share @ cost), float(share @ correct.mean(0))


def summarise(name: str, curve: list[tuple[float, float]], chosen: tuple[float, float],
              weak: tuple[float, float], strong: tuple[float, float], c_range: tuple[float, float]) -> dict:
    """The figures of one strategy: its chosen operating point, and APGR / CPT / AIQ of its curve."""
    return {
        "strategy": name,
        "accuracy": chosen[1],
        "relative_cost": chosen[0],
        "cost_saved": 1.0 - chosen[0],
        **apgr_cpt(curve, weak, strong),
        "aiq": aiq(curve, *c_range),
    }


def matched_random_resampled(choice: np.ndarray, correct: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[B] accuracy of random-at-matched-cost on each resample (its shares from that resample's choices)."""
    onehot = np.eye(correct.shape[1])[choice]
    return (onehot[idx].mean(1) * correct[idx].mean(1)).sum(1)


def hull_at_cost_resampled(correct: np.ndarray, cost: np.ndarray, spent: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[B] the single-rung hull's accuracy at the strategy's mean cost, on each resample."""
    accs, spends = correct[idx].mean(1), spent[idx].mean(1)
    return np.asarray([hull_value(upper_hull(list(zip(cost, a))), np.asarray([c]))[0] for a, c in zip(accs, spends)])


def strategy_figures(ok: np.ndarray, spent: np.ndarray, dense_ok: np.ndarray, idx: np.ndarray) -> dict:
    """Accuracy, relative cost, saving and drop against dense, each {value, lo, hi} (95% bootstrap)."""
    from pipeline.routing.bootstrap import with_interval

    ok, spent, dense_ok = (np.asarray(a, dtype=np.float64) for a in (ok, spent, dense_ok))
    return {"accuracy": with_interval(ok, idx), "relative_cost": with_interval(spent, idx),
            "cost_saved": with_interval(1.0 - spent, idx), "drop": with_interval(dense_ok - ok, idx)}


def versus(a: np.ndarray, b: np.ndarray, point: float) -> dict:
    """{value, lo, hi} of a paired difference given its per-resample values."""
    from pipeline.routing.bootstrap import band

    return {"value": float(point), **band(np.asarray(a) - np.asarray(b))}
