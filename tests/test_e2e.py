"""The DVC graph end to end on the tiny preset, in a temporary copy of the repo.

Runs the real commands a user runs: `dvc repro`, then `dvc exp run -S ...`,
which recomposes params.yaml from conf/ through DVC's Hydra integration.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_config, write_params

pytestmark = pytest.mark.e2e


def _sh(cmd: list[str], cwd: Path, env: dict) -> str:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


@pytest.fixture
def repo_copy(tmp_path) -> tuple[Path, dict]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    dst = tmp_path / "repo"
    for f in files:
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    env = {
        **os.environ,
        # Stages call `python -m ...`: make that this interpreter, with its packages.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("DVC_EXP_NAME", None)
    write_params(dst / "params.yaml", tiny_config())
    _sh(["git", "init", "-q"], dst, env)
    _sh(["git", "add", "-A"], dst, env)
    _sh(["git", "commit", "-qm", "tiny"], dst, env)
    return dst, env


def test_dvc_repro_then_exp_run_on_tiny_preset(repo_copy):
    repo, env = repo_copy
    dvc = [sys.executable, "-m", "dvc"]

    out = _sh([*dvc, "repro"], repo, env)
    assert "base: read random model" in out and "data: read" in out  # the one line per stage
    prov = json.loads((repo / "artifacts/base/provenance.json").read_text())
    assert prov["source"]["kind"] == "random"
    summary = json.loads((repo / "artifacts/data/summary.json").read_text())
    caps = {t: c["cap"] for t, c in tiny_config()["data"]["tasks"].items()}
    assert summary["items"] == sum(caps.values())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    rungs = list(tiny_config()["ladder"]["rungs"])
    assert set(lock["stages"]) >= {"base", "data", "calibrate", "dense", *[f"prune@{r}" for r in rungs]}
    for r in ["dense", *rungs]:
        report = json.loads((repo / f"artifacts/ladder/{r}/pruning_report.json").read_text())
        assert report["rung"] == r
        assert (repo / f"artifacts/eval/{r}/metrics.json").exists()
    assert (repo / "artifacts/report/ladder.csv").read_text().count("\n") == 1 + 1 + len(rungs)
    metrics = _sh([*dvc, "metrics", "show", "--json"], repo, env)
    assert "acc_norm" in metrics and "perplexity" in metrics and "aiq" in metrics
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
    again = _sh([*dvc, "repro"], repo, env)
    assert "didn't change, skipping" in again and "base: read" not in again

    # An experiment: Hydra recomposes params.yaml from conf/ plus the overrides;
    # only the stages whose params changed rerun.
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "lock"], repo, env)
    exp = _sh([*dvc, "exp", "run", "-S", "+experiment=tiny", "-S", "data.tasks.piqa.cap=4"], repo, env)
    assert "data: read" in exp and "base: read" not in exp
    # Calibration blocks did not change (only task items did): nothing downstream of them reruns.
    assert "calibrate: read" not in exp and "prune: read" not in exp
    assert "evaluate: read" in exp  # task items changed: every rung is re-scored
    assert "router: read" in exp and "cascade: read" in exp and "manifest: read" in exp
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["data"]["tasks"]["piqa"]["cap"] == 4 and params["model"]["name"] == "tiny-llama"
    summary = json.loads((repo / "artifacts/data/summary.json").read_text())
    assert summary["tasks"]["piqa"]["total"] == 4 and summary["items"] == sum(caps.values()) - caps["piqa"] + 4
