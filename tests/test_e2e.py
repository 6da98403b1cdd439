"""The DVC graph end to end on the tiny preset, in a temporary copy of the repo.

Runs the real commands a user runs: `dvc repro`, `dvc exp run -S ...` (which recomposes params.yaml
from conf/ through DVC's Hydra integration), `dvc exp show`, `dvc metrics diff`, `dvc plots diff`,
`gto register` + `dvc artifacts get`, and the recovery after a bad parent. The tests share one
build and run in file order: each leaves the workspace as the next expects.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_params
from tests.repo_copy import DVC
from tests.repo_copy import copy_repo as _copy_repo
from tests.repo_copy import sh as _sh

pytestmark = pytest.mark.e2e


@pytest.fixture
def repo_copy(tmp_path) -> tuple[Path, dict]:
    """An unbuilt copy of the repo with the tiny params, committed."""
    dst = tmp_path / "repo"
    return dst, _copy_repo(dst)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the repo with the tiny params, built by `dvc repro` and committed."""
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    env = _copy_repo(dst)
    out = _sh([*DVC, "repro"], dst, env)
    assert "base: read random model" in out and "data: read" in out  # the one line per stage
    _sh(["git", "add", "-A"], dst, env)
    _sh(["git", "commit", "-qm", "lock"], dst, env)
    return dst, env


def test_dvc_repro_builds_every_stage(built):
    repo, env = built
    prov = json.loads((repo / "artifacts/base/provenance.json").read_text())
    assert prov["source"]["kind"] == "random"
    summary = json.loads((repo / "artifacts/data/summary.json").read_text())
    caps = {t: c["cap"] for t, c in tiny_config()["data"]["tasks"].items()}
    assert summary["items"] == sum(caps.values())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    rungs = list(tiny_config()["ladder"]["rungs"])
    assert set(lock["stages"]) >= {"base", "data", "calibrate", "dense", *[f"prune@{r}" for r in rungs], "summary"}
    for r in ["dense", *rungs]:
        report = json.loads((repo / f"artifacts/ladder/{r}/pruning_report.json").read_text())
        assert report["rung"] == r
        assert (repo / f"artifacts/eval/{r}/metrics.json").exists() and (repo / f"artifacts/eval/{r}/model_card.md").exists()
    assert (repo / "artifacts/report/ladder.csv").read_text().count("\n") == 1 + 1 + len(rungs)
    # DVC's metrics are the compact summary; each rung's detail is still one command away.
    metrics = json.loads(_sh([*DVC, "metrics", "show", "--json"], repo, env))
    files = metrics[""]["data"]
    assert list(files) == ["artifacts/summary.json"]
    s = files["artifacts/summary.json"]["data"]
    assert set(s["acc_norm"]) == {"dense", *rungs} and set(s["test"]) == {"dense", "router", "router_cost", "cascade",
                                                                          "cascade_cost"}
    detail = _sh([*DVC, "metrics", "show", "artifacts/eval/f80/metrics.json", "--json"], repo, env)
    assert "throughput_tokens_per_s" in detail
    # The deployable end of the graph: router, cascade, manifest, and the runtime reading it.
    assert {"speed", "router", "cascade", "escalate", "compare", "manifest"} <= set(lock["stages"])
    man = yaml.safe_load((repo / "artifacts/manifest.yaml").read_text())
    assert [r["name"] for r in man["rungs"]] == ["dense", *rungs] and man["schema_version"] == 2
    served = _sh([sys.executable, "-m", "pipeline.serve", "--strategy", "cascade", "--items",
                  "artifacts/data/tasks.jsonl", "--split", "test", "--limit", "2"], repo, env)
    assert served.count('"rung"') == 2 and "mean cost" in served
    served = _sh([sys.executable, "-m", "pipeline.serve", "--strategy", "escalate", "--items",
                  "artifacts/data/tasks.jsonl", "--split", "test", "--limit", "2"], repo, env)
    assert served.count('"rung"') == 2
    table = json.loads((repo / "artifacts/compare/table.json").read_text())
    assert table["rows"]["router"]["accuracy"]["lo"] <= table["rows"]["router"]["accuracy"]["hi"]

    # Nothing changed: nothing reruns.
    again = _sh([*DVC, "repro"], repo, env)
    assert "didn't change, skipping" in again and "base: read" not in again


def test_bad_parent_is_refused_before_dvc_touches_the_workspace(built):
    repo, env = built
    weights = (repo / "artifacts/ladder/f80/model.safetensors").read_bytes()
    out = _sh([*DVC, "exp", "run", "-S", "+experiment=tiny", "-S", "ladder.rungs.f80.parent=nope"], repo, env, ok=False)
    assert "ladder.rungs.f80.parent: 'nope' is not a rung" in out
    assert (repo / "artifacts/ladder/f80/model.safetensors").read_bytes() == weights
    assert _sh(["git", "status", "--porcelain", "--untracked-files=no"], repo, env) == ""  # params.yaml as it was


def test_recovery_after_a_hand_edited_bad_parent(built):
    # `dvc repro` reads params.yaml as it is, with no composition to refuse it: DVC removes the
    # rung's output before the missing parent stops it. `dvc checkout` brings the output back.
    repo, env = built
    params = (repo / "params.yaml").read_text()
    raw = yaml.safe_load(params)
    raw["ladder"]["rungs"]["f80"]["parent"] = "nope"
    write_params(repo / "params.yaml", raw)
    _sh([*DVC, "repro", "prune@f80"], repo, env, ok=False)
    assert not (repo / "artifacts/ladder/f80").exists()  # what DVC does; the notes say how to recover
    _sh(["git", "checkout", "params.yaml"], repo, env)
    _sh([*DVC, "checkout", "prune@f80"], repo, env)
    assert (repo / "params.yaml").read_text() == params
    assert (repo / "artifacts/ladder/f80/model.safetensors").exists()
    assert "up to date" in _sh([*DVC, "status"], repo, env)


def test_dvc_artifacts_get_fetches_a_rung_and_the_manifest(built, tmp_path):
    repo, env = built
    _sh([*DVC, "remote", "add", "-d", "store", str(tmp_path / "remote")], repo, env)
    _sh(["git", "commit", "-qam", "remote"], repo, env)
    _sh([*DVC, "push", "dense", "manifest"], repo, env)
    for name in ("dense", "manifest"):
        _sh([str(Path(sys.executable).parent / "gto"), "register", name], repo, env)
        _sh([*DVC, "artifacts", "get", str(repo), name, "-o", str(tmp_path / name)], repo, env)
    report = json.loads((tmp_path / "dense" / "pruning_report.json").read_text())
    got = hashlib.sha256((tmp_path / "dense" / "model.safetensors").read_bytes()).hexdigest()
    assert got == report["files_sha256"]["model.safetensors"]
    assert (tmp_path / "manifest").read_text() == (repo / "artifacts/manifest.yaml").read_text()


def _metric_columns(exp_show: list) -> set[str]:
    cols = set()

    def leaves(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                leaves(v, f"{prefix}{k}.")
            else:
                cols.add(prefix + k)

    def walk(entry):
        for path, m in (entry.get("data") or {}).get("metrics", {}).items():
            leaves(m.get("data", {}), f"{path}:")
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs", []):
                walk(rev)

    for entry in exp_show:
        walk(entry)
    return cols


def test_experiments_compare_in_exp_show_metrics_diff_and_plots_diff(built):
    repo, env = built
    exp = _sh([*DVC, "exp", "run", "-n", "piqa4", "-S", "+experiment=tiny", "-S", "data.tasks.piqa.cap=4"], repo, env)
    assert "data: read" in exp and "base: read" not in exp
    # Calibration blocks did not change (only task items did): nothing downstream of them reruns.
    assert "calibrate: read" not in exp and "prune: read" not in exp
    assert "evaluate: read" in exp  # task items changed: every rung is re-scored
    assert "router: read" in exp and "cascade: read" in exp and "manifest: read" in exp
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["tasks"]["piqa"]["cap"] == 4 and params["model"]["name"] == "tiny-llama"
    summary = json.loads((repo / "artifacts/data/summary.json").read_text())
    caps = {t: c["cap"] for t, c in tiny_config()["data"]["tasks"].items()}
    assert summary["tasks"]["piqa"]["total"] == 4 and summary["items"] == sum(caps.values()) - caps["piqa"] + 4

    # A ladder option, from a fresh shell: no venv on PATH, nothing activated; the stages find the
    # checkout's .venv through bin/python. The tiny model cannot reach depth_only's default budgets
    # (its lm_head is ~92% of FLOPs), so one rung at 0.97x.
    os.symlink(Path(sys.prefix), repo / ".venv")
    fresh = {k: v for k, v in env.items() if k not in ("PATH", "VIRTUAL_ENV", "PYTHONPATH")}
    fresh["PATH"] = "/usr/bin:/bin"
    exp = _sh([str(repo / ".venv/bin/dvc"), "exp", "run", "-n", "depth-only", "-S", "+experiment=tiny",
               "-S", "ladder=depth_only", "-S", "~ladder.rungs.f75", "-S", "~ladder.rungs.f60",
               "-S", "~ladder.rungs.f40", "-S", "ladder.rungs.f90.target_flops=0.97",
               "-S", "ladder.heal.val_blocks=2"], repo, fresh)
    assert "prune: read" in exp and "evaluate: read" in exp
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["ladder"]["name"] == "depth-only" and params["ladder"]["allocator"]["granularities"] == ["layers"]
    assert params["ladder"]["heal"]["enabled"] is False  # the key the option once lacked
    f90 = json.loads((repo / "artifacts/ladder/f90/pruning_report.json").read_text())
    dense = json.loads((repo / "artifacts/ladder/dense/pruning_report.json").read_text())
    assert f90["counts"]["layers"] < dense["counts"]["layers"]
    assert {k: f90["counts"][k] for k in ("hidden", "kv_heads", "q_heads", "mlp")} == \
        {k: dense["counts"][k] for k in ("hidden", "kv_heads", "q_heads", "mlp")}  # depth only

    shown = json.loads(_sh([*DVC, "exp", "show", "--json"], repo, env))
    cols = _metric_columns(shown)
    assert cols and all(c.startswith("artifacts/summary.json:") for c in cols), cols
    assert len(cols) <= 20, sorted(cols)
    table = _sh([*DVC, "exp", "show", "--csv"], repo, env).splitlines()
    assert {"piqa4", "depth-only"} <= {row.split(",")[0] for row in table[1:]}, table

    diff = json.loads(_sh([*DVC, "metrics", "diff", "piqa4", "depth-only", "--json"], repo, env))
    changed = diff["artifacts/summary.json"]
    assert changed["acc_norm.f90"]["old"] is None and changed["acc_norm.f90"]["new"] is not None  # depth-only's rung
    assert changed["acc_norm.mixed"]["new"] is None  # the tiny ladder's, gone in depth-only
    # The per-rung detail diffs too, by naming the file.
    detail = json.loads(_sh([*DVC, "metrics", "diff", "piqa4", "depth-only", "--all", "--json", "--targets",
                             "artifacts/eval/dense/metrics.json"], repo, env))
    assert detail["artifacts/eval/dense/metrics.json"]["tasks.piqa.n"] == {"old": 4, "new": caps["piqa"], "diff": caps["piqa"] - 4}

    plots = json.loads(_sh([*DVC, "plots", "diff", "piqa4", "depth-only", "--json"], repo, env))
    assert not plots.get("errors"), plots.get("errors")
    for name in ("accuracy vs FLOPs", "perplexity vs FLOPs"):
        revisions = {r for entry in plots["data"][name] for r in entry["revisions"]}
        assert revisions == {"piqa4", "depth-only"}, (name, revisions)
