"""Beyond one process, on DVC's own engine (docs/scale.md): linked cache, fan-out, queued sweeps.

On the tiny preset, in a temporary copy of the repo, with the commands docs/scale.md gives:
- outputs are links into DVC's cache (`cache.type` in .dvc/config), not second copies;
- independent stages (sibling `prune@*`, `evaluate@*`) run concurrently in two other workspaces,
  each under its own CUDA_VISIBLE_DEVICES: a git worktree sharing the main cache
  (`dvc repro --single-item`), and a clone with its own cache that shares only a DVC remote
  (`dvc repro --pull`, then `dvc push --run-cache`); the main workspace's `dvc repro --pull` then
  restores their stages from DVC's run-cache instead of running them;
- two experiments queued with `dvc exp run --queue`, run by `dvc queue start -j 2`, land in
  `dvc exp show` with their params and metrics, and their workers restore every unchanged stage
  from the run-cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.repo_copy import DVC, copy_repo, sh

pytestmark = pytest.mark.e2e

# Stages the fan-out test hands to the two workers: sibling rungs of `dense` and two evaluations.
WORKERS = {"w0": ["prune@wanda50", "evaluate@f80"], "w1": ["prune@nm24", "evaluate@mixed"]}
CACHED = "is cached - skipping run, checking out outputs"  # DVC's line for a run-cache restore
QUEUE_TIMEOUT_S = 900


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the repo with the tiny params and a shared DVC remote, built up to rung f80 (base,
    data, calibrate, teacher, dense, mixed, f80), pushed and committed; the other rungs and every
    evaluation are still to run."""
    repo = tmp_path_factory.mktemp("queue") / "repo"
    env = copy_repo(repo)
    sh([*DVC, "remote", "add", "-d", "shared", str(repo.parent / "remote")], repo, env)
    sh([*DVC, "repro", "prune@f80"], repo, env)
    # Built with the default (copies on this filesystem); docs/scale.md's switch to hardlinks.
    sh([*DVC, "config", "--local", "cache.type", "hardlink"], repo, env)
    sh([*DVC, "checkout", "--relink", "--allow-missing"], repo, env)  # later stages not built yet
    sh([*DVC, "push"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "ladder to f80"], repo, env)
    return repo, env


@pytest.fixture(scope="module")
def fanned_out(ladder) -> dict:
    """docs/scale.md's fan-out, both ways at once: w0 is a git worktree on this host sharing the main
    cache; w1 stands for another machine, a clone with its own cache that meets the main workspace
    only through the shared remote. Both run their stages at the same time; then `dvc repro --pull`
    in the main workspace builds the rest. Returns each command's output."""
    repo, env = ladder
    (w0, w0_stages), (w1, w1_stages) = [(repo.parent / name, stages) for name, stages in WORKERS.items()]
    sh(["git", "worktree", "add", "-q", "--detach", str(w0), "HEAD"], repo, env)
    sh([*DVC, "cache", "dir", "--local", str(repo / ".dvc" / "cache")], w0, env)
    sh([*DVC, "config", "--local", "cache.type", "hardlink"], w0, env)
    sh([*DVC, "checkout", "--allow-missing"], w0, env)
    sh(["git", "clone", "-q", str(repo), str(w1)], repo, env)
    cmds = {
        "w0": (w0, [*DVC, "repro", "--single-item", *w0_stages], "0"),
        # Upstream outputs come from the remote (`--pull`); only the missing stages run.
        "w1": (w1, [*DVC, "repro", "--pull", *w1_stages], "1"),
    }
    procs = {name: subprocess.Popen(cmd, cwd=cwd, env={**env, "CUDA_VISIBLE_DEVICES": gpu},
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, (cwd, cmd, gpu) in cmds.items()}
    outs = {}
    for name, p in procs.items():
        outs[name] = p.communicate()[0]
        assert p.returncode == 0, f"worker {name} failed:\n{outs[name]}"
    outs["w1_push"] = sh([*DVC, "push", "--run-cache", *w1_stages], w1, env)
    start = time.monotonic()
    outs["main"] = sh([*DVC, "repro", "--pull"], repo, env)
    outs["main_s"] = time.monotonic() - start
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "built"], repo, env)
    return outs


def test_outputs_are_links_into_the_cache_not_copies(ladder, fanned_out):
    repo, env = ladder
    assert sh([*DVC, "config", "--project", "cache.type"], repo, env).strip() == "reflink,copy"  # the safe default
    assert sh([*DVC, "config", "cache.type"], repo, env).strip() == "hardlink"  # this checkout's choice
    # Relinked after the switch; restored from a worker's run; run here after the switch.
    for rel in ("artifacts/ladder/f80/model.safetensors", "artifacts/ladder/wanda50/model.safetensors",
                "artifacts/eval/dense/records.jsonl"):
        out = repo / rel
        md5 = _md5(out)
        obj = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
        assert obj.exists(), f"{rel}: no cache object {obj}"
        # One inode: the file is stored once.
        assert os.stat(out).st_ino == os.stat(obj).st_ino, f"{rel} is a copy of its cache object"
        assert not os.access(out, os.W_OK) or os.geteuid() == 0  # DVC protects linked outputs (root ignores it)
        assert not os.stat(out).st_mode & 0o222
    assert "up to date" in sh([*DVC, "status"], repo, env)


def test_fan_out_stages_to_worktrees_then_main_restores_them_from_the_run_cache(fanned_out):
    for name, stages in WORKERS.items():
        out = fanned_out[name]
        assert "prune: read" in out and "evaluate: read" in out, out  # each worker ran its stages
        for stage in stages:
            assert f"Running stage '{stage}'" in out, out
    # The clone pulled what its stages read instead of building it.
    assert "Running stage 'prune@f80'" not in fanned_out["w1"] and "Running stage 'base'" not in fanned_out["w1"]
    main = fanned_out["main"]
    for stage in [s for stages in WORKERS.values() for s in stages]:
        assert f"Stage '{stage}' {CACHED}" in main, main
        assert f"Running stage '{stage}'" not in main, main
    # The rest ran here: evaluate@dense, @wanda50, @nm24, and the routing stages.
    assert main.count("evaluate: read") == 3, main
    assert "Running stage 'router'" in main


def _experiments(shown: list) -> dict[str, dict]:
    """name -> the `data` block (params, metrics) of every experiment in `dvc exp show --json`."""
    found = {}
    for entry in shown:
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs", []):
                if rev.get("name"):
                    found[rev["name"]] = rev.get("data") or {}
    return found


def test_queued_experiments_both_land_in_exp_show(ladder, fanned_out):
    repo, env = ladder
    eps = {"eps10": 0.1, "eps30": 0.3}  # cascade.epsilon: only cascade, escalate and what reads them rerun
    for name, value in eps.items():
        sh([*DVC, "exp", "run", "--queue", "-n", name, "-S", "+experiment=tiny", "-S", f"cascade.epsilon={value}"],
           repo, env)
    assert sh([*DVC, "queue", "status"], repo, env).count("Queued") == 2
    start = time.monotonic()
    sh([*DVC, "queue", "start", "-j", "2"], repo, env)
    while True:
        status = sh([*DVC, "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() - start < QUEUE_TIMEOUT_S, f"queue still busy after {QUEUE_TIMEOUT_S} s:\n{status}"
        time.sleep(5)
    wall = time.monotonic() - start
    print(f"queue of {len(eps)} experiments, -j 2: {wall:.0f} s")
    assert status.count("Success") == 2, status

    shown = _experiments(json.loads(sh([*DVC, "exp", "show", "--json"], repo, env)))
    for name, value in eps.items():
        assert name in shown, sorted(shown)
        params = shown[name]["params"]["params.yaml"]["data"]
        assert params["cascade"]["epsilon"] == value and params["model"]["name"] == "tiny-llama"
        metrics = shown[name]["metrics"]["artifacts/summary.json"]["data"]
        assert set(metrics["acc_norm"]) == {"dense", "mixed", "f80", "wanda50", "nm24"}
        assert "cascade" in metrics["test"]
        logs = sh([*DVC, "queue", "logs", name], repo, env)
        # The worker's temp clone took the ladder and its evaluations from the shared cache
        # (checked out from the baseline commit, or restored from the run-cache), running none.
        # (speed and router do rerun: their `cache: false` outputs are in neither git nor the cache.)
        for stage in ("base", "calibrate", "prune@f80", "prune@nm24", "evaluate@dense", "evaluate@mixed"):
            assert f"Stage '{stage}' didn't change, skipping" in logs or f"Stage '{stage}' {CACHED}" in logs, logs
            assert f"Running stage '{stage}'" not in logs, logs
        assert "evaluate: read" not in logs and "prune: read" not in logs
        assert "Running stage 'cascade'" in logs
    sh([*DVC, "exp", "apply", "eps10"], repo, env)
    assert "epsilon: 0.1\n" in (repo / "params.yaml").read_text()
