"""W&B grouping: one group per pipeline run, named by DVC's experiment or the params hash."""

from __future__ import annotations

from pipeline.common.config import validate
from pipeline.common.tracking import Tracker, params_hash, run_group
from tests.conftest import tiny_config


def test_group_is_dvc_experiment_name_when_set(monkeypatch):
    cfg = validate(tiny_config())
    monkeypatch.setenv("DVC_EXP_NAME", "exp-brave-otter")
    assert run_group(cfg) == "exp-brave-otter"


def test_group_falls_back_to_params_hash(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    a, b = validate(tiny_config()), validate(tiny_config(["seed=1"]))
    assert run_group(a) == f"params-{params_hash(a)}"
    assert params_hash(a) == params_hash(validate(tiny_config()))
    assert params_hash(a) != params_hash(b)


def test_disabled_tracking_starts_no_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    t = Tracker(validate(tiny_config(["tracking=disabled"])), "base")
    t.log({"x": 1})
    t.finish()
    assert t.run is None and not (tmp_path / "wandb").exists()
