"""Impossible data is caught before the heavy work: in the config, in the data stage, at stage start."""

from __future__ import annotations

import json
import time

import pytest

from pipeline import cascade, data, evaluate, router
from pipeline.common.assets import AssetError
from pipeline.common.config import ConfigError, validate
from pipeline.evaluation.splits import assign_split, take_in_hash_order
from pipeline.evaluation.tasks import load_task
from tests.conftest import tiny_config, write_params

ONE_TASK = ["~data.tasks.arc_challenge", "~data.tasks.piqa", "~data.tasks.sciq", "~data.tasks.hellaswag",
            "~data.tasks.boolq"]


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
    # 12 x 0.05 = 0.6 queries per task in calibration and in test: named, with the cap that would do.
    assert "data.tasks.arc_easy.cap=12" in msg and "calibration (data.splits.calibration=0.05: 0.6)" in msg
    assert "test (data.splits.test=0.05: 0.6)" in msg and "raise the cap to at least 20" in msg
    validate(tiny_config(["data.tasks.piqa.cap=4"]))  # 4 x 0.25 = 1: enough
    validate(tiny_config(["data.splits.router_train=0.9", "data.splits.calibration=0.05", "data.splits.test=0.05",
                          *[f"data.tasks.{t}.cap=20" for t in ("arc_easy", "arc_challenge", "piqa", "sciq",
                                                                "hellaswag", "boolq")]]))


def test_data_stage_refuses_a_task_set_with_an_empty_split(tmp_path, tiny_base):
    # The validator passes cap 4 x 0.25 = 1 test query on average; find a salt whose hash split
    # actually leaves the test split empty, as can happen.
    ids = [i.id for i in load_task("arc_easy")]
    fractions = {"router_train": 0.5, "calibration": 0.25, "test": 0.25}
    salt = next(s for s in (f"salt{i}" for i in range(200))
                if "test" not in {assign_split(i, fractions, s) for i in take_in_hash_order(ids, 4, s)})
    raw = tiny_config([*ONE_TASK, "data.tasks.arc_easy.cap=4", f"data.splits.salt={salt}"])
    params = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(SystemExit) as exc:
        data.main(["--params", str(params), "--base", str(tiny_base), "--out", str(tmp_path / "data")])
    msg = str(exc.value)
    assert msg.startswith("data: the test split is empty") and "data.splits.test=0.25" in msg
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


@pytest.mark.parametrize("stage", [router, cascade])
def test_router_and_cascade_refuse_empty_records(tmp_path, stage):
    eval_dir = tmp_path / "eval"
    for rung in tiny_config()["rungs"]:
        (eval_dir / rung).mkdir(parents=True)
        (eval_dir / rung / "records.jsonl").write_text("\n")
        (eval_dir / rung / "metrics.json").write_text(json.dumps({"routing_cost": {"value": 1.0, "unit": "ms"}}))
    args = ["--params", _stage_params(tmp_path), "--eval-dir", str(eval_dir), "--out", str(tmp_path / "out")]
    with pytest.raises(AssetError, match=r"eval/dense/records.jsonl holds no records .*`dvc repro evaluate@dense`"):
        stage.main(args)
    assert not (tmp_path / "out").exists()

