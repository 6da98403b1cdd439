"""W&B: one group per pipeline run; runs named by stage and rung; the stage's config slice; lineage as artifacts."""

from __future__ import annotations

import pytest

from pipeline.common.config import validate
from pipeline.common.tracking import Tracker, params_hash, run_group
from pipeline.lineage import edges as lineage_edges
from pipeline.lineage import read_runs
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


# --- mode -------------------------------------------------------------------


def test_environment_wandb_mode_wins_over_config(monkeypatch):
    from pipeline.common.config import ConfigError
    from pipeline.common.tracking import tracking_mode

    offline = validate(tiny_config(["tracking=offline"]))
    disabled = validate(tiny_config(["tracking=disabled"]))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert tracking_mode(offline) == "disabled"
    assert Tracker(offline, "base").run is None  # the config says offline; the environment says no
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert tracking_mode(disabled) == "offline"
    monkeypatch.delenv("WANDB_MODE")
    assert tracking_mode(offline) == "offline" and tracking_mode(disabled) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'.*offline"):
        tracking_mode(offline)


def test_offline_by_default():
    from pipeline.common.config import compose

    assert validate(compose()).tracking.mode == "offline"


# --- runs, artifacts and lineage, read back from the offline files ------------------


@pytest.fixture(scope="module")
def offline_runs(tiny_graph):
    root, stages = tiny_graph
    return read_runs(root / "wandb"), stages


def _run(runs, name):
    found = [r for r in runs if r.name == name]
    assert len(found) == 1, (name, [r.name for r in runs])
    return found[0]


def test_one_run_per_stage_named_by_rung(offline_runs):
    runs, stages = offline_runs
    names = [r.name for r in runs]
    assert len(set(names)) == len(names) == len(stages)
    assert set(names) == {"base-exp-lineage", "data-exp-lineage", "calibrate-exp-lineage", "teacher-exp-lineage",
                          "prune@dense-exp-lineage",
                          "prune@mixed-exp-lineage", "evaluate@dense-exp-lineage", "evaluate@mixed-exp-lineage",
                          "report-exp-lineage", "speed-exp-lineage", "router-exp-lineage", "cascade-exp-lineage",
                          "escalate-exp-lineage", "compare-exp-lineage", "manifest-exp-lineage",
                          "summary-exp-lineage"}
    assert {r.group for r in runs} == {"exp-lineage"} and all(r.exit_code == 0 for r in runs)
    for r in runs:
        rung = r.config["rung"]
        assert (rung is not None) == ("@" in r.name)
        if rung:
            assert r.name.split("@")[1].startswith(rung) and r.summary["rung"] == rung
        # every stage reports its peak memory (RSS here: no GPU)
        assert r.summary["peak_memory_kind"] == "rss" and r.summary["peak_memory_mb"] > 0, r.name


def test_run_config_is_the_stage_slice_plus_rung(offline_runs):
    runs, _ = offline_runs
    ev = _run(runs, "evaluate@mixed-exp-lineage").config
    assert set(ev) == {"seed", "model", "evaluate", "rung", "dvc_stage"} and ev["dvc_stage"] == "evaluate@mixed"
    assert ev["model"] == {"dtype": "float32"}
    assert ev["evaluate"]["routing_prompt_length"] == 32  # the tiny preset's value
    pr = _run(runs, "prune@mixed-exp-lineage").config
    assert set(pr) == {"seed", "model", "ladder", "rung", "dvc_stage"}
    assert set(pr["model"]) == {"dtype", "smoke_prompt", "smoke_tokens", "max_shard_size"}
    assert set(pr["ladder"]) == {"rungs", "allocator", "compensation", "heal", "weight_calibration_blocks"}
    assert set(pr["ladder"]["rungs"]) == {"mixed"}  # its own rung's spec only
    assert set(_run(runs, "base-exp-lineage").config) == {"seed", "model", "rung", "dvc_stage"}
    assert _run(runs, "evaluate@dense-exp-lineage").config["evaluate"] == ev["evaluate"]


def test_artifacts_and_lineage_from_base_to_manifest(offline_runs):
    runs, _ = offline_runs
    edges = set(lineage_edges(runs))
    chain = [("base", "base", "prune@dense"), ("prune@dense", "rung-dense", "prune@mixed"),
             ("prune@mixed", "rung-mixed", "evaluate@mixed"), ("evaluate@mixed", "eval-mixed", "router"),
             ("evaluate@mixed", "eval-mixed", "cascade"), ("router", "router", "manifest"),
             ("cascade", "cascade", "manifest"), ("prune@mixed", "rung-mixed", "manifest"),
             ("evaluate@dense", "eval-dense", "summary")]
    for producer, artifact, consumer in chain:
        assert (f"{producer}-exp-lineage", artifact, f"{consumer}-exp-lineage") in edges, (producer, artifact, consumer)
    # Every use resolves to an artifact some run logged (same name and digest).
    used = {(n, d) for r in runs for n, _, d in r.used}
    logged = {(n, d) for r in runs for n, _, d in r.logged}
    assert used <= logged
    # Checkpoints travel as their small files; weights stay out unless tracking.log_weights.
    rung = _run(runs, "prune@mixed-exp-lineage")
    files = rung.files["rung-mixed"]
    assert "artifacts/ladder/mixed/pruning_report.json" in files and "artifacts/ladder/mixed/README.md" in files
    assert not [f for f in files if f.endswith(".safetensors")]
    assert _run(runs, "manifest-exp-lineage").files["manifest"] == ["artifacts/manifest.yaml",
                                                                     "artifacts/vllm_semantic_router.yaml"]


def test_comparison_table_across_rungs(offline_runs):
    runs, _ = offline_runs
    table = _run(runs, "report-exp-lineage").summary["ladder"]
    assert table["_type"] == "table-file" and table["nrows"] == 2  # dense and mixed
    s = _run(runs, "summary-exp-lineage").summary
    assert {"acc_norm/dense", "acc_norm/mixed", "perplexity/mixed"} <= set(s) and 0 <= s["test/router"] <= 1


def test_lineage_listing_cli(offline_runs, capsys):
    from pipeline.lineage import main

    runs, _ = offline_runs
    assert main([str(runs[0].path.parent)]) == 0
    out = capsys.readouterr().out
    assert "prune@mixed-exp-lineage --rung-mixed--> evaluate@mixed-exp-lineage" in out
