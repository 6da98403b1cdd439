"""Per-task caps set by tokens: monotone in the budget, every task represented."""

from __future__ import annotations

import json
import random

from pipeline import data
from pipeline.evaluation.budget import take_within_budget
from tests.conftest import tiny_config, write_params


def test_budget_takes_a_prefix_and_bigger_budgets_are_supersets():
    rng = random.Random(0)
    costs = [rng.randint(5, 200) for _ in range(300)]
    ids = list(range(300))
    previous: list[int] = []
    for budget in (0, 10, 100, 1000, 5000, 20000, 10**9):
        taken = [i for i, _ in take_within_budget(ids, costs.__getitem__, budget)]
        assert taken == ids[: len(taken)]  # a prefix of the one fixed order
        assert sum(costs[i] for i in taken) <= budget
        if len(taken) < len(ids):  # it stopped because the next item did not fit
            assert sum(costs[i] for i in taken) + costs[len(taken)] > budget
        assert taken[: len(previous)] == previous
        previous = taken
    assert previous == ids


def test_budget_floor_and_cap():
    costs = [100] * 50
    assert len(take_within_budget(range(50), costs.__getitem__, 250)) == 2
    assert len(take_within_budget(range(50), costs.__getitem__, 250, min_items=5)) == 5  # floor past the budget
    assert len(take_within_budget(range(50), costs.__getitem__, 10**6, cap=7)) == 7
    assert len(take_within_budget(range(50), costs.__getitem__, None)) == 50
    calls = []
    take_within_budget(range(50), lambda i: calls.append(i) or 100, 250)
    assert calls == [0, 1, 2]  # costs are computed lazily: tokenising stops at the first misfit


def test_token_budget_in_the_data_stage_is_monotone_and_keeps_every_task(tiny_base, tmp_path):
    def run(budget: int, tag: str) -> tuple[dict, dict]:
        raw = tiny_config([f"data.budget.tokens_per_task={budget}", "data.budget.min_items=2"])
        for t in raw["data"]["tasks"].values():
            t["cap"] = None  # the budget alone decides
        params = write_params(tmp_path / f"params_{tag}.yaml", raw)
        out = tmp_path / tag
        data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(out)])
        records = {r["id"]: r for r in map(json.loads, (out / "tasks.jsonl").read_text().splitlines())}
        return records, json.loads((out / "summary.json").read_text())

    small, s_small = run(300, "small")
    big, s_big = run(900, "big")
    tasks = set(tiny_config()["data"]["tasks"])
    assert {r["task"] for r in small.values()} == tasks  # every task represented
    assert set(small) < set(big)  # a bigger budget is a strict superset...
    assert all(big[i]["split"] == r["split"] for i, r in small.items())  # ...and moves nothing
    for summary, budget in ((s_small, 300), (s_big, 900)):
        for t in tasks:
            s = summary["tasks"][t]
            assert s["total"] >= 2 and (s["tokens"] <= budget or s["total"] == 2)  # budget, or the floor
    # Cheap tasks give more items for the same budget.
    cheap = min(tasks, key=lambda t: s_big["tasks"][t]["tokens_per_item"])
    dear = max(tasks, key=lambda t: s_big["tasks"][t]["tokens_per_item"])
    assert s_big["tasks"][cheap]["total"] > s_big["tasks"][dear]["total"]
