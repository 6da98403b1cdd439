"""Impossible data is caught before the heavy work: in the config, in the data stage, at stage start."""

from __future__ import annotations

import time

import pytest

from pipeline import cascade, compare, data, escalate, evaluate, router
from pipeline.common.assets import AssetError
from pipeline.common.config import ConfigError, validate
from pipeline.evaluation.splits import assign_split, take_in_hash_order
from pipeline.evaluation.tasks import load_task
from tests.conftest import tiny_config, write_params

TASKS = list(tiny_config()["data"]["tasks"])
ONE_TASK = [f"~data.tasks.{t}" for t in TASKS if t != "arc_easy"]


def _error(raw: dict) -> str:
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    assert time.perf_counter() - t0 < 1.0
    return str(exc.value)


def test_validator_catches_caps_and_fractions_that_cannot_fill_every_split():
    msg = _error(tiny_config(["data.tasks.piqa.cap=0"]))
    assert "data.tasks.piqa.cap is 0" in msg
    msg = _error(tiny_config(["data.splits.router_train=0.9", "data.splits.calibration=0.05",
                              "data.splits.test=0.05"]))
    # 6 x 0.05 = 0.3 queries per task in calibration and in test: named, with the cap that would do.
    assert "data.tasks.arc_easy.cap=6" in msg and "calibration (data.splits.calibration=0.05: 0.3)" in msg
    assert "test (data.splits.test=0.05: 0.3)" in msg and "raise the cap to at least 20" in msg
    msg = _error(tiny_config(["data.tasks.piqa.cap=3"]))  # 3 x 0.3 = 0.9 router-train queries
    assert "data.tasks.piqa.cap=3" in msg and "router_train (data.splits.router_train=0.3: 0.9)" in msg
    validate(tiny_config(["data.tasks.piqa.cap=4"]))  # 4 x 0.3 = 1.2: enough
    validate(tiny_config(["data.splits.router_train=0.9", "data.splits.calibration=0.05", "data.splits.test=0.05",
                          *[f"data.tasks.{t}.cap=20" for t in TASKS]]))


def test_data_stage_refuses_a_task_set_with_an_empty_split(tmp_path, tiny_base):
    # The validator passes cap 4 x 0.35 = 1.4 test queries on average; find a salt whose hash split
    # actually leaves the test split empty, as can happen.
    raw = tiny_config()
    ids = [i.id for i in load_task("arc_easy", "packaged", raw["data"]["tasks"]["arc_easy"]["split"])]
    fractions = {s: raw["data"]["splits"][s] for s in ("router_train", "calibration", "test")}
    salt = next(s for s in (f"salt{i}" for i in range(200))
                if "test" not in {assign_split(i, fractions, s) for i in take_in_hash_order(ids, 4, s)})
    raw = tiny_config([*ONE_TASK, "data.tasks.arc_easy.cap=4", f"data.splits.salt={salt}"])
    params = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(SystemExit) as exc:
        data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(tmp_path / "data")])
    msg = str(exc.value)
    assert msg.startswith("data: the test split is empty") and "data.splits.test=0.35" in msg
    assert "data.tasks.arc_easy.cap=4" in msg
    assert not (tmp_path / "data").exists()  # nothing written for later stages to trip on


def _stage_params(tmp_path) -> str:
    return str(write_params(tmp_path / "params.yaml", tiny_config()))


def test_evaluate_refuses_an_empty_task_set_before_loading_a_model(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tasks.jsonl").write_text("")
    t0 = time.perf_counter()
    with pytest.raises(AssetError, match=r"data/tasks.jsonl holds no task items: rebuild it with `dvc repro data`"):
        evaluate.main(["--params", _stage_params(tmp_path), "--rung", "dense", "--ladder-dir", str(tmp_path / "nowhere"),
                       "--data", str(tmp_path / "data"), "--out", str(tmp_path / "eval")])
    assert time.perf_counter() - t0 < 10  # the rung does not even exist: the input check came first


@pytest.mark.parametrize("stage", [router, cascade, escalate, compare])
def test_routing_stages_refuse_empty_records(tmp_path, stage):
    eval_dir = tmp_path / "eval"
    for rung in tiny_config()["rungs"]:
        (eval_dir / rung).mkdir(parents=True)
        (eval_dir / rung / "records.jsonl").write_text("\n")
    # The records are read before anything else (costs, the router): no ladder is needed to see they are empty.
    args = ["--params", _stage_params(tmp_path), "--eval-dir", str(eval_dir), "--ladder-dir", str(tmp_path / "none"),
            "--out", str(tmp_path / "out")]
    with pytest.raises(AssetError, match=r"eval/dense/records.jsonl holds no records .*`dvc repro evaluate@dense`"):
        stage.main(args)
    assert not (tmp_path / "out").exists()

