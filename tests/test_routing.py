"""Router, cascade thresholds and routing metrics on synthetic data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.cost import query_flops
from pipeline.router import certify
from pipeline.routing import metrics as rm
from pipeline.routing import risk_models as RM
from pipeline.routing import thresholds as T
from pipeline.routing.bootstrap import resamples, with_interval
from pipeline.routing.policies import escalate, pareto_front, risk_grid, route, routed_outcome

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


def test_mlp_family_learns_separable_harm():
    x, y = separable(400, 0)
    harm = (~y[:, 1:]) & y[:, :1]
    m = RM.make("mlp", 0, _rc(epochs=300, lr=3e-3), 0).fit(x.double().numpy(), np.full(400, -1), harm.astype(float))
    xt, yt = separable(400, 1)
    choice = route(m.predict(xt.double().numpy(), np.full(400, -1)), [1], 0.5)
    acc = yt[np.arange(400), choice].mean()
    rand_cost, rand_acc = rm.matched_random(choice, yt, np.array([1.0, 0.3]))
    assert 0.3 < (choice == 1).mean() < 0.7 and acc > 0.97 and acc > rand_acc + 0.2


def _rc(**kw):
    from pipeline.common.config import RouterConfig

    return RouterConfig(**kw)


def known_subset(n: int, rng):
    """Dense and a cheap rung. On a subset S (features near +2 on axis 0, a fifth of queries) dense
    is always right and the cheap rung is right with probability 0.6; elsewhere both are right
    together with probability 0.6. So P(cheap right) is 0.6 everywhere: an absolute-correctness
    router cannot tell S apart, while P(cheap wrong and dense right) is 0.4 on S and 0 elsewhere."""
    in_s = rng.uniform(size=n) < 0.2
    x = rng.normal(size=(n, 8)) * 0.5
    x[:, 0] += np.where(in_s, 2.0, -2.0)
    cheap = rng.uniform(size=n) < 0.6
    dense = np.where(in_s, True, cheap)
    return x, np.stack([dense, cheap], 1), in_s


def test_gap_router_finds_the_subset_where_a_rung_is_worse_and_the_absolute_router_does_not():
    rng = np.random.default_rng(0)
    x, correct, _ = known_subset(1000, rng)
    xt, ct, s_t = known_subset(2000, rng)
    task, task_t = np.full(1000, -1), np.full(2000, -1)
    harm = ((~correct[:, 1]) & correct[:, 0]).astype(float)[:, None]
    gap = RM.Logistic(0, 1.0).fit(x, task, harm)
    gap_choice = route(gap.predict(xt, task_t), [1], 0.2)
    to_dense = gap_choice == 0
    assert to_dense[s_t].mean() > 0.9 and to_dense[~s_t].mean() < 0.1  # S, and only S, stays on dense
    # The absolute router: P(cheap right), cheap when above a threshold; give it the same number of
    # queries on dense (the same cost) and see which ones it keeps there.
    absolute = RM.Logistic(0, 1.0).fit(x, task, correct[:, 1:].astype(float)).predict(xt, task_t)[:, 0]
    abs_to_dense = absolute < np.quantile(absolute, to_dense.mean())
    assert abs(abs_to_dense.mean() - to_dense.mean()) < 0.01
    assert abs_to_dense[s_t].mean() < 0.5  # near the base share: it has no idea where S is
    drop = lambda dense_mask: (ct[:, 0].astype(float) - np.where(dense_mask, ct[:, 0], ct[:, 1])).mean()  # noqa: E731
    assert drop(to_dense) < 0.02 and drop(abs_to_dense) > 0.04


def test_gap_risk_sends_a_task_where_harm_and_help_cancel_to_the_cheap_rung():
    """Task 0: dense and the cheap rung are independent coin flips (harm 0.25 and help 0.25: nothing
    lost by answering it cheaply); task 1: dense always right, the cheap rung right 85% (harm 0.15,
    help 0). P(harm) alone ranks task 1 safer; the expected gap ranks task 0 safer, and only that
    policy keeps the drop near zero at the same cost (half the queries on the cheap rung)."""
    rng = np.random.default_rng(0)

    def draw(n):
        task = np.repeat([0, 1], n // 2)
        dense = np.where(task == 0, rng.uniform(size=n) < 0.5, True)
        cheap = np.where(task == 0, rng.uniform(size=n) < 0.5, rng.uniform(size=n) < 0.85)
        return task, np.stack([dense, cheap], 1)

    task, correct = draw(4000)
    task_t, ct = draw(20000)
    drops = {}
    for kind in ("gap", "harm"):
        y = RM.risk_targets(correct, [1], kind)
        assert y.shape == (4000, 2 if kind == "gap" else 1)
        risk = RM.risk_of(RM.TaskRate(2).fit(None, task, y).predict(None, task_t), kind)
        safer = int(np.argmin([risk[task_t == k, 0].mean() for k in (0, 1)]))
        choice = route(risk, [1], risk[task_t == safer, 0].max())
        assert (choice == 1).mean() == pytest.approx(0.5)  # the same cost either way
        ok, _ = routed_outcome(choice, ct, np.array([1.0, 0.3]))
        drops[kind] = ct[:, 0].mean() - ok.mean()
    assert abs(drops["gap"]) < 0.02 and drops["harm"] > 0.05


def test_risk_targets_and_risk_of():
    correct = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=bool)  # dense, a, b
    y = RM.risk_targets(correct, [1, 2], "gap")
    np.testing.assert_array_equal(y, [[1, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(RM.risk_of(y, "gap"), [[1, 0], [-1, -1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(RM.risk_targets(correct, [1, 2], "harm"), y[:, :2])
    with pytest.raises(ValueError, match="unknown router risk 'absolute'; allowed: gap, harm"):
        RM.risk_targets(correct, [1], "absolute")


def test_escalate_deferral_grid_is_paired_level_by_level_and_its_last_member_never_escalates():
    from pipeline.escalate import paired_grid

    rng = np.random.default_rng(0)
    post = np.full((300, 3), np.inf)
    post[:, 1:] = rng.uniform(size=(300, 2))
    train = np.arange(300) < 200
    d = paired_grid(np.zeros(20), post, [1, 2], train)
    assert len(d) == 20 and np.all(np.diff(d) > 0) and d[-1] > 1.0
    share_kept = [(post[train][:, 1:] <= t).mean() for t in d]  # deferral says "answer" on level j/G
    np.testing.assert_allclose(share_kept, np.arange(1, 21) / 20, atol=0.02)


def test_pareto_front_drops_a_rung_that_is_dearer_and_worse():
    # dense, a (cheap, ok), b (dearer and worse than a), c (dearest below dense, best), d (dense's cost)
    acc = np.array([0.60, 0.50, 0.45, 0.58, 0.59])
    cost = np.array([1.00, 0.40, 0.70, 0.80, 1.00])
    assert pareto_front(acc, cost) == [1, 3]
    assert pareto_front(np.array([0.6, 0.5, 0.5]), np.array([1.0, 0.4, 0.4])) == [1, 2]  # ties stay


def test_router_ltt_bound_holds_at_the_stated_rate_over_many_seeds():
    """Fit the risk model and the grid once on router-train; then for 200 calibration draws,
    certify a threshold and measure the drop it really has on a large population."""
    eps, delta, n_cal, seeds = 0.05, 0.1, 400, 200
    rng = np.random.default_rng(7)
    x, correct, _ = known_subset(1500, rng)
    task = np.full(1500, -1)
    harm = ((~correct[:, 1]) & correct[:, 0]).astype(float)[:, None]
    model = RM.Logistic(0, 1.0).fit(x, task, harm)
    cv, oof = RM.cross_validate(["logistic:1"], x, task, harm, 0, _rc(), 5, 0)
    grid = risk_grid(oof["logistic:1"], 25)
    xp, cp, _ = known_subset(100_000, rng)
    risk_p = model.predict(xp, np.full(len(xp), -1))
    true_drop = {}
    for t in grid:
        ok, _ = routed_outcome(route(risk_p, [1], t), cp, np.array([1.0, 0.3]))
        true_drop[float(t)] = cp[:, 0].mean() - ok.mean()
    violations, costs = 0, []
    for seed in range(seeds):
        sl = np.random.default_rng(seed).integers(0, len(xp), n_cal)
        cert = certify(risk_p[sl], cp[sl], np.array([1.0, 0.3]), [1], grid, "accuracy", eps, delta, 0.5, seed)
        if cert["threshold"] is not None:
            violations += true_drop[cert["threshold"]] > eps
        costs.append(cert["calibration_cost"])
    assert violations / seeds <= delta + 0.064  # 3 binomial sigmas over 200 seeds
    assert np.mean(costs) < 0.9  # it certifies real savings, not always-dense
    assert max(true_drop.values()) > eps  # and the grid does hold thresholds that would break epsilon


def test_risk_models_choose_by_cross_validation_and_survive_a_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x, correct, _ = known_subset(600, rng)
    task = rng.integers(0, 3, 600)
    harm = ((~correct[:, 1]) & correct[:, 0]).astype(float)[:, None]
    names = ["base_rate", "task_rate", "knn:20", "logistic:1", "mlp"]
    cv, _ = RM.cross_validate(names, x, task, harm, 3, _rc(epochs=100, lr=3e-3), 5, 0)
    assert min(cv["knn:20"], cv["logistic:1"]) < cv["task_rate"] - 0.05  # features carry the signal here
    xt = rng.normal(size=(50, 8))
    tt = np.array([0, 1, 2, -1, 0] * 10)  # -1: a task the models never saw
    for name in names:
        m = RM.make(name, 3, _rc(epochs=20), 0).fit(x, task, harm)
        meta = {"model": {"name": name, "family": name.partition(":")[0], **m.config()}, "tasks": ["a", "b", "c"]}
        d = tmp_path / name.replace(":", "_")
        d.mkdir()
        RM.save_router(d, m, meta)
        back, _ = RM.load_router(d)
        np.testing.assert_array_equal(back.predict(xt, tt), m.predict(xt, tt))


def test_task_rate_shrinks_small_tasks_towards_the_global_rate():
    task = np.array([0] * 400 + [1] * 4)
    y = np.concatenate([np.zeros(300), np.ones(100), np.ones(4)])[:, None]  # task 0: 0.25; task 1: 4 of 4
    m = RM.TaskRate(2).fit(None, task, y)
    p = m.predict(None, np.array([0, 1, -1]))[:, 0]
    assert p[0] == pytest.approx(0.25, abs=0.02)
    assert p[2] < p[1] < 1.0  # the 4-query task is pulled towards the global rate, not taken at 1.0


def test_escalation_pays_for_both_rungs_and_falls_back_to_dense():
    choice = np.array([1, 1, 0])
    post = np.array([[np.inf, 0.1], [np.inf, 0.9], [np.inf, 0.1]])
    correct = np.array([[1, 0], [1, 0], [0, 1]], dtype=bool)
    answered, ok, spent = escalate(choice, post, 0.5, correct, np.array([1.0, 0.3]))
    assert answered.tolist() == [1, 0, 0] and ok.tolist() == [False, True, False]
    assert spent.tolist() == pytest.approx([0.3, 1.3, 1.0])


def test_query_flops_counts_lm_head_only_on_scored_tokens():
    cfg = {"num_hidden_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
           "head_dim": 4, "intermediate_size": 16, "vocab_size": 100}
    f = query_flops(cfg, prompt_tokens=10, scored_tokens=3)
    per_token = 2 * (8 * 4 * (2 * 2 + 2 * 1) + 3 * 8 * 16)  # q, k, v, o + gate, up, down
    assert f["projections"] == 2 * 13 * per_token
    assert f["attention"] == 2 * 4 * 2 * 4 * (13 * 14 // 2)  # causal: position i sees i + 1 keys
    assert f["lm_head"] == 2 * 100 * 8 * 3  # scored positions only, not the prompt's 10
    assert f["total"] == f["projections"] + f["attention"] + f["lm_head"]
    smaller = query_flops({**cfg, "intermediate_size": 8}, 10, 3)
    assert smaller["total"] < f["total"] and smaller["lm_head"] == f["lm_head"]


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    rng = np.random.default_rng(0)
    v = rng.uniform(size=500) < 0.3
    idx = resamples(500, 0)
    a = with_interval(v, idx)
    assert a == with_interval(v, resamples(500, 0))  # same seed, same interval
    assert a["lo"] < v.mean() < a["hi"] and 0.05 < a["hi"] - a["lo"] < 0.12  # ~ 2 * 1.96 * sqrt(.21 / 500)


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


def test_rung_costs_analytic_from_config_or_measured_from_speed(tmp_path):
    import json

    from pipeline.common.config import CostConfig
    from pipeline.routing.costs import rung_costs

    cfg = {"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "head_dim": 16, "intermediate_size": 128, "vocab_size": 1000}
    for name, inter in (("dense", 128), ("small", 32)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**cfg, "intermediate_size": inter}))
    c = rung_costs(CostConfig(prompt_tokens=32, scored_tokens=4), ["dense", "small"], tmp_path, None)
    assert c.kind == "flops" and c.relative[0] == 1.0 and 0 < c.relative[1] < 1
    assert c.raw[0] == query_flops(cfg, 32, 4)["total"]
    speed = {"prompt_tokens": 32, "scored_tokens": 4,
             "rungs": {"dense": {"query_ms": 10.0}, "small": {"query_ms": 4.0}}}
    (tmp_path / "speed.json").write_text(json.dumps(speed))
    lat = CostConfig(kind="latency", prompt_tokens=32, scored_tokens=4)
    c = rung_costs(lat, ["dense", "small"], tmp_path, tmp_path / "speed.json")
    assert c.unit == "ms/query" and c.relative.tolist() == [1.0, 0.4]
    with pytest.raises(ValueError, match="re-run `dvc repro speed`"):  # timed another query than asked
        rung_costs(CostConfig(kind="latency", prompt_tokens=64, scored_tokens=4), ["dense"], tmp_path,
                   tmp_path / "speed.json")
    with pytest.raises(FileNotFoundError, match="dvc repro speed"):
        rung_costs(lat, ["dense"], tmp_path, tmp_path / "missing.json")
