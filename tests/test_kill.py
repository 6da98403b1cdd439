"""kill -9 of a real stage mid-write, then `dvc status` and `dvc repro`; and every hint the runtime
gives is a command that runs as written. On the tiny preset, in a temporary copy of the repo."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.common.atomic import STALL_ENV
from tests.conftest import tiny_config, write_params
from tests.test_e2e import _sh, repo_copy  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e
DVC = [sys.executable, "-m", "dvc"]
QUERY = ["--context", "Question: Which gas do plants take in?\nAnswer:", "--choices", " carbon dioxide", " helium"]


def _status(repo: Path, env: dict) -> dict:
    return json.loads(subprocess.run([*DVC, "status", "--json"], cwd=repo, env=env, capture_output=True, text=True,
                                     check=True).stdout or "{}")


def _status_is_clean(repo: Path, env: dict) -> None:
    assert _status(repo, env) == {}


def _leftovers(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in (repo / "artifacts").rglob("*")
                  if re.fullmatch(r"\..+\.(tmp|old)", p.name))


def _kill_stage_mid_write(cmd: list[str], repo: Path, env: dict, tmp: Path, guard_too: bool = False,
                          while_stalled=None) -> subprocess.Popen:
    """Start `cmd`; once the stage's output is fully written to its temp and not yet renamed,
    SIGKILL the stage process (not DVC), and with `guard_too` its guard as well (a crash of
    everything). `while_stalled()` runs just before the kill. Returns the finished process."""
    import psutil

    marker = tmp / f"stalled-{time.time_ns()}"
    proc = subprocess.Popen(cmd, cwd=repo, env={**env, STALL_ENV: str(marker)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not marker.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "the stage never reached its write"
        time.sleep(0.1)
    assert _leftovers(repo), "the stage should be holding a complete temp output"
    if while_stalled:
        while_stalled()
    stage = psutil.Process(int(marker.read_text()))
    if guard_too:
        for guard in stage.children():
            guard.kill()
    stage.kill()
    proc.communicate(timeout=120)
    return proc


def _wait_for_no_leftovers(repo: Path, seconds: float = 15.0) -> list[str]:
    deadline = time.time() + seconds
    while _leftovers(repo) and time.time() < deadline:
        time.sleep(0.1)
    return _leftovers(repo)


def _hint(stderr: str) -> list[str]:
    """The first command quoted in an error message."""
    m = re.search(r"`((?:dvc|python) [^`]+)`", stderr)
    assert m, stderr
    return shlex.split(m.group(1))


def test_kill_9_mid_write_then_dvc_status_and_repro_behave(repo_copy, tmp_path):  # noqa: F811
    repo, env = repo_copy
    # The graph with the two structured rungs only (llmcompressor's rungs add minutes, nothing here).
    write_params(repo / "params.yaml", tiny_config(["~ladder.rungs.wanda50", "~ladder.rungs.nm24"]))
    _sh(["git", "commit", "-qam", "two rungs"], repo, env)
    _sh([*DVC, "repro"], repo, env)
    assert _status(repo, env) == {}
    lock_before = (repo / "dvc.lock").read_text()
    f80 = {p.name: p.read_bytes() for p in (repo / "artifacts/ladder/f80").iterdir()}

    # 1. The stage run by hand, killed while its temp sits inside artifacts/ladder, a directory that
    #    report and manifest depend on: DVC sees nothing changed, during or after; the guard removes
    #    the temp; the old output is untouched.
    _kill_stage_mid_write([sys.executable, "-m", "pipeline.prune", "--rung", "f80"], repo, env, tmp_path,
                          while_stalled=lambda: _status_is_clean(repo, env))
    assert _wait_for_no_leftovers(repo) == []
    assert _status(repo, env) == {}
    assert {p.name: p.read_bytes() for p in (repo / "artifacts/ladder/f80").iterdir()} == f80

    # 2. Under `dvc repro`: DVC removed the output before running the stage, so status names the
    #    stage and what depends on it (no temp); the next `dvc repro` brings it back, the same.
    proc = _kill_stage_mid_write([*DVC, "repro", "--single-item", "--force", "prune@f80"], repo, env, tmp_path)
    assert proc.returncode != 0
    assert _wait_for_no_leftovers(repo) == []
    status = _status(repo, env)
    assert "prune@f80" in status and ".tmp" not in json.dumps(status), status
    assert "prune@f80" in _sh([*DVC, "repro"], repo, env)
    assert _status(repo, env) == {} and _leftovers(repo) == []
    assert {p.name: p.read_bytes() for p in (repo / "artifacts/ladder/f80").iterdir()} == f80
    assert (repo / "dvc.lock").read_text() == lock_before

    # 3. Stage and guard both killed, on a rung setting never built (so DVC must run the stage
    #    again rather than restore it from its run cache): the temp stays behind, ignored by DVC,
    #    until the stage's next start sweeps it.
    params = repo / "params.yaml"
    original = params.read_text()
    assert "target_flops: 0.8\n" in original
    params.write_text(original.replace("target_flops: 0.8\n", "target_flops: 0.78\n"))
    _kill_stage_mid_write([*DVC, "repro", "prune@f80"], repo, env, tmp_path, guard_too=True)
    time.sleep(1)
    left = _leftovers(repo)
    assert len(left) == 1 and left[0].startswith("artifacts/ladder/.f80."), left
    status = _status(repo, env)
    assert "prune@f80" in status and ".tmp" not in json.dumps(status), status
    out = _sh([*DVC, "repro", "prune@f80"], repo, env)
    assert f"prune: removed {left[0]}, left by a killed earlier run" in out
    assert _leftovers(repo) == []
    params.write_text(original)
    _sh([*DVC, "repro"], repo, env)
    assert _status(repo, env) == {} and _leftovers(repo) == []

    # 3. Every command the runtime's and the stages' refusals suggest runs as written and fixes it.
    serve = [sys.executable, "-m", "pipeline.serve", "--strategy", "cascade", *QUERY]
    assert subprocess.run(serve, cwd=repo, env=env, capture_output=True).returncode == 0

    def refused_then_fixed(run: list[str], expect: str) -> None:
        res = subprocess.run(run, cwd=repo, env=env, capture_output=True, text=True)
        assert res.returncode != 0 and expect in res.stderr, res.stderr
        hint = _hint(res.stderr)
        _sh([*DVC, *hint[1:]] if hint[0] == "dvc" else hint, repo, env)
        fixed = subprocess.run(run, cwd=repo, env=env, capture_output=True, text=True)
        assert fixed.returncode == 0, (hint, fixed.stderr)

    cfg = repo / "artifacts/ladder/mixed/config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"edited": true, ', 1))
    refused_then_fixed(serve, "restore it with `dvc checkout --force artifacts/ladder/mixed`")
    (repo / "artifacts/ladder/f80/added_tokens.json").write_text("{}")
    refused_then_fixed(serve, "were not written by the build")
    th = repo / "artifacts/cascade/thresholds.json"
    th.write_text(th.read_text() + " ")
    refused_then_fixed(serve, "restore it with `dvc checkout --force artifacts/cascade/thresholds.json`")
    th = repo / "artifacts/escalate/thresholds.json"
    th.write_text(th.read_text() + " ")
    refused_then_fixed([*serve[:4], "escalate", *serve[5:]],
                       "restore it with `dvc checkout --force artifacts/escalate/thresholds.json`")
    man = repo / "artifacts/manifest.yaml"
    man.write_text(man.read_text().replace("signal: msp_norm", "signal: margin"))
    refused_then_fixed(serve, "rebuild it with `dvc repro manifest`")
    records = repo / "artifacts/eval/dense/records.jsonl"
    records.write_text("")
    refused_then_fixed([sys.executable, "-m", "pipeline.cascade", "--out", str(tmp_path / "cascade")],
                       "`dvc repro evaluate@dense`")
    # The other stage targets messages name (an empty task set, a report without digests): real stages.
    _sh([*DVC, "repro", "--dry", "data", "dense", "prune@f80", "manifest"], repo, env)
    assert _leftovers(repo) == []
