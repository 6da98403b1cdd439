"""Router, cascade thresholds and routing metrics on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.routing import metrics as rm
from pipeline.routing import thresholds as T
from pipeline.routing.router_model import route, train_router

# --- metrics -------------------------------------------------------------------


def test_hull_is_concave_non_decreasing_and_aiq_integrates_it():
    pts = [(0.2, 0.3), (0.5, 0.35), (0.6, 0.6), (1.0, 0.7), (1.2, 0.65)]
    hull = rm.upper_hull(pts)
    assert hull == [(0.2, 0.3), (0.6, 0.6), (1.0, 0.7)]  # (0.5, .35) under the chord; (1.2, .65) dominated
    assert rm.hull_value(hull, np.array([1.2]))[0] == pytest.approx(0.7)  # flat past the best point
    # Area: trapezoids 0.4 * 0.45 + 0.4 * 0.65 + 0.2 * 0.7 over a range of 1.0.
    assert rm.aiq(pts, 0.2, 1.2) == pytest.approx(0.18 + 0.26 + 0.14, abs=1e-4)


def test_apgr_of_linear_interpolation_is_one_half_and_cpt_reads_the_curve():
    weak, strong = (0.4, 0.3), (1.0, 0.5)
    line = [(0.4 + 0.6 * x, 0.3 + 0.2 * x) for x in np.linspace(0, 1, 11)]
    out = rm.apgr_cpt(line, weak, strong)
    assert out["apgr"] == pytest.approx(0.5) and out["cpt_50"] == pytest.approx(0.5) and out["cpt_80"] == pytest.approx(0.8)
    perfect = [weak, (0.4, 0.5), strong]  # all the gain at no cost
    assert rm.apgr_cpt(perfect, weak, strong)["apgr"] == pytest.approx(1.0)


def test_oracle_takes_the_cheapest_correct_rung_and_matched_random_keeps_cost():
    correct = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)  # columns: dense, mid, cheap
    cost = np.array([1.0, 0.5, 0.2])
    assert rm.oracle(correct, cost).tolist() == [1, 0, 2]
    choice = np.array([0, 2, 2])
    c, a = rm.matched_random(choice, correct, cost)
    assert c == pytest.approx(cost[choice].mean()) and a == pytest.approx((2 / 3 + 0 + 0) / 3)


# --- router ----------------------------------------------------------------------


def separable(n: int, seed: int):
    """Two kinds of query told apart by the features: the cheap rung is right on kind A only."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 16, generator=g) * 0.5
    x[:, 0] += torch.where(kind == 1, 2.0, -2.0)
    correct = np.stack([np.ones(n, dtype=bool), kind.numpy() == 1], axis=1)  # [dense, cheap]
    return x, correct


def test_router_beats_random_at_matched_cost_on_separable_queries():
    x, y = separable(400, 0)
    net, info = train_router(x, y, hidden_dim=32, epochs=300, lr=3e-3, weight_decay=0.01, seed=0)
    xt, yt = separable(400, 1)
    cost = np.array([1.0, 0.3])
    choice = route(net.predict(xt), cost, threshold=0.5)
    acc = yt[np.arange(len(choice)), choice].mean()
    rand_cost, rand_acc = rm.matched_random(choice, yt, cost)
    assert cost[choice].mean() == pytest.approx(rand_cost)
    assert 0.3 < (choice == 1).mean() < 0.7  # it really uses the cheap rung on about half
    assert acc > 0.97 and acc > rand_acc + 0.2
    assert info["epochs"] >= 1


def test_route_picks_the_cheapest_rung_above_threshold_else_dense():
    probs = np.array([[0.9, 0.8, 0.2], [0.9, 0.1, 0.1], [0.4, 0.3, 0.95]])
    cost = np.array([1.0, 0.6, 0.3])
    assert route(probs, cost, 0.7).tolist() == [1, 0, 2]
    assert route(probs, cost, 0.99).tolist() == [0, 0, 0]  # nobody clears it: dense


# --- cascade ---------------------------------------------------------------------


def test_simulate_counts_every_rung_tried_and_skips_never_answering_rungs():
    conf = np.array([[0.9, 0.9, 1.0], [0.1, 0.8, 1.0], [0.1, 0.1, 1.0]])
    correct = np.ones((3, 3), dtype=bool)
    cost = np.array([0.2, 0.5, 1.0])
    at, _, spent = T.simulate(conf, correct, cost, np.array([0.5, 0.5]))
    assert at.tolist() == [0, 1, 2] and spent.tolist() == pytest.approx([0.2, 0.7, 1.7])
    at, _, spent = T.simulate(conf, correct, cost, np.array([np.inf, 0.5]))
    assert at.tolist() == [1, 1, 2] and spent.tolist() == pytest.approx([0.5, 0.5, 1.5])
    assert T.from_json(T.to_json(np.array([np.inf, 0.3]))).tolist() == [np.inf, 0.3]


def test_wsr_bound_covers_the_mean():
    rng = np.random.default_rng(0)
    misses = sum(T.wsr_upper_bound(rng.binomial(1, 0.3, 200).astype(float), 0.1) < 0.3 for _ in range(300))
    assert misses / 300 <= 0.1 + 0.05


def population(n: int, rng):
    """Two-rung cascade: the cheap rung's confidence s ~ U(0, 1), it is right with probability s;
    dense is right with probability 0.75. So the drop grows smoothly as more is accepted."""
    s = rng.uniform(0, 1, n)
    cheap = rng.uniform(0, 1, n) < s
    dense = rng.uniform(0, 1, n) < 0.75
    return s[:, None].repeat(2, 1), np.stack([cheap, dense], 1)


def true_drop(th: np.ndarray, big) -> float:
    conf, correct = big
    _, ok, _ = T.simulate(conf, correct, np.array([0.3, 1.0]), th)
    return correct[:, 1].mean() - ok.mean()


def test_learn_then_test_bound_holds_at_the_stated_rate_and_the_naive_rule_does_not():
    eps, delta, n, seeds = 0.05, 0.1, 300, 200
    rng = np.random.default_rng(123)
    big = population(200_000, rng)  # the population whose drop the guarantee is about
    ref = population(1000, rng)[0][:, :1]
    levels = np.linspace(0, 1, 41)[1:]
    grid = T.threshold_grid(ref, levels)
    ltt_viol = naive_viol = 0
    ltt_costs = []
    for seed in range(seeds):
        conf, correct = population(n, np.random.default_rng(seed))
        choice = T.learn_then_test(conf, correct, correct[:, 1], np.array([0.3, 1.0]), grid, levels, eps, delta, seed)
        ltt_viol += true_drop(choice.thresholds, big) > eps
        ltt_costs.append(choice.level)
        naive = T.per_rung_quantile(conf, correct, correct[:, 1], eps)
        naive_viol += true_drop(naive.thresholds, big) > eps
    # Binomial noise over 200 seeds: 3 sigma above delta is ~0.064.
    assert ltt_viol / seeds <= delta + 0.064
    assert np.mean(ltt_costs) > 0.1  # it is not trivially always-dense
    assert naive_viol / seeds > delta + 0.1  # the plug-in rule overshoots often (~0.3): the check can fail
